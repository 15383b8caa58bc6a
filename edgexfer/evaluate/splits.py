"""Held-out data: the one train/val/test split of a folder that every model of a run is scored on.

The first training stage carves a folder into train/val/test by seed and records how
(``manifest.config`` or ``manifest.extra["split"]``); every later stage reads that record
through the lineage (:func:`run_split`). Scoring a model on a
domain it was trained on must use this record's test split, so every model in the run is
compared on the same images; a domain whose labels no stage used may be scored on all of it.

Imports no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from edgexfer.errors import ArtifactError, ConfigError

SPLIT_CHOICES = ("all", "train", "val", "test")
# The fractions a folder without its own val/test folders is carved with (FinetuneConfig's defaults).
DEFAULT_SPLIT = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.1}


def run_split(artifact) -> dict[str, Any]:
    """``{"seed", "val_fraction", "test_fraction"}`` the artifact's data was split with (the first
    record found in its lineage; the default fractions with the artifact's seed where none is), so
    every later stage measures on the same test images (which the first model never trained on)."""

    try:
        chain = artifact.lineage()
    except ArtifactError:
        chain = [artifact]
    for item in chain:
        manifest = item.manifest
        split = (manifest.extra or {}).get("split")
        if isinstance(split, dict) and {"val_fraction", "test_fraction"} <= set(split):
            return {
                "seed": int(split.get("seed", 0)),
                "val_fraction": float(split["val_fraction"]),
                "test_fraction": float(split["test_fraction"]),
            }
        config = manifest.config or {}
        if "val_fraction" in config and "test_fraction" in config:
            seed = config.get("split_seed")
            if seed is None:
                seed = manifest.seed if manifest.seed is not None else config.get("seed", 0)
            return {
                "seed": int(seed or 0),
                "val_fraction": float(config["val_fraction"]),
                "test_fraction": float(config["test_fraction"]),
            }
    return {**DEFAULT_SPLIT, "seed": int(artifact.manifest.seed or 0)}


def recorded_split(artifact) -> dict[str, Any] | None:
    """:func:`run_split` where the artifact's lineage records a split, else ``None``."""

    try:
        chain = artifact.lineage()
    except ArtifactError:
        chain = [artifact]
    for item in chain:
        if isinstance((item.manifest.extra or {}).get("split"), dict) or {"val_fraction", "test_fraction"} <= set(
            item.manifest.config or {}
        ):
            return run_split(artifact)
    return None


def scan_domain(
    artifact,
    folder: str | os.PathLike[str],
    *,
    class_map: Mapping[str, str] | None = None,
    strict: bool = False,
    carve: bool = True,
):
    """The labelled folder, with the model's label indices, carved exactly as the run's training
    data was (same seed, same fractions): its ``test`` split is the run's held-out split.

    Without ``class_map`` the folder's classes must be the model's, and it is scanned as the
    compression stages scan it; with one, folder classes are renamed to the model's first.
    ``carve=False`` carves nothing: every image is in ``train``, for scoring on all of it."""
    split = run_split(artifact)
    labels = artifact.manifest.label_names
    fractions = {"seed": split["seed"], "val_fraction": split["val_fraction"], "test_fraction": split["test_fraction"]}
    if not carve:
        fractions.update(val_fraction=0.0, test_fraction=0.0)
    if class_map is None:
        from edgexfer.data import scan_image_folder

        dataset = scan_image_folder(folder, class_names=labels, strict=strict, **fractions)
        dataset.folder_class_names = list(dataset.class_names)
        return dataset
    from edgexfer.data.class_map import scan_labelled

    return scan_labelled(folder, labels, class_map, strict=strict, strict_keys=False, **fractions)


def samples_of(dataset, split: str, *, where: str) -> list:
    """The samples of ``split`` (``all``: every split) of ``dataset``; a one-line error naming the
    splits the folder has when the asked one is missing or empty."""
    if split not in SPLIT_CHOICES:
        raise ConfigError(f"{where}: split {split!r} is not one of {', '.join(SPLIT_CHOICES)}")
    if split == "all":
        return [s for name in ("train", "val", "test") for s in dataset.splits.get(name, [])]
    samples = dataset.splits.get(split) or []
    if not samples:
        has = ", ".join(f"{name} ({len(items):,} images)" for name, items in dataset.splits.items() if items)
        raise ConfigError(
            f"{where}: the folder has no {split!r} split; it has {has or 'no images'} "
            f"— ask for one of those, or split: all"
        )
    return list(samples)


def resolve_splits(split: str | Mapping[str, str], domains, *, where: str = "split") -> dict[str, str]:
    """``split`` (one name for every domain, or ``{domain: split}``) → ``{domain: split}``;
    domains a mapping leaves out are scored on ``all``."""
    if isinstance(split, str):
        chosen = dict.fromkeys(domains, split)
    elif isinstance(split, Mapping):
        unknown = [name for name in split if name not in domains]
        if unknown:
            raise ConfigError(
                f"{where} names domain {unknown[0]!r}, which is not evaluated; domains: {', '.join(domains)}"
            )
        chosen = {name: split.get(name, "all") for name in domains}
    else:
        raise ConfigError(f"{where} is one of {', '.join(SPLIT_CHOICES)} or a mapping domain: split")
    for name, value in chosen.items():
        if value not in SPLIT_CHOICES:
            raise ConfigError(f"{where} {value!r} for domain {name!r} is not one of {', '.join(SPLIT_CHOICES)}")
    return chosen
