"""A compression stage's inputs: the Keras artifact it reads, its images carved as the run's
training data was (so every stage measures on the same test images), seeded subsets and
calibration images, and the model made trainable.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgexfer.artifact import Artifact, Preprocessing, refuse_input_as_out
from edgexfer.compress import measure
from edgexfer.data.subset import limit_samples
from edgexfer.errors import ArtifactError, DataError
from edgexfer.evaluate.splits import run_split

log = logging.getLogger("edgexfer.compress")

KERAS_SUFFIXES = (".h5", ".keras")


def keras_artifact(path, role: str = "MODEL") -> Artifact:
    """The input artifact, which must hold a Keras model (a training or compression stage's)."""
    artifact = Artifact(path)
    model_path = artifact.model_path
    if model_path.suffix not in KERAS_SUFFIXES:
        raise ArtifactError(
            f"{role} {str(artifact.path)!r} holds {model_path.name}, not a Keras model; pass "
            "the artifact of a training or compression stage (finetune, distill, prune, "
            "quantize), not an export"
        )
    return artifact


def scan_data(artifact: Artifact, data, *, strict: bool, role: str = "model"):
    """Scan ``data`` with the artifact's labels and split settings; a class mismatch names both."""
    from edgexfer.data import scan_image_folder

    split = run_split(artifact)
    try:
        dataset = scan_image_folder(
            data,
            class_names=artifact.manifest.label_names,
            seed=split["seed"],
            val_fraction=split["val_fraction"],
            test_fraction=split["test_fraction"],
            strict=strict,
        )
    except DataError as exc:
        if "do not match the model's classes" in str(exc):
            raise DataError(f"the {role}'s classes ({str(artifact.path)!r}) and the data's differ: {exc}") from None
        raise
    return dataset, split


def stage_inputs(model_dir, data_dir, out, config) -> tuple:
    """What prune and quantize read first: the Keras artifact (``--out`` checked against it),
    its manifest and preprocessing, the scanned data and its train/val/evaluation samples.

    Returns ``(source, manifest, preprocessing, dataset, split, train, val, eval_split,
    eval_samples)``.
    """
    source = keras_artifact(model_dir, "MODEL")
    refuse_input_as_out(out, source)
    manifest = source.manifest
    dataset, split = scan_data(source, data_dir, strict=config.strict)
    train = limit_samples(dataset.split("train"), config.max_train_images, config.seed)
    eval_split, eval_samples = evaluation_samples(dataset)
    return (
        source,
        manifest,
        manifest.preprocessing,
        dataset,
        split,
        train,
        dataset.split("val"),
        eval_split,
        eval_samples,
    )


def evaluation_samples(dataset) -> tuple[str, list]:
    """The split accuracy is reported on: test, or val when the test split is empty."""
    for name in ("test", "val"):
        if dataset.split(name):
            return name, dataset.split(name)
    raise DataError(
        f"{str(dataset.root)!r} has no test or validation images to measure accuracy on; "
        "add images or raise the val/test fractions"
    )


def pick_calibration(samples: Sequence, count: int, seed: int) -> list:
    """``count`` training images for int8 calibration, stratified by class and seeded."""
    from edgexfer.compress.config import MIN_CALIBRATION_IMAGES

    samples = list(samples)
    if len(samples) < MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"the training split has {len(samples)} images; a calibration set needs at least "
            f"{MIN_CALIBRATION_IMAGES} representative images: add training images"
        )
    if len(samples) < count:
        log.warning(
            "asked for %d calibration images, the training split has %d; using all of them", count, len(samples)
        )
    return limit_samples(samples, count, seed)


def unlabelled_images(folder, label_names, max_images: int | None, seed: int, *, strict: bool):
    """An unlabelled folder's images (``UnlabelledImages``): a seeded random ``max_images`` of
    them, in folder order; class folders are allowed (their names are checked, never used as labels)."""
    import dataclasses

    from edgexfer.data.class_map import scan_unlabelled

    images = scan_unlabelled(folder, label_names, {}, strict=strict)
    paths = images.paths
    if max_images and len(paths) > max_images:
        chosen = np.random.default_rng(seed).choice(len(paths), max_images, replace=False)
        images = dataclasses.replace(images, paths=[paths[i] for i in sorted(chosen)])
    return images


# Images predicted per chunk when labelling unlabelled images (bounded memory on large folders).
_LABEL_CHUNK = 1024


def labelled_by_model(source: Artifact, model, config, log) -> tuple[list, dict]:
    """``config.unlabelled``'s images as training samples labelled with ``model``'s (the input
    artifact's) predictions, and what was done (count, predicted images per class). Fine-tuning while
    pruning or QAT on the labelled source data alone drifts away from the domain these images
    come from; with them the compressed model keeps what its input model does there
    (self-training; no label of theirs is read)."""
    if not config.unlabelled:
        return [], {}
    from edgexfer.data import Sample

    names = source.manifest.label_names
    images = unlabelled_images(
        config.unlabelled, names, config.max_unlabelled_images, config.seed, strict=config.strict
    )
    paths = images.paths
    preprocessing = source.manifest.preprocessing
    predicted = []
    for start in range(0, len(paths), _LABEL_CHUNK):
        chunk = [Sample(Path(p), -1) for p in paths[start : start + _LABEL_CHUNK]]
        predicted.append(measure.keras_probs(model, load_uint8(chunk, preprocessing)[0], preprocessing).argmax(1))
    labels = np.concatenate(predicted) if predicted else np.zeros(0, int)
    counts = np.bincount(labels, minlength=len(names))
    log(
        f"unlabelled {config.unlabelled}: {len(paths)} images join the training data labelled with the input "
        f"model's predictions{' (their class folders are ignored)' if images.had_labels else ''}"
    )
    info = {
        "path": str(config.unlabelled),
        "images": len(paths),
        "predicted_per_class": {name: int(count) for name, count in zip(names, counts)},
    }
    return [Sample(Path(p), int(k)) for p, k in zip(paths, labels)], info


def load_uint8(samples: Sequence, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    from edgexfer.data import load_arrays

    return load_arrays(list(samples), preprocessing)


def training_datasets(train: Sequence, val: Sequence | None, preprocessing: Preprocessing, config) -> tuple:
    """The (train, val) tf.data pipelines a compression stage fine-tunes on: the training split
    shuffled, augmented as ``config.augment`` says and cached; the val split (if any) cached."""
    from edgexfer.data import make_dataset

    train_ds = make_dataset(
        train,
        preprocessing,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        augment=config.augment,
        cache=True,
    )
    val_ds = make_dataset(val, preprocessing, batch_size=config.batch_size, cache=True) if val else None
    return train_ds, val_ds


def make_trainable(model) -> list[str]:
    """Unfreeze every layer but BatchNormalization for fine-tuning while compressing.

    BatchNorm keeps the regime the model was trained in: a frozen BN layer (finetune keeps
    ImageNet statistics) stays in inference mode, a trained one keeps training."""
    unfrozen = []
    for layer in model.layers:
        if type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization"):
            continue
        if layer.weights and not layer.trainable:
            unfrozen.append(layer.name)
        layer.trainable = True
    return unfrozen
