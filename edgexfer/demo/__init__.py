"""``edgexfer demo``: the README's main job, on bundled real data that installs from PyPI.

Runs ``models/digits.yaml``: MNIST-5k (source) → UCI digits (target), EfficientNet-Lite0
with its offline ImageNet weights → fuse → adapt → distill → prune → QAT → int8 TFLite and
ONNX → check on the target domain. It ends with the headline table and the report's path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgexfer.errors import ConfigError
from edgexfer.recipes_index import RECIPES_DIR

# Shipped in the package (edgexfer/recipes → models/), so the demo runs from an installed wheel too.
RECIPE = RECIPES_DIR / "digits.yaml"
# --full: a larger input, longer training; slower, more accurate.
FULL_OVERRIDES = [
    "finetune.img_size=96",
    "finetune.epochs=15",
    "finetune.fine_tune_epochs=10",
    "distill.epochs=40",
    "distill.student=cnn_medium",
    "prune.epochs=6",
    "quantize.epochs=4",
]


def run_demo(
    run_dir: str | Path = "runs/demo",
    *,
    full: bool = False,
    progress: bool = False,
    log=print,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the demo pipeline; returns the run summary with the headline rows."""
    from edgexfer.pipeline import run_pipeline

    if not RECIPE.is_file():
        raise ConfigError(f"the demo recipe {RECIPE} is missing; reinstall edgexfer (pip install 'edgexfer[train]')")
    overrides = (FULL_OVERRIDES if full else []) + (overrides or [])
    summary = run_pipeline(RECIPE, run_dir=run_dir, overrides=overrides, progress=progress, log=log)
    summary["headline"] = headline_rows(Path(run_dir))
    summary["domains"] = domain_names(overrides)
    return summary


def domain_names(overrides: list[str]) -> dict[str, str]:
    """What the demo's source and target domains are (``--set data.target.dataset=…`` may change
    them): the bundled dataset's name, or the folder's."""
    from edgexfer.pipeline.load import load_pipeline

    data = load_pipeline(RECIPE, overrides).data
    return {role: str(spec.get("dataset") or Path(spec["path"]).name) for role, spec in data.items()}


def headline_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Accuracy on both domains, size, batch-1 latency and MACs of the teacher, the models on the
    road and the deployed files, read from the run's files as the report reads them (the
    source domain on its held-out test split for every model, Keras and exported alike)."""
    from edgexfer.evaluate.report import summary_rows
    from edgexfer.evaluate.road import collect_road

    road = collect_road(run_dir)
    roles = {row["model"].name: row["role"] for row in summary_rows(road)}
    source = next((d for d in road.domains if d != road.target), None)
    chosen = [m for m in road.models.values() if m.name in roles or m.is_export]
    return [
        {
            "model": m.label,
            "role": roles.get(m.name, ""),
            "source_accuracy": m.acc(source),
            "target_accuracy": m.acc(road.target),
            "accuracy": {d: m.acc(d) for d in road.domains},
            "bytes": m.bytes,
            "params": m.params,
            "latency_ms": m.latency_ms,
            "macs": m.macs,
        }
        for m in chosen
    ]
