"""Fine-tuning from one's own model with few labels: ``finetune --init``, ``--per-class``,
``--unlabelled``.

- ``--init ARTIFACT`` starts from a classifier edgexfer wrote (finetune, adapt, fuse, distill
  output) instead of ImageNet. With the same classes (after ``--class-map``) its head is kept;
  with other classes a new head is built on its features. The new artifact's parent is the
  init artifact, so ``fuse`` can tell that the two are related.
- ``--per-class N`` trains on a seeded, stratified N labelled images per class of the
  folder's train/val splits (the few-label setting). Its test split (its own, or carved as
  every stage carves it) is held out: the reported ``test_accuracy`` is on it only, and the
  images not taken are free to be ``--unlabelled`` ones.
- ``--unlabelled DIR`` lets the other target images help by self-training: after the
  labelled training, rounds of pseudo-labels (the model's prediction where its confidence
  is at least ``pseudo_threshold``) are trained on with the labelled images. Labelled and
  held-out images are never used as unlabelled ones.

This module holds the pieces ``train.finetune`` calls; it imports TensorFlow only inside
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact
from edgexfer.errors import ConfigError, DataError

# Stages whose artifacts are plain float Keras classifiers that can be trained further.
INIT_STAGES = ("finetune", "adapt", "fuse", "distill")


@dataclass
class InitModel:
    """The ``--init`` artifact, loaded: the whole classifier, its feature extractor and head."""

    artifact: Artifact
    model: Any
    backbone: Any  # model input → pooled features, sharing the classifier's layers
    head_layers: list
    input_size: int


def check_init_artifact(init: str | Path) -> Artifact:
    """The ``--init`` artifact, or a one-line error saying what to pass instead."""
    path = Path(init)
    if not (path / "manifest.json").is_file():
        raise ConfigError(
            f"--init {str(init)!r} is not an edgexfer artifact (no manifest.json); pass the directory of a "
            f"classifier edgexfer wrote ({', '.join(INIT_STAGES)} output)"
        )
    artifact = Artifact(path)
    stage = artifact.manifest.stage
    parent = (artifact.manifest.parent or {}).get("path")
    if stage == "export" or not str(artifact.manifest.model_file).endswith((".h5", ".keras")):
        raise ConfigError(
            f"--init {str(init)!r} is an export artifact ({artifact.manifest.model_file}); fine-tuning needs the "
            f"Keras artifact it was exported from{f': pass --init {parent}' if parent else ''}"
        )
    if stage not in INIT_STAGES:
        raise ConfigError(
            f"--init {str(init)!r} is a {stage} artifact (its layers are wrapped for pruning or quantization); "
            f"pass a float classifier ({', '.join(INIT_STAGES)} output)"
            + (f", e.g. its parent {parent}" if parent else "")
        )
    return artifact


def load_init_model(artifact: Artifact, img_size: int | None) -> InitModel:
    """Load the init classifier (``keras_io.load_keras_model``: the stored architecture is
    checked first, an artifact is never code) and split it into features and head."""
    from edgexfer.keras_io import load_keras_model
    from edgexfer.tf_env import import_tf
    from edgexfer.train.batchnorm import find_features_layer

    _, keras = import_tf()
    model = load_keras_model(artifact.model_path)
    where = f"--init {str(artifact.path)!r}"
    last = model.layers[-1]
    classes = len(artifact.manifest.label_names)
    if not (
        isinstance(last, keras.layers.Dense)
        and last.units == classes
        and getattr(last.activation, "__name__", "") == "softmax"
    ):
        raise ConfigError(
            f"{where} is not a classifier (its last layer is {type(last).__name__} {last.name!r}, not a softmax "
            f"Dense over its {classes} labels); pass a classifier edgexfer wrote ({', '.join(INIT_STAGES)} output)"
        )
    shape = model.input_shape
    size = shape[1]
    if img_size is not None and size != img_size:
        raise ConfigError(
            f"{where} takes {size}×{size} px images but --img-size is {img_size}; pass --img-size {size} "
            "(or leave it out: the init model's size is used)"
        )
    features = find_features_layer(model)
    names = [layer.name for layer in model.layers]
    head_layers = model.layers[names.index(features.name) + 1 :]
    backbone = keras.Model(model.input, features.output, name=f"{model.name}_features")
    return InitModel(artifact, model, backbone, list(head_layers), int(size))


@dataclass
class TargetClasses:
    """How the labelled target folder's classes relate to the init model's."""

    keep_head: bool
    message: str
    class_names: list[str] = field(default_factory=list)


def match_init_classes(folder_classes: Sequence[str], init_classes: Sequence[str], class_map: dict) -> TargetClasses:
    """Same classes (after ``class_map``) → keep the head; else a new head (``class_map``
    given and not matching is an error: a map only renames)."""
    from edgexfer.data.class_map import match_classes

    if class_map:
        match_classes(folder_classes, init_classes, class_map, "the --init model's target folder")
        return TargetClasses(True, "", list(init_classes))
    if set(folder_classes) == set(init_classes):
        return TargetClasses(True, "", list(init_classes))
    shown = ", ".join(list(folder_classes)[:6]) + (" …" if len(folder_classes) > 6 else "")
    return TargetClasses(
        False,
        f"the target's {len(folder_classes)} classes ({shown}) are not the --init model's "
        f"{len(init_classes)}: a new head is trained on its features (pass --class-map if the classes are "
        "only named differently, to keep its head)",
        list(folder_classes),
    )


@dataclass
class FewLabelSplit:
    train: list
    held_out: list
    pool: int
    held_out_from: str


def per_class_split(dataset, per_class: int, seed: int, where: str) -> FewLabelSplit:
    """``per_class`` seeded images of each class from the folder's train and val splits, for
    training; its test split (its own, or carved by ``test_fraction`` and the seed as every
    stage carves it, so later stages score the same images) is held out.
    ``per_class`` above a class's count in the pool is an error naming the class and count.
    """
    from edgexfer.data.subset import stratified_subset

    pool = [s for name in ("train", "val") for s in dataset.splits.get(name, [])]
    counts = np.bincount([s.label for s in pool], minlength=len(dataset.class_names))
    for index, name in enumerate(dataset.class_names):
        if counts[index] < per_class:
            raise DataError(
                f"--per-class {per_class}: class {name!r} has only {counts[index]} labelled image(s) in the "
                f"train/val splits of {where}; pass --per-class {counts[index]} or less"
            )
    # Round-robin over seeded per-class shuffles: exactly per_class of each class, and for
    # one seed the N = 1 images are among the N = 5 ones, and so on.
    chosen = stratified_subset(pool, per_class * len(dataset.class_names), seed=seed)
    held_out_from = "its test split" if "test" not in dataset.carved else "the test split carved from it"
    return FewLabelSplit(chosen, list(dataset.split("test")), len(pool), held_out_from)


# With few labelled images an epoch would be a single small batch, and Keras' per-epoch work
# (iterators, validation, callbacks) would cost more than the training: phase 2 repeats the
# labelled images until an epoch holds at least this many batches.
MIN_BATCHES_PER_EPOCH = 4


def fill_epoch(samples: list, batch_size: int) -> list:
    """``samples`` repeated (whole copies) to fill at least ``MIN_BATCHES_PER_EPOCH`` batches."""
    copies = max(1, -(-MIN_BATCHES_PER_EPOCH * batch_size // max(len(samples), 1)))
    return list(samples) * copies


def ready_to_fit_again(model):
    """``model``, ready for another ``fit``: Keras' ``BackupAndRestore`` (the resumable phases)
    deletes ``model._training_state`` when training ends, and the next ``fit`` reads it, so it
    is set back to None (its value on a model that never had the callback)."""
    if not hasattr(model, "_training_state"):
        model._training_state = None
    return model


def unlabelled_paths(directory: str | Path, exclude: Sequence, strict: bool) -> tuple[list[Path], int]:
    """The images of ``directory`` (labels, if any, are not read) minus ``exclude`` (the
    labelled and held-out samples): ``(paths, how many were excluded)``."""
    from edgexfer.data.class_map import scan_unlabelled

    found = scan_unlabelled(directory, strict=strict)
    excluded = {Path(s.path).resolve() for s in exclude}
    kept = [p for p in found.paths if p.resolve() not in excluded]
    if not kept:
        raise DataError(
            f"--unlabelled {str(directory)!r}: every image in it is a labelled or held-out image; "
            "pass a folder with other images of the target domain"
        )
    return kept, len(found.paths) - len(kept)


def self_train(
    model,
    labelled: list,
    unlabelled: list[Path],
    preprocessing,
    config,
    fit: Callable[..., dict],
    log: Callable[..., Any],
) -> dict[str, Any]:
    """Rounds of pseudo-labelling: predict the unlabelled images, keep those the model is at
    least ``config.pseudo_threshold`` sure of, train on them with the labelled images.

    ``fit(samples, epochs)`` trains ``model`` on labelled samples (the finetune image
    pipeline, same layers trainable as phase 2) and returns the history.
    """
    from edgexfer.data import Sample
    from edgexfer.evaluate.evaluator import predict_samples

    rounds = []
    unknown = [Sample(p, 0) for p in unlabelled]
    for index in range(config.pseudo_rounds):
        probs, _ = predict_samples(model, unknown, preprocessing, config.batch_size)
        confidence, predicted = probs.max(1), probs.argmax(1)
        chosen = np.flatnonzero(confidence >= config.pseudo_threshold)
        pseudo = [Sample(unknown[i].path, int(predicted[i])) for i in chosen]
        per_class = np.bincount(predicted[chosen], minlength=probs.shape[1]).tolist()
        log(
            f"  self-training round {index + 1}/{config.pseudo_rounds}: {len(pseudo)} of {len(unknown)} "
            f"unlabelled images at confidence ≥ {config.pseudo_threshold:g}"
        )
        history = fit(labelled + pseudo, config.pseudo_epochs) if pseudo else {}
        rounds.append({"pseudo_labels": len(pseudo), "per_class": per_class, "history": history})
    return {
        "method": "pseudo-label",
        "threshold": config.pseudo_threshold,
        "rounds": rounds,
        "unlabelled_images": len(unknown),
    }


def relabel(dataset, init_classes: Sequence[str], class_map: dict) -> None:
    """Give ``dataset``'s samples the init model's label indices (after ``class_map``), in place."""
    from edgexfer.data import Sample
    from edgexfer.data.class_map import match_classes

    index = match_classes(dataset.class_names, init_classes, class_map, "the target folder", strict_keys=True)
    relabel_of = {i: index[name] for i, name in enumerate(dataset.class_names)}
    dataset.splits = {
        split: [Sample(s.path, relabel_of[s.label]) for s in samples] for split, samples in dataset.splits.items()
    }
    dataset.class_names = list(init_classes)


def init_provenance(artifact: Artifact) -> str:
    """The weights' provenance of a model fine-tuned from ``artifact``."""
    ref = artifact.parent_ref()
    return (
        f"init: {ref['path']} ({ref['stage']} artifact, model sha256 {ref['sha256'][:16]}; "
        f"its weights: {artifact.manifest.weights})"
    )
