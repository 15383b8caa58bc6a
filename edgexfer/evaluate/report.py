"""Run reports: ``report.md`` and a self-contained ``report.html`` (plots embedded as PNG), the answer first.

A report reads only files the stages wrote (manifests, metrics, check.json, evaluate.json,
alpha curves), so it can be rebuilt at any time with ``edgexfer report RUN_DIR``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgexfer.evaluate import formatting as fmt
from edgexfer.evaluate.latency import batch1_row
from edgexfer.evaluate.road import Model, Road, collect_road

REPORT_DIR = "report"


@dataclass
class Section:
    title: str
    blocks: list[Any]  # a block is Markdown text or a Figure
    folded: bool = False  # rendered inside <details>: reference material, after the answer


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
    stages = _stage_rows(run_dir, stage_order, stage_types, state)
    sections = [_summary_section(road, stages, stopped_at, state, run_dir)]
    sections += _road_sections(road, figures_dir)
    sections += _cross_domain_sections(road, stages, run_dir)
    sections.append(
        Section(
            "Lineage",
            [
                _table(
                    ["stage", "type", "status", "made from", "time"],
                    [
                        [f"`{r['name']}`", r["type"], r["status"], r["parent"], fmt.seconds(r["seconds"])]
                        for r in stages
                    ],
                )
            ],
        )
    )
    sections += _folded_sections(road, stages, figures_dir)

    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    _write_atomically(md_path, _render_markdown(pipeline_name, sections, run_dir))
    _write_atomically(html_path, _render_html(pipeline_name, sections))
    return {"report": str(md_path), "report_html": str(html_path)}


# ---------------------------------------------------------------------------- the answer


def summary_rows(road: Road) -> list[dict[str, Any]]:
    """The models the summary compares: the deployed files, their Keras parent, the teacher it
    was distilled from, the fine-tuned teacher and the source-only baseline (each once)."""
    deployed = road.deployed()
    parent = deployed[0].keras_parent if deployed else (road.keras[-1].name if road.keras else None)
    rows: list[dict[str, Any]] = []

    def add(model: Model | None, role: str) -> None:
        if model is None:
            return
        for row in rows:
            if row["model"] is model:
                row["role"] += f"; {role}"
                return
        rows.append({"model": model, "role": role, "deployed": role == "deployed"})

    for model in deployed:
        add(model, "deployed")
    add(road.models.get(parent or ""), "Keras parent of the deployed files" if deployed else "last model")
    add(road.distillation_teacher(parent), "teacher it was distilled from")
    add(road.finetuned_teacher(parent), "fine-tuned teacher")
    add(road.baseline(), "source-only baseline")
    return rows


def _summary_section(road: Road, stages: list[dict], stopped_at: str | None, state: dict, run_dir: Path) -> Section:
    blocks: list[Any] = []
    missing = [r["name"] for r in stages if r["status"] != "done"]
    if stopped_at:
        error = state["stages"].get(stopped_at, {}).get("error", "")
        blocks.append(f"**The run stopped at stage `{stopped_at}`**: {error}")
    if missing:
        blocks.append(
            f"**Missing** ({len(missing)} of {len(stages)} stages not finished, their numbers are "
            "absent below): "
            + ", ".join(f"`{r['name']}` ({r['status']})" for r in stages if r["name"] in missing)
            + "."
        )
    deployed = road.deployed()
    if deployed:
        blocks.append(
            "**Deployed:** "
            + ", ".join(
                f"`{m.path.relative_to(run_dir).as_posix() if m.path.is_relative_to(run_dir) else m.path}` "
                f"({m.kind}, {fmt.size(m.bytes)})"
                for m in deployed
            )
            + "."
        )
    rows = summary_rows(road)
    domains = list(road.domains)
    if rows:
        header = ["model", "role", *[_domain_header(road, d) for d in domains], "size", "latency (batch 1)", "MACs"]
        blocks.append(
            _table(
                header,
                [
                    [
                        f"`{r['model'].name}` ({r['model'].kind})",
                        r["role"],
                        *[_accuracy_cell(r["model"], d, road) for d in domains],
                        fmt.size(r["model"].bytes),
                        fmt.milliseconds(r["model"].latency_ms),
                        fmt.macs(r["model"].macs),
                    ]
                    for r in rows
                ],
            )
        )
        comparisons = _comparisons(road, rows)
        if comparisons:
            blocks.append(
                _table(["deployed", "against", *[f"Δ {d}" for d in domains], "size", "latency", "MACs"], comparisons)
            )
        blocks.append(_data_note(road) + " " + _cost_note(rows))
    elif not missing:
        blocks.append("No stage of this run wrote a model.")
    if road.seeds and rows:
        count = len(road.seeds.get("seeds", []))
        blocks.append(
            f"± : the standard deviation over {count} seeds of the same run (`seeds.json`; every figure "
            "in *Spread over seeds* at the end)."
        )
    return Section("Summary", blocks)


def _domain_header(road: Road, domain: str) -> str:
    """``mnist (test split, 500)``, ``uci-digits (target, all 1,797)``: which images the column scored."""
    info = road.domains[domain]
    role = "target, " if domain == road.target else ""
    if info.split == "all":
        return f"{domain} ({role}all {fmt.count(info.n)})"
    return f"{domain} ({role}{info.split or '?'} split, {fmt.count(info.n)})"


def _accuracy_cell(model: Model, domain: str, road: Road | None = None) -> str:
    """The accuracy, and its spread over seeds where ``seeds.json`` has it."""
    cell = model.accuracy.get(domain)
    if not cell or cell.get("value") is None:
        return fmt.MISSING
    spread = road.seed_spread(model, domain) if road is not None else None
    text = fmt.percent(cell["value"]) + (f" {fmt.spread(spread.get('std'))}" if spread else "")
    column = road.domains.get(domain) if road is not None else None
    if column is not None and (cell.get("split"), cell.get("n")) != (column.split, column.n):
        text += f" ({cell.get('split')}, {fmt.count(cell.get('n'))})"  # not the images the header names
    return text


def _comparisons(road: Road, rows: list[dict]) -> list[list[str]]:
    deployed = [r["model"] for r in rows if r["deployed"]] or [rows[0]["model"]]
    parent = deployed[0].keras_parent or deployed[0].name
    teacher, baseline = road.finetuned_teacher(parent), road.baseline()
    out = []
    for model in deployed:
        if teacher is not None and teacher is not model:
            also = " (= the source-only baseline)" if baseline is teacher else ""
            out.append(
                [
                    f"`{model.name}`",
                    f"fine-tuned teacher `{teacher.name}`{also}",
                    *[fmt.points(_delta(model.acc(d), teacher.acc(d))) for d in road.domains],
                    _times(teacher.bytes, model.bytes, "smaller", "larger"),
                    _times(teacher.latency_ms, model.latency_ms, "faster", "slower"),
                    _times(teacher.macs, model.macs, "fewer", "more"),
                ]
            )
        if baseline is not None and baseline is not model and baseline is not teacher and road.target:
            out.append(
                [
                    f"`{model.name}`",
                    f"source-only baseline `{baseline.name}`",
                    *[
                        fmt.points(_delta(model.acc(d), baseline.acc(d))) if d == road.target else ""
                        for d in road.domains
                    ],
                    "",
                    "",
                    "",
                ]
            )
    return out


def _delta(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _times(reference: float | None, value: float | None, better: str, worse: str) -> str:
    if not reference or not value:
        return fmt.MISSING
    if 0.95 <= reference / value <= 1.05:
        return "same"
    return (
        f"{fmt.ratio(reference / value)} {better}" if reference >= value else f"{fmt.ratio(value / reference)} {worse}"
    )


def _data_note(road: Road) -> str:
    """Which images each accuracy was measured on."""
    parts = []
    for domain in road.domains.values():
        n = f"{fmt.count(domain.n)} images" if domain.n else "its images"
        if domain.split == "test":
            parts.append(
                f"{domain.name}: the held-out test split, {n}, the same for every model (no model trained on them)"
            )
        elif domain.split == "all" and domain.labels_used is False:
            parts.append(f"{domain.name}: all {n} (its labels were never used in training)")
        elif domain.split:
            what = f"all {n}" if domain.split == "all" else f"the {domain.split} split, {n}"
            parts.append(
                f"{domain.name}: {what}" + (" (models trained on some of these images)" if domain.labels_used else "")
            )
    return "Accuracy on " + "; ".join(parts) + "." if parts else ""


def _cost_note(rows: list[dict]) -> str:
    def threads(exported: bool) -> str:
        counts = sorted(
            {
                r["model"].latency_threads
                for r in rows
                if r["model"].latency_threads and r["model"].is_export == exported
            }
        )
        return f" on {' / '.join(counts)} thread(s)" if counts else ""

    notes = [
        f"Latency: the median of single-image runs; exported files in LiteRT or onnxruntime{threads(True)}, "
        f"Keras models in TensorFlow{threads(False)}."
    ]
    notes.append(
        "MACs: multiply-accumulates of the convolution and dense layers for one image (a pruned kernel counts in full)."
    )
    borrowed = [f"`{r['model'].name}` {r['model'].macs_from}" for r in rows if r["model"].macs_from]
    if borrowed:
        notes.append("MACs of " + ", ".join(borrowed) + " (the same graph).")
    return " ".join(notes)


def _seeds_block(seeds: dict[str, Any] | None) -> str:
    """Spread over the seeds of ``seeds.json``: ``{"seeds": [...], "metrics": {name: {mean, std, values}}}``."""
    if not seeds or not isinstance(seeds.get("metrics"), dict):
        return ""
    rows = []
    for name, values in seeds["metrics"].items():
        if not isinstance(values, dict):
            continue
        shown = [fmt.metric(name, v) for v in values.get("values", [])]
        spread = (
            fmt.spread(values.get("std")) if "accuracy" in name.lower() else f"± {fmt.metric(name, values.get('std'))}"
        )
        rows.append([name, fmt.metric(name, values.get("mean")), spread, ", ".join(shown)])
    if not rows:
        return ""
    listed = ", ".join(str(s) for s in seeds.get("seeds", []))
    return f"Seeds {listed} (`seeds.json`; std: the sample standard deviation):\n\n" + _table(
        ["metric", "mean", "std", "each seed"], rows
    )


# ---------------------------------------------------------------------------- the whole road


def _road_sections(road: Road, figures_dir: Path) -> list[Section]:
    models = list(road.models.values())
    if not models or not road.target:
        return []
    placed = [m for m in models if m.acc(road.target) is not None and m.latency_ms]
    blocks: list[Any] = []
    if placed:
        figure = figures_dir / "road.png"
        info = road.domains[road.target]
        what = (
            f"all {fmt.count(info.n)} images of {road.target}"
            if info.split == "all"
            else f"the {info.split} split of {road.target} ({fmt.count(info.n)} images)"
        )
        plot_road(placed, road.target, figure, title=f"Every model of the run on {road.target} ({what})")
        left_out = [
            f"`{m.name}` "
            f"({'no latency measured' if m.acc(road.target) is not None else 'not scored on ' + road.target})"
            for m in models
            if m not in placed
        ]
        blocks.append(
            Figure(
                figure,
                f"Accuracy on {what} against batch-1 latency (log scale) of every Keras "
                "model and every exported file of the run; marker area grows with the file "
                "size. The dashed line joins the Pareto front: models no other is both faster "
                "and more accurate than." + (f" Not placed: {', '.join(left_out)}." if left_out else ""),
            )
        )
    blocks.append(
        _table(
            ["model", "kind", "made from", *road.domains, "size", "latency (batch 1)", "MACs", "params"],
            [
                [
                    f"`{m.name}`",
                    m.kind,
                    f"`{m.parent}`" if m.parent else "—",
                    *[_accuracy_cell(m, d, road) for d in road.domains],
                    fmt.size(m.bytes),
                    fmt.milliseconds(m.latency_ms),
                    fmt.macs(m.macs),
                    fmt.count(m.params),
                ]
                for m in models
            ],
        )
    )
    return [Section("The whole road", blocks)]


def plot_road(models: list[Model], domain: str, path: Path, title: str = "") -> None:
    """Accuracy on ``domain`` against batch-1 latency, marker area by file size, the front dashed;
    a legend entry per model (labels never overlap)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    biggest = max((m.bytes or 0) for m in models) or 1
    markers = "osD^vP*Xh<>p"
    points = [(m.latency_ms, m.acc(domain)) for m in models]
    for index, (model, (latency, accuracy)) in enumerate(zip(models, points)):
        area = 30 + 600 * ((model.bytes or 0) / biggest) ** 0.5
        ax.scatter(
            latency,
            accuracy * 100,
            s=area,
            alpha=0.6,
            marker=markers[index % len(markers)],
            edgecolors="black",
            linewidths=0.5,
            label=f"{model.name} ({model.kind}): {fmt.size(model.bytes)}",
        )
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] * 100 for i in front],
            "--",
            color="grey",
            linewidth=1,
            label="Pareto front",
            zorder=0,
        )
    ax.set_xscale("log")
    ax.set_xlabel("latency, batch 1, p50 (ms, log scale)")
    ax.set_ylabel(f"accuracy on {domain} (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        title="model: file size (marker area)",
        title_fontsize=7,
        markerscale=0.5,
        frameon=False,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------- cross-domain and fusion


def _cross_domain_sections(road: Road, stages: list[dict], run_dir: Path) -> list[Section]:
    sections = []
    if road.evaluations:
        domains = list(dict.fromkeys(d for _, result in road.evaluations for d in result["domains"]))
        rows = []
        for name, result in road.evaluations:
            rows.append(
                [f"`{name}`", f"`{Path(result['artifact']).name}`"]
                + [fmt.percent(result["domains"].get(d, {}).get("accuracy")) for d in domains]
                + [fmt.points(-result["max_gap"]) if result.get("max_gap") is not None else fmt.MISSING]
            )
        headers = [_domain_header(road, d) for d in domains]
        note = (
            _data_note(road) + " The first evaluate stage is the source-only baseline; the last column is "
            f"the largest drop from the first domain ({domains[0]}) to another."
        )
        sections.append(
            Section("Cross-domain accuracy", [_table(["evaluation", "model", *headers, "largest drop"], rows), note])
        )
    curves = [r for r in stages if r["type"] == "fuse" and (run_dir / r["name"] / "alpha_curve.png").is_file()]
    if curves:
        sections.append(
            Section(
                "Weight-space fusion: the α curve",
                [
                    Figure(
                        run_dir / r["name"] / "alpha_curve.png",
                        "Accuracy against α, where θ = α·θ_source + (1−α)·θ_finetuned (α = 0: the fine-tuned model, "
                        f"α = 1: the source), measured by `{r['name']}` on {_fuse_images(r)}.",
                    )
                    for r in curves
                ],
            )
        )
    return sections


def _fuse_images(row: dict) -> str:
    """Which images a fuse stage's curve scored (its own choice, not the run's held-out split)."""
    config = (row["manifest"] or {}).get("config") or {}
    split, limit = config.get("split", "all"), config.get("max_images")
    what = f"up to {fmt.count(limit)} images" if limit else "the images"
    return (
        f"{what} drawn from the {split} split of each folder"
        if split != "all"
        else f"{what} drawn from all of each folder (on the source these include training images, so compare "
        "α's with each other rather than with the tables above)"
    )


# ---------------------------------------------------------------------------- folded reference


def _folded_sections(road: Road, stages: list[dict], figures_dir: Path) -> list[Section]:
    sections = []
    metric_blocks = [_metrics_details(r) for r in stages if r["metrics"]]
    if any(metric_blocks):
        sections.append(Section("Metrics of each stage", [b for b in metric_blocks if b], folded=True))
    if road.checks:
        blocks: list[Any] = []
        for name, result in road.checks:
            rows = _pareto_rows(result)
            blocks.append(
                f"**`{name}`**: {fmt.count(result.get('n'))} images of `{Path(result['data']).name}` "
                f"({result.get('split', 'all')}); {'passed' if result.get('passed') else 'FAILED'}"
            )
            blocks.append(
                _table(
                    ["model", "format", "accuracy", "agreement", "size", "latency (batch 1)", "threads"],
                    [
                        [
                            r["name"],
                            r["format"],
                            fmt.percent(r["accuracy"]),
                            fmt.percent(r["agreement"]),
                            fmt.size(r["size"]),
                            fmt.milliseconds(r["latency_ms"]),
                            r["threads"],
                        ]
                        for r in rows
                    ],
                )
            )
        sections.append(Section("Parity checks", blocks, folded=True))
    seeds = _seeds_block(road.seeds)
    if seeds:
        sections.append(Section("Spread over seeds", [seeds], folded=True))
    confusion = _confusion_figures(road.run_dir, stages, road.evaluations, figures_dir)
    if confusion:
        sections.append(Section("Confusion matrices", confusion, folded=True))
    sections.append(
        Section(
            "Environment", [_table(["what", "value"], [[k, str(v)] for k, v in _environment().items()])], folded=True
        )
    )
    return sections


class Figure:
    def __init__(self, path: Path, caption: str):
        self.path, self.caption = Path(path), caption


def _stage_rows(run_dir: Path, order: list[str], types: dict[str, str], state: dict) -> list[dict[str, Any]]:
    rows = []
    for name in order:
        recorded = state["stages"].get(name, {})
        manifest, metrics = _read_json(run_dir / name / "manifest.json"), _read_json(run_dir / name / "metrics.json")
        parent = (manifest or {}).get("parent") or {}
        made_from = [Path(parent["path"]).name] if parent else []
        evaluated = _read_json(run_dir / name / "evaluate.json").get("artifact")
        made_from += [Path(evaluated).name] if evaluated else []
        made_from += [c["name"] for c in _read_json(run_dir / name / "check.json").get("candidates", [])]
        rows.append(
            {
                "name": name,
                "type": types.get(name, name),
                "status": recorded.get("status", "not run"),
                "seconds": recorded.get("seconds"),
                "parent": ", ".join(made_from) or "—",
                "metrics": metrics,
                "manifest": manifest,
            }
        )
    return rows


def _metrics_details(row: dict) -> str:
    scalars = [
        [key.replace("_", " "), fmt.metric(key, value)]
        for key, value in row["metrics"].items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    if not scalars:
        return ""
    return f"**`{row['name']}`** ({row['type']})\n\n" + _table(["metric", "value"], scalars)


def _pareto_rows(result: dict) -> list[dict[str, Any]]:
    def timing(latency: list[dict]) -> dict[str, Any]:
        row = batch1_row(latency)
        if row is None:
            return {"latency_ms": None, "threads": "—"}
        used = row.get("threads_used") or row.get("threads")
        return {"latency_ms": row["p50_ms"], "threads": f"{used}" if row.get("threads") else f"{used} (runtime's own)"}

    rows = [
        {
            "name": f"{p['name']} (Keras)",
            "format": "keras",
            "accuracy": p.get("accuracy"),
            "agreement": None,
            "size": p["size_bytes"],
            **timing(p.get("latency", [])),
        }
        for p in result.get("parents", [])
    ]
    rows += [
        {
            "name": c["name"],
            "format": f"{c['format']}/{c['quant']}",
            "accuracy": c["parity"]["accuracy"],
            "agreement": c["parity"]["agreement"],
            "size": c["size_bytes"],
            **timing(c.get("latency", [])),
        }
        for c in result.get("candidates", [])
    ]
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats on both (lower or equal
    cost — size or latency — and higher or equal accuracy, one strictly), ordered by cost."""
    front = [
        i
        for i, (size, acc) in enumerate(points)
        if not any(s <= size and a >= acc and (s, a) != (size, acc) for s, a in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def _confusion_figures(run_dir: Path, stages: list[dict], evaluations: list, figures_dir: Path) -> list[Any]:
    from edgexfer.evaluate.metrics import save_confusion_png

    blocks: list[Any] = []
    for row in stages:
        test = (row["metrics"] or {}).get("test")
        if isinstance(test, dict) and test.get("confusion_matrix") and row["manifest"]:
            path = figures_dir / f"confusion_{row['name']}.png"
            save_confusion_png(
                test["confusion_matrix"], row["manifest"]["label_names"], path, title=f"{row['name']}: test split"
            )
            blocks.append(
                Figure(
                    path,
                    f"Confusion matrix of `{row['name']}` on its test split (rows: true class, columns: predicted).",
                )
            )
    for name, result in evaluations:
        labels = _read_json(Path(result["artifact"]) / "manifest.json").get("label_names")
        for domain, values in result["domains"].items():
            if values.get("confusion_matrix") and labels:
                path = figures_dir / f"confusion_{name}_{domain}.png"
                save_confusion_png(values["confusion_matrix"], labels, path, title=f"{name}: {domain}")
                blocks.append(
                    Figure(
                        path,
                        f"Confusion matrix of `{Path(result['artifact']).name}` on `{domain}` "
                        f"({values.get('split', result.get('split', 'all'))}, "
                        f"{fmt.count(values.get('n'))} images; accuracy "
                        f"{fmt.percent(values['accuracy'])}).",
                    )
                )
    return blocks


def _environment() -> dict[str, Any]:
    from edgexfer.artifact import library_versions

    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu cores": os.cpu_count(),
        "usable cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    for variable in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env[variable] = os.environ.get(variable, "unset")
    env.update(library_versions())
    return env


# ---------------------------------------------------------------------------- rendering


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_markdown(title: str, sections: list[Section], run_dir: Path) -> str:
    out = [f"# edgexfer report: {title}", ""]
    for section in sections:
        if section.folded:
            out += ["<details>", f"<summary><b>{html.escape(section.title)}</b></summary>", ""]
        else:
            out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Figure):
                out += [
                    f"![{block.caption}]({block.path.relative_to(run_dir).as_posix()})",
                    "",
                    f"*{block.caption}*",
                    "",
                ]
            elif block:
                out += [block, ""]
        if section.folded:
            out += ["</details>", ""]
    return "\n".join(out)


def _markdown_to_html(text: str) -> str:
    """CommonMark with tables, by markdown-it-py (rich already depends on it). Raw HTML in the
    text is escaped, not passed through: stage names and paths come from files."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _render_html(title: str, sections: list[Section]) -> str:
    body = [f"<h1>edgexfer report: {html.escape(title)}</h1>"]
    for section in sections:
        parts = []
        for block in section.blocks:
            if isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode()
                caption = _markdown_to_html(block.caption).strip().removeprefix("<p>").removesuffix("</p>")
                parts.append(
                    f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            elif block:
                parts.append(_markdown_to_html(block))
        slug = re.sub(r"[^a-z0-9]+", "-", section.title.lower()).strip("-")
        if section.folded:
            body.append(
                f'<details id="{slug}"><summary>{html.escape(section.title)}</summary>{"".join(parts)}</details>'
            )
        else:
            body.append(f'<section id="{slug}"><h2>{html.escape(section.title)}</h2>{"".join(parts)}</section>')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222;"
        "line-height:1.4}h1{font-size:1.4em;margin:0.3em 0}h2{font-size:1.2em;margin:1em 0 0.4em}"
        "table{border-collapse:collapse;margin:0.4em 0 1em;font-size:0.92em}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right;white-space:nowrap}"
        "td:first-child,th:first-child,td:nth-child(2),th:nth-child(2)"
        "{text-align:left;white-space:normal}th{background:#f3f3f3}p{margin:0.4em 0}img{max-width:100%}"
        "figcaption{color:#555;font-size:0.9em}code{background:#f3f3f3;padding:0 3px}"
        "details{margin:0.6em 0}summary{font-weight:bold;font-size:1.1em;cursor:pointer}"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>edgexfer report: {html.escape(title)}</title><style>{style}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
