"""Run reports: ``report.md`` and a self-contained ``report.html`` (plots embedded as PNG).

A report reads only files the stages wrote (manifests, metrics, check.json, evaluate.json,
alpha curves), so it can be rebuilt at any time with ``edgexfer report RUN_DIR``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
from pathlib import Path
from typing import Any

from edgexfer.evaluate.latency import batch1_row

REPORT_DIR = "report"
# Metric names that mean "accuracy of this artifact", most specific first.
ACCURACY_KEYS = ("test_accuracy", "accuracy_after", "target_accuracy", "accuracy", "val_accuracy")


def write_report(run_dir: str | Path, *, pipeline_name: str, stage_order: list[str], stage_types: dict[str, str],
                 stopped_at: str | None = None, state: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``RUN_DIR/report.md`` and ``RUN_DIR/report.html``; returns their paths."""
    run_dir = Path(run_dir)
    state = state or json.loads((run_dir / "pipeline-state.json").read_text())
    figures_dir = run_dir / REPORT_DIR
    figures_dir.mkdir(exist_ok=True)
    sections: list[tuple[str, list[Any]]] = []  # (title, blocks); a block is str (markdown) or Figure

    status = (f"**Stopped at stage `{stopped_at}`**: {state['stages'].get(stopped_at, {}).get('error', '')}"
              if stopped_at else "All stages completed.")
    sections.append(("Run", [f"Pipeline `{pipeline_name}`, run directory `{run_dir}`.", status]))

    stages = _stage_rows(run_dir, stage_order, stage_types, state)
    sections.append(("Lineage and metrics", [_table(
        ["stage", "type", "status", "parent", "accuracy", "params", "size", "seconds"],
        [[r["name"], r["type"], r["status"], r["parent"], _fmt(r["accuracy"], ".4f"), _fmt(r["params"], ","),
          _fmt_bytes(r["size"]), _fmt(r["seconds"], ".1f")] for r in stages])]
        + [_metrics_details(r) for r in stages if r["metrics"]]))

    checks = [(name, json.loads((run_dir / name / "check.json").read_text())) for name in stage_order
              if stage_types.get(name) == "check" and (run_dir / name / "check.json").is_file()]
    if checks:
        blocks: list[Any] = []
        for name, result in checks:
            rows = _pareto_rows(result)
            blocks.append(_table(["model", "format", "accuracy", "agreement", "size", "p50 ms (batch 1)", "threads"],
                                 [[r["name"], r["format"], _fmt(r["accuracy"], ".4f"), _fmt(r["agreement"], ".4f"),
                                   _fmt_bytes(r["size"]), _fmt(r["latency_ms"], ".3f"), r["threads"]] for r in rows]))
            figure = figures_dir / f"pareto_{name}.png"
            _plot_pareto(rows, figure, title=f"{name}: {result.get('n', '?')} images of {Path(result['data']).name}")
            blocks.append(Figure(figure, f"Accuracy against file size (log scale) for `{name}`. The dashed line "
                                         "joins the Pareto-optimal models (none other is both smaller and more "
                                         "accurate); marker area grows with the batch-1 p50 latency given in the "
                                         "legend."))
        sections.append(("Accuracy, size and latency", blocks))

    evaluations = [(name, json.loads((run_dir / name / "evaluate.json").read_text())) for name in stage_order
                   if stage_types.get(name) == "evaluate" and (run_dir / name / "evaluate.json").is_file()]
    if evaluations:
        domains = list(dict.fromkeys(d for _, result in evaluations for d in result["domains"]))
        rows = []
        for name, result in evaluations:
            model_stage = Path(result["artifact"]).name
            rows.append([name, model_stage] + [_fmt(result["domains"].get(d, {}).get("accuracy"), ".4f")
                                               for d in domains] + [_fmt(result.get("max_gap"), "+.4f")])
        note = ("The first evaluate stage is the baseline (usually the source-only fine-tuned model); "
                "gap = first domain's accuracy − the others'.")
        sections.append(("Cross-domain accuracy", [_table(["evaluation", "model", *domains, "max gap"], rows), note]))

    confusion_blocks = _confusion_figures(run_dir, stages, evaluations, figures_dir)
    if confusion_blocks:
        sections.append(("Confusion matrices", confusion_blocks))

    curves = [run_dir / r["name"] / "alpha_curve.png" for r in stages
              if r["type"] == "fuse" and (run_dir / r["name"] / "alpha_curve.png").is_file()]
    if curves:
        sections.append(("Weight-space fusion: the α curve",
                         [Figure(c, "Accuracy against α, where θ = α·θ_source + (1−α)·θ_finetuned "
                                    "(α = 0: the fine-tuned model, α = 1: the source).") for c in curves]))

    sections.append(("Environment", [_table(["what", "value"], [[k, str(v)] for k, v in _environment().items()])]))

    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    md_path.write_text(_render_markdown(pipeline_name, sections, run_dir))
    html_path.write_text(_render_html(pipeline_name, sections))
    return {"report": str(md_path), "report_html": str(html_path)}


