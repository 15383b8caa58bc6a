"""Evaluating one artifact on several domains at once: each domain's accuracy and the gap.

``evaluate_domains(artifact, {"mnist": "data/mnist", "uci": "data/uci"})`` evaluates on
every labelled folder and reports, per domain, the accuracy and the **gap**: the first
(reference) domain's accuracy minus this domain's, so a positive gap is what is lost by
moving to that domain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgexfer.errors import ConfigError
from edgexfer.models_io import load_keras_model


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
            raise ConfigError(f"--data name {name!r} is given twice ({domains[name]!r} and {path!r}); "
                              "give each domain its own NAME")
        domains[name] = path
    if not domains:
        raise ConfigError("pass at least one --data NAME=DIR")
    return domains


def evaluate_domains(artifact: str | os.PathLike[str], domains: Mapping[str, str | os.PathLike[str]], *,
                     class_map: Mapping[str, str] | str | None = None, split: str = "all", batch_size: int = 64,
                     top_k: int = 5, strict: bool = False) -> dict[str, Any]:
    """Accuracy of ``artifact`` on each labelled folder of ``domains`` (name → folder) and the
    gap to the first one. ``class_map`` renames folder classes to the model's (applied to
    every domain where those folders exist).

    Returns ``{"artifact", "reference", "split", "domains": {name: {data, n, accuracy,
    macro_f1, top<k>_accuracy, gap, per_class, confusion_matrix}}, "max_gap"}``.
    """
    from edgexfer.artifact import Artifact
    from edgexfer.config import EvaluateConfig
    from edgexfer.data.pipeline import data_errors
    from edgexfer.evaluate.evaluator import predict_samples
    from edgexfer.evaluate.metrics import classification_metrics
    from edgexfer.data.class_map import check_map_used, parse_class_map, scan_labelled

    if not domains:
        raise ConfigError("evaluate_domains needs at least one domain (name → image folder)")
    config = EvaluateConfig.build(split=split, batch_size=batch_size, top_k=top_k, strict=strict)
    mapping = parse_class_map(class_map) if not isinstance(class_map, Mapping) else dict(class_map)
    loaded = Artifact(artifact)
    manifest = loaded.manifest
    # Scan every folder first: a wrong folder fails before the model is loaded.
    samples_of, folder_classes = {}, set()
    for name, path in domains.items():
        dataset = scan_labelled(path, manifest.label_names, mapping, seed=manifest.seed or 0, strict=config.strict,
                                strict_keys=False)
        splits = ("train", "val", "test") if config.split == "all" else (config.split,)
        samples_of[name] = [s for part in splits for s in dataset.split(part)]
        folder_classes.update(dataset.folder_class_names)
    check_map_used(mapping, folder_classes)
    model = load_keras_model(loaded.model_path)
    rows: dict[str, dict[str, Any]] = {}
    reference = next(iter(domains))
    with data_errors():
        for name, samples in samples_of.items():
            probs, labels = predict_samples(model, samples, manifest.preprocessing, config.batch_size)
            row = classification_metrics(labels, probs, manifest.label_names, top_k=config.top_k)
            rows[name] = {"data": str(domains[name]), **row}
    for name, row in rows.items():
        row["gap"] = rows[reference]["accuracy"] - row["accuracy"]
    return {"artifact": str(loaded.path), "stage": manifest.stage, "reference": reference, "split": config.split,
            "domains": rows, "max_gap": max(row["gap"] for row in rows.values())}
