"""``edgexfer demo``: the README's main job, on bundled real data that installs from PyPI.

Prepares mnist-5k (source domain) and uci-digits (target domain), fine-tunes
EfficientNet-Lite0 with its offline ImageNet weights on mnist-5k, and evaluates it in
domain and across domains. Later stages (adapt, distill, compress, export, check) join
the road as they land.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgexfer import api

PROFILES: dict[str, dict[str, Any]] = {
    # About a minute of fine-tuning on a 2-core machine.
    "quick": dict(img_size=64, epochs=10, fine_tune_epochs=5, unfreeze_layers=30, batch_size=64),
    "full": dict(img_size=96, epochs=15, fine_tune_epochs=10, unfreeze_layers=60, batch_size=64),
}


def run_demo(workdir: str | Path = "runs/demo", *, full: bool = False, progress: bool = False, log=print) -> dict:
    """Run the demo road; returns the headline rows and the report path."""
    workdir = Path(workdir)
    started = time.perf_counter()
    source = workdir / "data" / "mnist-5k"
    target = workdir / "data" / "uci-digits"
    log("preparing the bundled real data (mnist-5k → uci-digits)")
    api.prepare_data("mnist-5k", source)
    api.prepare_data("uci-digits", target)

    profile = PROFILES["full" if full else "quick"]
    log(f"fine-tuning efficientnet_lite0 (ImageNet weights) on mnist-5k at {profile['img_size']}px")
    finetuned = api.finetune(source, workdir / "finetune", progress=progress, log=log,
                             backbone="efficientnet_lite0", weights="imagenet", seed=0, **profile)
    log("evaluating on the target domain (uci-digits, never seen in training)")
    target_eval = api.evaluate(finetuned.path, target, confusion_png=workdir / "uci-digits.confusion.png")

    rows = [
        {"artifact": "finetune", "domain": "mnist-5k (test split)", "accuracy": finetuned.metrics["test_accuracy"],
         "params": finetuned.metrics["params"], "bytes": finetuned.metrics["model_bytes"]},
        {"artifact": "finetune", "domain": "uci-digits (all, cross-domain)", "accuracy": target_eval["accuracy"],
         "params": finetuned.metrics["params"], "bytes": finetuned.metrics["model_bytes"]},
    ]
    summary = {"rows": rows, "wall_seconds": round(time.perf_counter() - started, 1),
               "artifacts": {"finetune": str(finetuned.path)}, "profile": "full" if full else "quick"}
    report = workdir / "report.md"
    report.write_text(_markdown(summary))
    (workdir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["report"] = str(report)
    return summary


def _markdown(summary: dict) -> str:
    lines = ["# edgexfer demo", "", f"Profile `{summary['profile']}`, {summary['wall_seconds']} s wall.", "",
             "| artifact | domain | accuracy | params | size (bytes) |", "|---|---|---|---|---|"]
    for row in summary["rows"]:
        lines.append(f"| {row['artifact']} | {row['domain']} | {row['accuracy']:.4f} | {row['params']:,} | "
                     f"{row['bytes']:,} |")
    lines += ["", "Confusion matrix on the target domain: `uci-digits.confusion.png`.", ""]
    return "\n".join(lines)
