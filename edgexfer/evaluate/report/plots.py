"""The report's figures: every model on the accuracy-latency plane with its Pareto front, and
the confusion matrices of the stages and evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgexfer.evaluate import formatting as fmt
from edgexfer.evaluate.report.collect import read_json
from edgexfer.evaluate.report.render import Figure
from edgexfer.evaluate.road import Model


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
            label=f"{model.name} ({model.kind}): {fmt.size(model.bytes)}"
            + (f", {fmt.macs(model.macs)} MACs" if model.macs else ""),
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
        title="model: file size (marker area), MACs per image",
        title_fontsize=7,
        markerscale=0.5,
        frameon=False,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats on both (lower or equal
    cost — size or latency — and higher or equal accuracy, one strictly), ordered by cost."""
    front = [
        i
        for i, (size, acc) in enumerate(points)
        if not any(s <= size and a >= acc and (s, a) != (size, acc) for s, a in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def confusion_figures(run_dir: Path, stages: list[dict], evaluations: list, figures_dir: Path) -> list[Any]:
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
        labels = read_json(Path(result["artifact"]) / "manifest.json").get("label_names")
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
