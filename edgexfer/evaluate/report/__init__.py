"""Run reports: ``report.md`` and a self-contained ``report.html`` (plots embedded as PNG), the
answer first.

A report reads only files the stages wrote (manifests, metrics, check.json, evaluate.json,
alpha curves), so it can be rebuilt at any time with ``edgexfer report RUN_DIR``.

- ``collect``: each stage's files, a check's rows, the environment (``road`` reads the models);
- ``sections``: what the report says, section by section;
- ``plots``: the accuracy-latency plane and the confusion matrices;
- ``render``: sections → Markdown and HTML.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgexfer.evaluate.report.collect import stage_rows
from edgexfer.evaluate.report.plots import pareto_front, plot_road
from edgexfer.evaluate.report.render import render_html, render_markdown
from edgexfer.evaluate.report.sections import (
    cross_domain_sections,
    folded_sections,
    lineage_section,
    road_sections,
    summary_rows,
    summary_section,
)
from edgexfer.evaluate.road import collect_road
from edgexfer.tempfiles import write_text_atomically

REPORT_DIR = "report"

__all__ = ["REPORT_DIR", "pareto_front", "plot_road", "summary_rows", "write_report"]


def write_report(
    run_dir: str | Path,
    *,
    pipeline_name: str,
    stage_order: list[str],
    stage_types: dict[str, str],
    stopped_at: str | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``RUN_DIR/report.md`` and ``RUN_DIR/report.html``; returns their paths.

    The report opens with the answer (what is deployed, how accurate on each domain, how
    large, how fast, against the fine-tuned teacher and the source-only baseline), then one
    accuracy-latency plot of every model of the run, the cross-domain table and the fusion
    curve, the lineage, and folded at the end the per-stage metrics, checks and confusion
    matrices.
    """
    run_dir = Path(run_dir)
    state = state or json.loads((run_dir / "pipeline-state.json").read_text())
    figures_dir = run_dir / REPORT_DIR
    figures_dir.mkdir(exist_ok=True)
    road = collect_road(run_dir, stage_order)
    stages = stage_rows(run_dir, stage_order, stage_types, state)
    sections = [summary_section(road, stages, stopped_at, state, run_dir)]
    sections += road_sections(road, figures_dir)
    sections += cross_domain_sections(road, stages, run_dir)
    sections.append(lineage_section(stages))
    sections += folded_sections(road, stages, figures_dir)

    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    write_text_atomically(md_path, render_markdown(pipeline_name, sections, run_dir))
    write_text_atomically(html_path, render_html(pipeline_name, sections))
    return {"report": str(md_path), "report_html": str(html_path)}
