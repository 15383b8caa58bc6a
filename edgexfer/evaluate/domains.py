"""Evaluating one artifact on several domains at once: each domain's accuracy and the gap.

``evaluate_domains(artifact, {"mnist": "data/mnist", "uci": "data/uci"})`` evaluates on
every labelled folder and reports, per domain, the accuracy and the **gap**: the first
(reference) domain's accuracy minus this domain's, so a positive gap is what is lost by
moving to that domain.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgexfer.errors import ConfigError
from edgexfer.keras_io import load_keras_model


def parse_domain(spec: str) -> tuple[str, str]:
    """``"NAME=DIR"`` → ``(NAME, DIR)``; a bare ``DIR`` is named after its last component."""
    text = str(spec).strip()
    if not text:
        raise ConfigError("--data needs NAME=DIR (e.g. --data mnist=data/mnist), got an empty value")
    if "=" in text:
        name, path = (part.strip() for part in text.split("=", 1))
        if not name or not path:
            raise ConfigError(f"--data {spec!r}: write NAME=DIR (e.g. --data mnist=data/mnist)")
        return name, path
    name = Path(text.rstrip("/\\")).name or text
    return name, text


def parse_domains(specs: Iterable[str]) -> dict[str, str]:
    """Repeated ``--data NAME=DIR`` options → ``{NAME: DIR}`` in the order given."""
    domains: dict[str, str] = {}
    for spec in specs:
        name, path = parse_domain(spec)
        if name in domains:
            raise ConfigError(
                f"--data name {name!r} is given twice ({domains[name]!r} and {path!r}); give each domain its own NAME"
            )
        domains[name] = path
    if not domains:
        raise ConfigError("pass at least one --data NAME=DIR")
    return domains


def evaluate_domains(
    artifact: str | os.PathLike[str],
    domains: Mapping[str, str | os.PathLike[str]],
    *,
    class_map: Mapping[str, str] | str | None = None,
    split: str | Mapping[str, str] = "all",
    batch_size: int = 64,
    top_k: int = 5,
    strict: bool = False,
    trained_domains: Iterable[str] = (),
    measure_latency: bool = False,
) -> dict[str, Any]:
    """Accuracy of ``artifact`` on each labelled folder of ``domains`` (name → folder) and the
    gap to the first one. ``class_map`` renames folder classes to the model's (applied to
    every domain where those folders exist).

    ``split`` (one of all/train/val/test, or ``{domain: split}``) picks the part of each folder:
    folders are carved with the seed and fractions the run's training data was split with
    (recorded in the artifact's lineage), so ``test`` is the held-out split every model of the
    run is scored on. ``trained_domains`` names the domains whose labels a training stage used
    (recorded per domain). ``measure_latency`` adds the Keras model's batch-1 latency (1 thread)
    and its MACs, so a report can place this model on the accuracy-latency plane.

    Returns ``{"artifact", "reference", "split", "domains": {name: {data, split, n, accuracy,
    macro_f1, top<k>_accuracy, gap, per_class, confusion_matrix, labels_used_for_training}},
    "max_gap", "macs", "latency"}``.
    """
    from edgexfer.artifact import Artifact
    from edgexfer.config import EvaluateDomainsConfig
    from edgexfer.data.class_map import check_map_used, parse_class_map
    from edgexfer.data.pipeline import data_errors
    from edgexfer.evaluate.evaluator import predict_samples
    from edgexfer.evaluate.metrics import classification_metrics
    from edgexfer.evaluate.splits import resolve_splits, run_split, samples_of, scan_domain

    if not domains:
        raise ConfigError("evaluate_domains needs at least one domain (name → image folder)")
    splits = resolve_splits(split, domains, where="--split")
    config = EvaluateDomainsConfig.build(
        split=split,
        batch_size=batch_size,
        top_k=top_k,
        strict=strict,
        class_map=class_map,
        measure_latency=measure_latency,
    )
    mapping = parse_class_map(class_map) if not isinstance(class_map, Mapping) else dict(class_map)
    trained = set(trained_domains)
    loaded = Artifact(artifact)
    manifest = loaded.manifest
    # Scan every folder first: a wrong folder or a missing split fails before the model is loaded.
    samples_by_domain, folder_classes = {}, set()
    for name, path in domains.items():
        dataset = scan_domain(loaded, path, class_map=mapping, strict=config.strict)
        samples_by_domain[name] = samples_of(dataset, splits[name], where=f"domain {name!r} ({path})")
        folder_classes.update(dataset.folder_class_names)
    check_map_used(mapping, folder_classes)
    model = load_keras_model(loaded.model_path)
    rows: dict[str, dict[str, Any]] = {}
    reference = next(iter(domains))
    with data_errors():
        for name, samples in samples_by_domain.items():
            probs, labels = predict_samples(model, samples, manifest.preprocessing, config.batch_size)
            row = classification_metrics(labels, probs, manifest.label_names, top_k=config.top_k)
            rows[name] = {
                "data": str(domains[name]),
                "split": splits[name],
                "labels_used_for_training": name in trained,
                **row,
            }
    for row in rows.values():
        row["gap"] = rows[reference]["accuracy"] - row["accuracy"]
    result = {
        "artifact": str(loaded.path),
        "stage": manifest.stage,
        "reference": reference,
        "split": split if isinstance(split, str) else dict(splits),
        "split_settings": run_split(loaded),
        "domains": rows,
        "max_gap": max(row["gap"] for row in rows.values()),
    }
    if measure_latency:
        result.update(_cost(model, samples_by_domain[reference], manifest.preprocessing))
    return result


def _cost(model, samples: list, preprocessing) -> dict[str, Any]:
    """MACs and batch-1 latency (1 TensorFlow thread where it can still be set) of a Keras model."""
    from edgexfer.data import load_arrays
    from edgexfer.evaluate import latency as lat
    from edgexfer.evaluate.macs import keras_macs
    from edgexfer.runtime import normalize

    images, _ = load_arrays(samples[:1], preprocessing)
    x = normalize(images, preprocessing)
    threads = lat.set_tensorflow_threads(1)
    settings = lat.LatencySettings(batch_size=1)
    rows = lat.measure(
        lat.keras_runs(model),
        x,
        settings,
        model=str(getattr(model, "name", "keras")),
        runtime="keras-tensorflow",
        threads=threads,
        threads_used=threads or lat.resolve_threads(0),
    )
    return {"macs": keras_macs(model), "latency": rows}
