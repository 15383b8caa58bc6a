"""Samples → ``tf.data`` batches of preprocessed images (and labels).

Order of the pipeline: decode with PIL (:func:`edgexfer.data.preprocess.load_image`, which
handles webp, palettes, 16-bit and alpha the same way the on-device runtime does) → cache
the decoded uint8 images → shuffle → augment → batch → normalise ``(x - mean) / std`` →
prefetch. TensorFlow is imported when a dataset is made, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgexfer.config import AugmentOptions
from edgexfer.data.folder import Sample
from edgexfer.data.preprocess import check_color, check_resize, load_image, normalisation_constants
from edgexfer.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Bound on the shuffle buffer of decoded images: a full buffer would hold a second copy of
# an in-memory cache. The cached order is already a seeded permutation, so a bounded buffer
# still mixes classes well.
_SHUFFLE_BUFFER_BYTES = 256 << 20
_LARGE_CACHE_BYTES = 4 << 30
_TF_RESIZE = {"bilinear": "bilinear", "nearest": "nearest", "bicubic": "bicubic", "area": "area", "lanczos": "lanczos3"}


def load_arrays(
    samples: Sequence[Sample], preprocessing, *, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``samples`` into ``(uint8 N×H×W×3 images, int32 labels)`` with a thread pool.

    For small sets (tests, calibration data); large sets belong in :func:`make_dataset`.
    """
    size = int(preprocessing.input_size)
    check_resize(preprocessing.resize)
    check_color(preprocessing.color)
    labels = np.array([s.label for s in samples], dtype=np.int32)
    if not len(samples):
        return np.zeros((0, size, size, 3), np.uint8), labels
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(lambda s: load_image(s.path, size, preprocessing.resize, preprocessing.color), samples))
    return np.stack(images), labels