class Figure:
    def __init__(self, path: Path, caption: str):
        self.path, self.caption = Path(path), caption


def _stage_rows(run_dir: Path, order: list[str], types: dict[str, str], state: dict) -> list[dict[str, Any]]:
    rows = []
    for name in order:
        recorded = state["stages"].get(name, {})
        manifest, metrics = _read_json(run_dir / name / "manifest.json"), _read_json(run_dir / name / "metrics.json")
        parent = (manifest or {}).get("parent") or {}
        rows.append({
            "name": name, "type": types.get(name, name), "status": recorded.get("status", "not run"),
            "seconds": recorded.get("seconds"), "parent": Path(parent["path"]).name if parent else "—",
            "accuracy": next((metrics[k] for k in ACCURACY_KEYS if isinstance(metrics.get(k), (int, float))), None),
            "params": metrics.get("params") or metrics.get("student_params"),
            "size": metrics.get("size_bytes") or metrics.get("model_bytes"),
            "metrics": metrics, "manifest": manifest,
        })
    return rows


def _metrics_details(row: dict) -> str:
    scalars = [[key, _fmt(value, ".4f" if isinstance(value, float) else ",")]
               for key, value in row["metrics"].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if not scalars:
        return ""
    return f"**{row['name']}** ({row['type']})\n\n" + _table(["metric", "value"], scalars)


def _pareto_rows(result: dict) -> list[dict[str, Any]]:
    def timing(latency: list[dict]) -> dict[str, Any]:
        row = batch1_row(latency)
        if row is None:
            return {"latency_ms": None, "threads": "—"}
        used = row.get("threads_used") or row.get("threads")
        return {"latency_ms": row["p50_ms"], "threads": f"{used}" if row.get("threads") else f"{used} (runtime's own)"}

    rows = [{"name": f"{p['name']} (Keras)", "format": "keras", "accuracy": p.get("accuracy"), "agreement": None,
             "size": p["size_bytes"], **timing(p.get("latency", []))}
            for p in result.get("parents", [])]
    rows += [{"name": c["name"], "format": f"{c['format']}/{c['quant']}", "accuracy": c["parity"]["accuracy"],
              "agreement": c["parity"]["agreement"], "size": c["size_bytes"], **timing(c.get("latency", []))}
             for c in result.get("candidates", [])]
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (size, accuracy) points no other point beats on both (smaller or equal
    size and higher or equal accuracy, one strictly), ordered by size."""
    front = [i for i, (size, acc) in enumerate(points)
             if not any(s <= size and a >= acc and (s, a) != (size, acc) for s, a in points)]
    return sorted(front, key=lambda i: points[i][0])


def _plot_pareto(rows: list[dict], path: Path, title: str = "") -> None:
    """Accuracy against size; a legend entry per model (labels never overlap), the frontier dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rows = [r for r in rows if r["accuracy"] is not None]
    latencies = [r["latency_ms"] for r in rows if r["latency_ms"]]
    biggest = max(latencies) if latencies else 1.0
    markers = "osD^vP*X"
    for index, row in enumerate(rows):
        area = 40 + 400 * ((row["latency_ms"] or 0) / biggest)
        label = f"{row['name']}: {row['latency_ms']:.3g} ms" if row["latency_ms"] else row["name"]
        ax.scatter(row["size"] / 1e6, row["accuracy"], s=area, alpha=0.65, marker=markers[index % len(markers)],
                   label=label, edgecolors="black", linewidths=0.5)
    points = [(r["size"] / 1e6, r["accuracy"]) for r in rows]
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="grey", linewidth=1,
                label="Pareto front", zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("model file size (MB, log scale)")
    ax.set_ylabel("accuracy")
    low = min((a for _, a in points), default=0.0)
    high = max((a for _, a in points), default=1.0)
    pad = max(0.005, (high - low) * 0.15)
    ax.set_ylim(low - pad, min(1.0, high + pad) if high < 1.0 else 1.0 + pad / 4)
    ax.set_title(title or "accuracy vs size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", title="batch-1 p50 latency", title_fontsize=7, markerscale=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion_figures(run_dir: Path, stages: list[dict], evaluations: list, figures_dir: Path) -> list[Any]:
    from edgexfer.evaluate.metrics import save_confusion_png

    blocks: list[Any] = []
    for row in stages:
        test = (row["metrics"] or {}).get("test")
        if isinstance(test, dict) and test.get("confusion_matrix") and row["manifest"]:
            path = figures_dir / f"confusion_{row['name']}.png"
            save_confusion_png(test["confusion_matrix"], row["manifest"]["label_names"], path,
                               title=f"{row['name']}: test split")
            blocks.append(Figure(path, f"Confusion matrix of `{row['name']}` on its test split "
                                       "(rows: true class, columns: predicted)."))
    for name, result in evaluations:
        labels = _read_json(Path(result["artifact"]) / "manifest.json").get("label_names")
        for domain, values in result["domains"].items():
            if values.get("confusion_matrix") and labels:
                path = figures_dir / f"confusion_{name}_{domain}.png"
                save_confusion_png(values["confusion_matrix"], labels, path, title=f"{name}: {domain}")
                blocks.append(Figure(path, f"Confusion matrix of `{Path(result['artifact']).name}` on `{domain}` "
                                           f"(accuracy {values['accuracy']:.4f})."))
    return blocks


def _environment() -> dict[str, Any]:
    from edgexfer.artifact import library_versions

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
           "cpu cores": os.cpu_count(), "usable cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    for variable in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env[variable] = os.environ.get(variable, "unset")
    env.update(library_versions())
    return env


# ---------------------------------------------------------------------------- rendering

def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _render_markdown(title: str, sections, run_dir: Path) -> str:
    out = [f"# edgexfer report: {title}", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, Figure):
                out += [f"![{block.caption}]({block.path.relative_to(run_dir).as_posix()})", "", f"*{block.caption}*", ""]
            elif block:
                out += [block, ""]
    return "\n".join(out)


def _render_html(title: str, sections) -> str:
    body = [f"<h1>edgexfer report: {html.escape(title)}</h1>"]
    for heading, blocks in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        for block in blocks:
            if isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
            elif block:
                body.append(_markdown_block_to_html(block))
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}figcaption{color:#555;font-size:0.9em}code{background:#f3f3f3;padding:0 3px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgexfer report: {html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _markdown_block_to_html(block: str) -> str:
    """The small markdown subset this module writes: tables, **bold** and `code` paragraphs."""
    parts, table = [], []
    for line in block.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            header, *rows = [r for r in table if not r.startswith("|---")]
            cells = lambda r: [c.strip().replace("\\|", "|") for c in r.strip("|").split(" | ")]  # noqa: E731
            parts.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells(header)) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells(r)) + "</tr>" for r in rows)
                         + "</table>")
            table = []
        if line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    return "".join(parts)


def _inline(text: str) -> str:
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _fmt(value: Any, spec: str) -> str:
    if value is None or isinstance(value, bool):
        return "—"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _fmt_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value / 1e6:.2f} MB" if value >= 1e5 else f"{value / 1e3:.1f} kB"


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
