"""What a run's report says, section by section, the answer first: the summary (what is
deployed, how accurate on each domain, how large, how fast, against the teacher and the
source-only baseline), the whole road, cross-domain accuracy and the fusion curve, then
folded reference material (each stage's metrics, checks, seeds, confusion matrices, the
environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgexfer.evaluate import formatting as fmt
from edgexfer.evaluate.environment import environment
from edgexfer.evaluate.formatting import markdown_table
from edgexfer.evaluate.report.collect import check_rows
from edgexfer.evaluate.report.plots import confusion_figures, plot_road
from edgexfer.evaluate.report.render import Figure, Section
from edgexfer.evaluate.road import Model, Road

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


def summary_section(road: Road, stages: list[dict], stopped_at: str | None, state: dict, run_dir: Path) -> Section:
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
            markdown_table(
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
                markdown_table(
                    ["deployed", "against", *[f"Δ {d}" for d in domains], "size", "latency", "MACs"], comparisons
                )
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
    return f"Seeds {listed} (`seeds.json`; std: the sample standard deviation):\n\n" + markdown_table(
        ["metric", "mean", "std", "each seed"], rows
    )


def lineage_section(stages: list[dict]) -> Section:
    """Each stage: its type, status, what it was made from, how long it took."""
    rows = [[f"`{r['name']}`", r["type"], r["status"], r["parent"], fmt.seconds(r["seconds"])] for r in stages]
    return Section("Lineage", [markdown_table(["stage", "type", "status", "made from", "time"], rows)])


# ---------------------------------------------------------------------------- the whole road


def road_sections(road: Road, figures_dir: Path) -> list[Section]:
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
                "size; the legend gives each one's size and MACs per image. The dashed line "
                "joins the Pareto front: models no other is both faster and more accurate than."
                + (f" Not placed: {', '.join(left_out)}." if left_out else ""),
            )
        )
    blocks.append(
        markdown_table(
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


# ---------------------------------------------------------------------------- cross-domain and fusion


def cross_domain_sections(road: Road, stages: list[dict], run_dir: Path) -> list[Section]:
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
            Section(
                "Cross-domain accuracy", [markdown_table(["evaluation", "model", *headers, "largest drop"], rows), note]
            )
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


def folded_sections(road: Road, stages: list[dict], figures_dir: Path) -> list[Section]:
    sections = []
    metric_blocks = [_metrics_details(r) for r in stages if r["metrics"]]
    if any(metric_blocks):
        sections.append(Section("Metrics of each stage", [b for b in metric_blocks if b], folded=True))
    if road.checks:
        blocks: list[Any] = []
        for name, result in road.checks:
            rows = check_rows(result)
            blocks.append(
                f"**`{name}`**: {fmt.count(result.get('n'))} images of `{Path(result['data']).name}` "
                f"({result.get('split', 'all')}); {'passed' if result.get('passed') else 'FAILED'}"
            )
            blocks.append(
                markdown_table(
                    ["model", "format", "accuracy", "agreement", "size", "latency (batch 1)", "MACs", "threads"],
                    [
                        [
                            r["name"],
                            r["format"],
                            fmt.percent(r["accuracy"]),
                            fmt.percent(r["agreement"]),
                            fmt.size(r["size"]),
                            fmt.milliseconds(r["latency_ms"]),
                            fmt.macs(r["macs"]),
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
    confusion = confusion_figures(road.run_dir, stages, road.evaluations, figures_dir)
    if confusion:
        sections.append(Section("Confusion matrices", confusion, folded=True))
    sections.append(
        Section(
            "Environment",
            [markdown_table(["what", "value"], [[k, str(v)] for k, v in environment().items()])],
            folded=True,
        )
    )
    return sections


def _metrics_details(row: dict) -> str:
    scalars = [
        [key.replace("_", " "), fmt.metric(key, value)]
        for key, value in row["metrics"].items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    if not scalars:
        return ""
    return f"**`{row['name']}`** ({row['type']})\n\n" + markdown_table(["metric", "value"], scalars)
