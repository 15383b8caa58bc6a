"""Where finetune keeps its images and phase 1's features between epochs, and phase 1's feature cache.

Memory and dataset size (``image_cache``): with ``memory`` the decoded uint8 images of the
train and val splits are cached in RAM after the first epoch and phase 1's features are one
float32 matrix, so memory grows linearly with the number of images. ``disk`` caches the
decoded images in tf.data cache files and spills the features to a file; ``none`` decodes
the images again every epoch (features still go to a file). Both keep memory flat in the
number of images. ``auto`` (the default) picks ``memory`` while what it would hold fits
``MEMORY_CACHE_BUDGET_BYTES``, else ``disk``. Disk files live in a private directory per
run under the edgexfer cache directory (``EDGEXFER_CACHE``) and are deleted when the run
ends, failed or not: tf.data names its cache files by a digest of paths, labels and decode
settings, not of the image bytes, so a cache reused across runs could serve stale pixels
after files were replaced in place, and two concurrent runs on one folder would contend
for one cache's lock file. A run killed with SIGKILL leaves its ``finetune-runs/PID-*``
directory behind; it is safe to delete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, get_args

import numpy as np

from edgexfer.config import FinetuneConfig, ImageCache
from edgexfer.errors import ConfigError
from edgexfer.train import distributed

# ``image_cache=auto`` keeps the decoded train+val images (uint8, H×W×3 each) plus phase 1's
# float32 feature matrix in memory while together they fit this many bytes, else on disk.
# 1 GiB keeps every bundled dataset and the Fashion-MNIST 20k benchmark at 96 px (20k
# train+val images: 0.55 GB of images + 0.1 GB of features) in memory, what they always did,
# so their numbers do not move, and stays well inside a small machine's RAM; the full 60k
# Fashion-MNIST training set at 96 px (2 GB) or a few thousand images at 224 px go to disk.
MEMORY_CACHE_BUDGET_BYTES = 1 << 30

# Phase 1 on spilled features shuffles in a buffer of at most this many bytes of feature
# rows. The file holds a seeded permutation of the samples, so a bounded buffer still mixes
# the classes (the same reasoning as the image pipeline's bounded shuffle buffer).
_FEATURE_SHUFFLE_BUFFER_BYTES = 64 << 20
_FEATURE_DTYPE = np.float32


def plan_data_cache(
    mode: str,
    *,
    images: int,
    input_size: int,
    feature_dim: int,
    cache_images: bool,
    cache_features: bool,
    budget: int | None = None,
) -> dict[str, Any]:
    """Where finetune keeps decoded images and phase 1 features between epochs.

    ``images``: train+val image count; ``cache_images``: whether an image pipeline runs for
    more than one pass (phase 2, or phase 1 without the feature cache); ``cache_features``:
    the feature cache is on. Returns the plan recorded in ``metrics.json["data_cache"]``:
    ``images`` is memory | disk | none | unused, ``features`` memory | disk | off.
    """
    allowed = get_args(ImageCache)
    if mode not in allowed:
        raise ConfigError(f"image_cache={mode!r} is invalid; allowed: {', '.join(allowed)}")
    budget = MEMORY_CACHE_BUDGET_BYTES if budget is None else budget
    image_bytes = images * input_size * input_size * 3 if cache_images else 0
    feature_bytes = images * feature_dim * np.dtype(_FEATURE_DTYPE).itemsize if cache_features else 0
    where = mode if mode != "auto" else ("memory" if image_bytes + feature_bytes <= budget else "disk")
    return {
        "mode": mode,
        "images": where if cache_images else "unused",
        "features": ("memory" if where == "memory" else "disk") if cache_features else "off",
        "memory_bytes_if_cached": image_bytes + feature_bytes,
        "budget_bytes": budget,
    }


def describe_plan(plan: dict[str, Any]) -> str:
    held = f"{plan['memory_bytes_if_cached'] / 2**30:.2f} GiB"
    why = ""
    if plan["mode"] == "auto":
        op = "<=" if plan["memory_bytes_if_cached"] <= plan["budget_bytes"] else ">"
        why = f" (auto: {held} {op} budget {plan['budget_bytes'] / 2**30:.2f} GiB)"
    return f"image cache {plan['images']}, features {plan['features']}{why}"


class RunFiles:
    """A private directory for one run's disk caches, made on first use, removed by ``close``
    (``contextlib.closing`` calls it however the run ends)."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def get(self) -> Path:
        if self.path is None:
            from edgexfer.tf_env import cache_dir

            root = Path(cache_dir()) / "finetune-runs"
            from edgexfer.tempfiles import run_dir_prefix, sweep_stale

            root.mkdir(parents=True, exist_ok=True)
            sweep_stale(root, run_dirs=True)  # left by runs that were killed (SIGKILL, OOM)
            self.path = Path(tempfile.mkdtemp(prefix=run_dir_prefix(), dir=root))
        return self.path

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def extract_features(
    backbone, splits: dict[str, list], preprocessing, config: FinetuneConfig, spill_dir: Path | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The frozen backbone run once over each split: ``features[split]`` is an in-memory matrix,
    or, with ``spill_dir``, the path of a file of rows (see :func:`spill_features`); ``labels[split]``
    is in the same order."""
    from edgexfer.data import make_dataset

    features, labels = {}, {}
    for split, samples in splits.items():
        if spill_dir is None:
            images = make_dataset(
                samples, preprocessing, batch_size=config.batch_size, cache=False, return_labels=False
            )
            features[split] = (
                distributed.predict_local(backbone, images)
                if config.strategy == "multi-worker"
                else backbone.predict(images, verbose=0)
            )
            labels[split] = np.array([s.label for s in samples])
        else:
            features[split], labels[split] = spill_features(
                backbone,
                samples,
                preprocessing,
                config,
                Path(spill_dir) / f"features-{split}.f32",
                shuffle_seed=config.seed if split == "train" else None,
            )
    return features, labels


def feature_datasets(
    features: dict[str, Any], targets: dict[str, np.ndarray], feature_dim: int, batch_size: int, seed: int
):
    """tf.data ``(features, targets)`` batches for phase 1's train (shuffled) and val splits,
    from what :func:`extract_features` returned."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    if not isinstance(features["train"], str):
        train_ds = (
            tf.data.Dataset.from_tensor_slices((features["train"], targets["train"]))
            .shuffle(len(targets["train"]), seed=seed)
            .batch(batch_size)
            .prefetch(2)
        )
        val_ds = tf.data.Dataset.from_tensor_slices((features["val"], targets["val"])).batch(batch_size)
        return train_ds, val_ds
    row_bytes = feature_dim * np.dtype(_FEATURE_DTYPE).itemsize
    buffer = min(len(targets["train"]), max(1024, _FEATURE_SHUFFLE_BUFFER_BYTES // row_bytes))
    train_ds = _feature_file_dataset(
        features["train"], targets["train"], feature_dim, batch_size, shuffle_buffer=buffer, seed=seed
    )
    return train_ds, _feature_file_dataset(features["val"], targets["val"], feature_dim, batch_size)


def spill_features(
    backbone, samples, preprocessing, config: FinetuneConfig, path: Path, shuffle_seed: int | None
) -> tuple[str, np.ndarray]:
    """Write the backbone's features of ``samples`` to ``path`` (raw float32 rows), batch by batch.

    Returns the path and the labels in file order. This is what keeps phase 1 flat in memory.
    The in-memory path holds the N×D float32 matrix and, while training, the copies that
    ``from_tensor_slices`` and a full shuffle buffer make: measured with D = 1280
    (EfficientNet-Lite0, MobileNetV2), 0.31 GB above the baseline at 20k images and 0.94 GB at
    60k, about 3× the matrix. float16 would only halve that slope. From the file, an epoch
    streams the rows through a bounded shuffle buffer (``_FEATURE_SHUFFLE_BUFFER_BYTES``);
    what stays in memory is N int32 labels (0.24 MB at 60k): measured 0.08 GB above the
    baseline at both 20k and 60k, and an epoch of 60k rows read in 0.6 s. Rows are read with
    ``read()`` calls (tf.data's FixedLengthRecordDataset), not ``mmap``, whose touched pages
    would count in the process's RSS. tf.data's own ``cache`` is not used here because the
    values come from the model: caching them would mean running the backbone inside the
    input pipeline, which tf.data places on the CPU. Train rows are written in a seeded
    permutation, so the bounded shuffle buffer still mixes the classes.
    """
    from edgexfer.data import make_dataset
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(samples))
        samples = [samples[i] for i in order]
    labels = np.array([s.label for s in samples], dtype=np.int32)
    size = int(preprocessing.input_size)
    extract = tf.function(
        lambda x: backbone(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)]
    )
    images = make_dataset(samples, preprocessing, batch_size=config.batch_size, cache=False, return_labels=False)
    with open(path, "wb") as file:
        for batch in images:
            rows = extract(batch).numpy().reshape(len(batch), -1)
            file.write(np.ascontiguousarray(rows, dtype=_FEATURE_DTYPE).tobytes())
    return str(path), labels


def _feature_file_dataset(
    path: str,
    targets: np.ndarray,
    feature_dim: int,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    seed: int = 0,
):
    """Batches of ``(features, targets)`` streamed from a file :func:`spill_features` wrote."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    row_bytes = feature_dim * np.dtype(_FEATURE_DTYPE).itemsize
    rows = tf.data.FixedLengthRecordDataset(path, row_bytes, buffer_size=1 << 20)
    ds = tf.data.Dataset.zip((rows, tf.data.Dataset.from_tensor_slices(targets)))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dtype = tf.as_dtype(_FEATURE_DTYPE)
    return (
        ds.batch(batch_size)
        .map(lambda raw, y: (tf.cast(tf.io.decode_raw(raw, dtype), tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )
