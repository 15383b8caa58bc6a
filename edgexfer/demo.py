"""``edgexfer demo``: the README's main job, on bundled real data that installs from PyPI.

Runs ``models/digits.yaml``: MNIST-5k (source) → UCI digits (target), EfficientNet-Lite0
with its offline ImageNet weights → fuse → adapt → distill → prune → QAT → int8 TFLite and
ONNX → check on the target domain. It ends with the headline table and the report's path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgexfer.errors import ConfigError
from edgexfer.evaluate.latency import batch1_p50
from edgexfer.recipes_index import RECIPES_DIR

# Shipped in the package (edgexfer/recipes → models/), so the demo runs from an installed wheel too.
RECIPE = RECIPES_DIR / "digits.yaml"
# --full: a larger input, longer training; slower, more accurate.
FULL_OVERRIDES = ["finetune.img_size=96", "finetune.epochs=15", "finetune.fine_tune_epochs=10",
                  "distill.epochs=40", "distill.student=cnn_medium", "prune.epochs=6", "quantize.epochs=4"]


def run_demo(run_dir: str | Path = "runs/demo", *, full: bool = False, progress: bool = False, log=print,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the demo pipeline; returns the run summary with the headline rows."""
    from edgexfer.pipeline import run_pipeline

    if not RECIPE.is_file():
        raise ConfigError(f"the demo recipe {RECIPE} is missing; reinstall edgexfer (pip install 'edgexfer[train]')")
    summary = run_pipeline(RECIPE, run_dir=run_dir, overrides=(FULL_OVERRIDES if full else []) + (overrides or []),
                           progress=progress, log=log)
    summary["headline"] = headline_rows(Path(run_dir))
    return summary


TEACHER = "teacher (fine-tuned Lite0, fp32)"


def headline_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Accuracy on both domains, size and batch-1 latency of the teacher and the deployed student."""
    evaluations = {name: _read(run_dir / name / "evaluate.json") for name in ("source_only", "adapted", "student")}
    # (check stage, the headline column its accuracy fills, whose files it checks)
    checks = [(_read(run_dir / name / "check.json"), column, who) for name, column, who in (
        ("check_adapted", "target_accuracy", "adapted teacher"), ("check", "source_accuracy", "student"),
        ("check_target", "target_accuracy", "student"))]
    rows = []
    for name, label in (("source_only", TEACHER), ("adapted", "teacher adapted"),
                        ("student", "student (distilled, pruned, QAT; Keras)")):
        result = evaluations[name]
        if not result:
            continue
        artifact = Path(result["artifact"])
        metrics = _read(artifact / "metrics.json")
        domains = result["domains"]
        rows.append({"model": label, "source_accuracy": domains.get("source", {}).get("accuracy"),
                     "target_accuracy": domains.get("target", {}).get("accuracy"),
                     "bytes": (artifact / "model.h5").stat().st_size if (artifact / "model.h5").is_file() else None,
                     "params": metrics.get("params"), "latency_ms": None, "artifact": str(artifact.resolve())})
    keras_latency = {}
    deployed: dict[str, dict[str, Any]] = {}  # one row per deployed file, filled by the checks on each domain
    for check, column, who in checks:
        for candidate in check.get("candidates", []):
            model = f"deployed {who}: {candidate['format']} {candidate['quant']}"
            row = deployed.setdefault(model, {"model": model, "source_accuracy": None, "target_accuracy": None,
                                              "bytes": candidate["size_bytes"], "params": None, "latency_ms": None})
            row[column] = candidate["parity"]["accuracy"]
            row["latency_ms"] = row["latency_ms"] or batch1_p50(candidate.get("latency", []))
        for parent in check.get("parents", []):
            keras_latency.setdefault(str(Path(parent["artifact"]).resolve()), batch1_p50(parent.get("latency", [])))
    rows += deployed.values()
    for row in rows:
        if "artifact" in row:
            row["latency_ms"] = keras_latency.get(row.pop("artifact"))
    by_model = {row["model"]: row for row in rows}
    if TEACHER in by_model and "teacher adapted" in by_model and by_model[TEACHER]["latency_ms"] is None:
        # Adaptation keeps the graph (same layers, same shapes), so the fp32 teacher costs what the adapted one does.
        by_model[TEACHER]["latency_ms"] = by_model["teacher adapted"]["latency_ms"]
    return rows


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
