"""``edgexfer demo --seeds N``: the demo's road over N seeds, and the spread of its headline.

Seed 0 is the plain demo run (``RUN_DIR`` itself, so an existing demo run is reused); seed
``s > 0`` runs the same pipeline with every seeded stage's ``seed`` set to ``s`` in
``RUN_DIR/seeds/seed-s``. The data and their held-out split are the same for every seed: a
stage that carves the split (``split_seed``) keeps the plain run's, so every seed is scored on
the same test images and the spread is that of training (initialisation, shuffles,
augmentation, subsets), not of which images were held out.

``RUN_DIR/seeds.json``::

    {"seeds": [0, 1, 2], "std_ddof": 1,
     "metrics": {"<model> · <domain> accuracy": {"mean": m, "std": s, "values": [...]}},
     "runs": {"0": "RUN_DIR", "1": "RUN_DIR/seeds/seed-1", ...}}

``std`` is the sample standard deviation (ddof 1). The headline's deployed adapted teacher
is checked on the target domain only; its int8 accuracy on the source domain's test split is
measured here too (``check_artifacts`` on the ``export_adapted`` file, no gate), so both
domains carry a spread for the student and the adapted teacher.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgexfer.tempfiles import write_text_atomically

SEEDS_FILE = "seeds.json"
ADAPTED_EXPORT = "export_adapted"
ADAPTED_INT8_SOURCE = "deployed adapted teacher: tflite int8 · source accuracy"


def seed_overrides(pipeline_file: str | Path, seed: int) -> list[str]:
    """``STAGE.seed=SEED`` for every stage of the pipeline whose options take a seed, and
    ``STAGE.split_seed=S`` pinning the plain run's split (``S``: the stage's own ``split_seed``,
    else its ``seed``, else 0) for every stage that carves one. The pipeline's own validation
    decides: a stage that rejects the option has none."""
    from edgexfer.errors import ConfigError
    from edgexfer.pipeline import load_pipeline

    overrides = []
    for stage in load_pipeline(pipeline_file).stages:
        plain_split = stage.options.get("split_seed")
        if plain_split is None:
            plain_split = stage.options.get("seed") or 0
        for candidate in (f"{stage.name}.seed={int(seed)}", f"{stage.name}.split_seed={int(plain_split)}"):
            try:
                load_pipeline(pipeline_file, overrides=[*overrides, candidate])
            except ConfigError:
                continue
            overrides.append(candidate)
    return overrides


def seed_run_dir(run_dir: str | Path, seed: int) -> Path:
    return Path(run_dir) if seed == 0 else Path(run_dir) / "seeds" / f"seed-{seed}"


def headline_figures(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``"<model> · <domain> accuracy"`` → value, for every accuracy the headline table shows."""
    figures = {}
    for row in rows:
        for column, domain in (("source_accuracy", "source"), ("target_accuracy", "target")):
            if row.get(column) is not None:
                figures[f"{row['model']} · {domain} accuracy"] = float(row[column])
    return figures


def adapted_int8_on_source(run_dir: Path) -> float | None:
    """The deployed adapted teacher's accuracy on the source domain's test split (no gate)."""
    from edgexfer.evaluate.check import check_artifacts

    export = run_dir / ADAPTED_EXPORT
    source = run_dir / "data" / "source"
    if not (export / "manifest.json").is_file() or not source.is_dir():
        return None
    result = check_artifacts(
        [export], source, out=run_dir / "seeds-check" / "adapted-source", split="test", measure_latency=False
    )
    candidates = result.get("candidates") or []
    return float(candidates[0]["parity"]["accuracy"]) if candidates else None


def spread(values_by_seed: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Mean, sample std and the values per figure, over the seeds that measured it."""
    seeds = sorted(values_by_seed)
    names = sorted({name for figures in values_by_seed.values() for name in figures})
    metrics = {}
    for name in names:
        values = [values_by_seed[s][name] for s in seeds if name in values_by_seed[s]]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        metrics[name] = {"mean": round(mean, 6), "std": round(std, 6), "values": values}
    return {"seeds": seeds, "std_ddof": 1, "metrics": metrics}


def run_demo_seeds(
    run_dir: str | Path = "runs/demo",
    *,
    seeds: int = 3,
    full: bool = False,
    progress: bool = False,
    log: Callable[..., None] = print,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run the demo over seeds ``0..seeds-1`` and write ``RUN_DIR/seeds.json``; returns its content
    plus the seed-0 summary (``summary``) so the caller can render the usual table."""
    from edgexfer.demo import RECIPE, run_demo
    from edgexfer.errors import ConfigError

    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be at least 1")
    run_dir = Path(run_dir)
    figures: dict[int, dict[str, float]] = {}
    runs: dict[str, str] = {}
    summaries: dict[int, dict[str, Any]] = {}
    for seed in range(seeds):
        directory = seed_run_dir(run_dir, seed)
        log(f"[bold]seed {seed}[/bold] → {directory}")
        extra = seed_overrides(RECIPE, seed) if seed else []
        summary = run_demo(directory, full=full, progress=progress, log=log, overrides=(overrides or []) + extra)
        summaries[seed] = summary
        figures[seed] = headline_figures(summary["headline"])
        source_int8 = adapted_int8_on_source(directory)
        if source_int8 is not None:
            figures[seed][ADAPTED_INT8_SOURCE] = source_int8
        runs[str(seed)] = str(directory)
    result = {**spread(figures), "runs": runs}
    write_text_atomically(run_dir / SEEDS_FILE, json.dumps(result, indent=2) + "\n")
    return {**result, "summary": summaries[0], "file": str(run_dir / SEEDS_FILE)}