def make_dataset(
    samples: Sequence[Sample],
    preprocessing,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: AugmentOptions | None = None,
    cache: bool | str | os.PathLike[str] = True,
    drop_remainder: bool = False,
    return_labels: bool = True,
):
    """A ``tf.data.Dataset`` of ``(float32 N×H×W×3 preprocessed images, int32 labels)``.

    ``cache=True`` keeps the decoded uint8 images in memory after the first pass; a path
    caches them in files named after that path plus a digest of the samples and the decode
    settings (so changed data never reads a stale cache); ``False`` streams from disk with
    flat memory. Shuffling and augmentation are seeded: the same ``seed`` gives the same
    batches, epoch after epoch, in every run; each epoch differs from the last.
    """
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    samples = list(samples)
    if not samples:
        raise DataError("no images to build a dataset from; check the image folder and the split")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if augment is not None and not isinstance(augment, AugmentOptions):
        raise ConfigError(f"augment must be an AugmentOptions or None, got {type(augment).__name__}")
    size = int(preprocessing.input_size)
    resize, color = preprocessing.resize, preprocessing.color
    check_resize(resize)
    check_color(color)
    mean, std = normalisation_constants(preprocessing)
    if mean.size != 3:
        raise ConfigError(f"preprocessing has {mean.size} channel(s) of mean/std; image datasets are RGB (3)")

    paths = [os.fspath(s.path) for s in samples]
    labels = np.array([s.label for s in samples], dtype=np.int32)
    if shuffle and cache:
        # The cache replays its first pass in order: cache a seeded permutation, not class-sorted files.
        order = np.random.default_rng(seed).permutation(len(paths))
        paths, labels = [paths[i] for i in order], labels[order]

    def decode(path: bytes) -> np.ndarray:
        return load_image(os.fsdecode(path), size, resize, color)

    def decode_map(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape([size, size, 3])
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle and not cache:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)  # file names: cheap
    ds = ds.map(decode_map, num_parallel_calls=tf.data.AUTOTUNE)
    if cache is True and len(paths) * size * size * 3 > _LARGE_CACHE_BYTES:
        log.warning(
            "caching %d decoded %dx%d images in memory takes %.1f GB; pass cache=PATH (disk) "
            "or cache=False (stream) if that is too much",
            len(paths),
            size,
            size,
            len(paths) * size * size * 3 / 1e9,
        )
    if cache:
        ds = ds.cache(_cache_file(cache, paths, labels, preprocessing) if not isinstance(cache, bool) else "")
        if shuffle:
            buffer = min(len(paths), max(1024, _SHUFFLE_BUFFER_BYTES // (size * size * 3)))
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if augment is not None and augment.enabled:
        # One random int64 per element, re-drawn each epoch, seeds the stateless ops: results
        # do not depend on how the parallel map schedules its calls.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        method = _TF_RESIZE[resize]
        ds = tf.data.Dataset.zip((ds, keys)).map(
            lambda pair, key: (
                _augment(tf, pair[0], tf.stack([tf.constant(seed, tf.int64), key]), augment, method),
                pair[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    mean_t, std_t = tf.constant(mean), tf.constant(std)

    def normalise(images, batch_labels):
        images = (tf.cast(images, tf.float32) - mean_t) / std_t
        return (images, batch_labels) if return_labels else images

    ds = ds.map(normalise, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Re-raise a :class:`DataError` from decoding inside tf.data (which TensorFlow wraps in
    an ``UnknownError`` with a traceback) as the one-line ``DataError``::

        with data_errors():
            model.fit(make_dataset(...))
    """
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    try:
        yield
    except tf.errors.OpError as exc:
        found = re.search(r"edgexfer\.errors\.DataError: ([^\n]+)", exc.message or "")
        if found:
            raise DataError(found.group(1).strip()) from None
        raise


def _augment(tf, image, seed, config: AugmentOptions, method: str):
    """Augment one uint8 H×W×3 image with stateless random ops; returns float32 in 0–255."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    height, width = image.shape[0], image.shape[1]
    x = tf.cast(image, tf.float32)
    if config.scale > 0:  # its seed is folded in apart, so the other ops draw what they drew before it existed
        x = _zoom_about_centre(tf, x, tf.random.experimental.stateless_fold_in(seed, 101), config.scale, method)
    if config.crop_zoom > 0:
        side = tf.random.stateless_uniform([], seeds[0], minval=math.sqrt(1.0 - config.crop_zoom), maxval=1.0)
        x = tf.image.stateless_random_crop(x, tf.concat([_scaled(tf, side, height, width), [3]], 0), seed=seeds[1])
        x = tf.image.resize(x, [height, width], method=method)
    if config.flip:
        x = tf.image.stateless_random_flip_left_right(x, seed=seeds[2])
    if config.low_res > 0:
        x = _coarsen(tf, x, tf.random.experimental.stateless_fold_in(seed, 102), config.low_res, method)
    if config.brightness > 0:
        x = tf.image.stateless_random_brightness(x, config.brightness * 255.0, seed=seeds[3])
    if config.contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1.0 - config.contrast, 1.0 + config.contrast, seed=seeds[4])
    x = tf.clip_by_value(x, 0.0, 255.0)
    x.set_shape([height, width, 3])
    return x


def _scaled(tf, factor, height: int, width: int):
    """``[round(factor·height), round(factor·width)]`` as int32, each at least 1 pixel."""
    return tf.maximum(1, tf.cast(tf.round(factor * tf.constant([height, width], tf.float32)), tf.int32))


def _zoom_about_centre(tf, x, seed, scale: float, method: str):
    """Zoom ``x`` (H×W×3 float) about its centre by a log-uniform factor in [1/(1+scale), 1+scale].

    Zooming out pads with the mean colour of the image's edge pixels (the background, for an
    object on a plain ground), not black or a reflection, which would draw a frame or mirrored
    strokes."""
    height, width = x.shape[0], x.shape[1]
    bound = math.log1p(scale)
    factor = tf.exp(tf.random.stateless_uniform([], seed, minval=-bound, maxval=bound))
    edge = tf.concat([x[0], x[-1], x[:, 0], x[:, -1]], axis=0)
    fill = tf.reduce_mean(edge, axis=0)
    zoomed = tf.image.resize(x, _scaled(tf, factor, height, width), method=method) - fill
    return tf.image.resize_with_crop_or_pad(zoomed, height, width) + fill


def _coarsen(tf, x, seed, low_res: float, method: str):
    """Shrink ``x`` to a random fraction in [low_res, 1] of its side (area average, as a coarse
    sensor or a block-averaged scan does) and enlarge it back with the preprocessing's resize."""
    height, width = x.shape[0], x.shape[1]
    fraction = tf.random.stateless_uniform([], seed, minval=low_res, maxval=1.0)
    small = tf.image.resize(x, _scaled(tf, fraction, height, width), method="area")
    return tf.image.resize(small, [height, width], method=method)


def _cache_file(cache: str | os.PathLike[str], paths: list[str], labels: np.ndarray, preprocessing) -> str:
    key = json.dumps([paths, labels.tolist(), int(preprocessing.input_size), preprocessing.resize, preprocessing.color])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = Path(cache)
    if base.is_dir():
        return str(base / f"edgexfer-cache-{digest}")
    base.parent.mkdir(parents=True, exist_ok=True)
    return f"{base}-{digest}"
