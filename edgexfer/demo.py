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

RECIPE = Path(__file__).resolve().parents[1] / "models" / "digits.yaml"
# --full: a larger input, longer training; slower, more accurate.
FULL_OVERRIDES = ["finetune.img_size=96", "finetune.epochs=15", "finetune.fine_tune_epochs=10",
                  "distill.epochs=40", "distill.student=cnn_medium", "prune.epochs=6", "quantize.epochs=4"]


def run_demo(run_dir: str | Path = "runs/demo", *, full: bool = False, progress: bool = False, log=print,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the demo pipeline; returns the run summary with the headline rows."""
    from edgexfer.pipeline import run_pipeline

    if not RECIPE.is_file():
        raise ConfigError(f"the demo recipe {RECIPE} is missing; run the demo from an edgexfer checkout")
    summary = run_pipeline(RECIPE, run_dir=run_dir, overrides=(FULL_OVERRIDES if full else []) + (overrides or []),
                           progress=progress, log=log)
    summary["headline"] = headline_rows(Path(run_dir))
    return summary


def headline_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Accuracy on both domains, size and batch-1 latency of the teacher and the deployed student."""
    evaluations = {name: _read(run_dir / name / "evaluate.json") for name in ("source_only", "adapted", "student")}
    check = _read(run_dir / "check" / "check.json")
    rows = []
    for name, label in (("source_only", "teacher (fine-tuned Lite0, fp32)"), ("adapted", "teacher adapted"),
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
                     "params": metrics.get("params"), "latency_ms": None})
    for candidate in check.get("candidates", []):
        latency = [r for r in candidate.get("latency", []) if r.get("batch") == 1 and r.get("threads") == 1]
        rows.append({"model": f"deployed {candidate['format']} {candidate['quant']}", "source_accuracy": None,
                     "target_accuracy": candidate["parity"]["accuracy"], "bytes": candidate["size_bytes"],
                     "params": None, "latency_ms": latency[0]["p50_ms"] if latency else None})
    for parent in check.get("parents", []):
        latency = [r for r in parent.get("latency", []) if r.get("batch") == 1 and r.get("threads") == 1]
        if latency:
            for row in rows:
                if row["model"].startswith("student"):
                    row["latency_ms"] = latency[0]["p50_ms"]
    return rows


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
