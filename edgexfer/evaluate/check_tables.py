"""The tables of ``check`` and ``benchmark``: rows for the terminal (the CLI renders them with rich)
and the Markdown of ``check.md``/``benchmark.md``. Reads the result dicts that
``evaluate.check`` measures; measures nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgexfer.evaluate.formatting import markdown_table

_RUNTIME_SHORT = {
    "litert-xnnpack": "litert",
    "onnxruntime-cpu": "ort-cpu",
    "onnxruntime-cuda": "ort-cuda",
    "keras-tensorflow": "keras",
    "saved_model-tensorflow": "tf",
}

LATENCY_HEADER = (
    "model",
    "runtime",
    "device",
    "threads",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "images/s",
    "×Keras p50",
)
PARITY_HEADER = ("model", "format", "accuracy", "Δacc", "agreement", "max|Δp|", "mean|Δp|", "size", "gate")
PARITY_HEADER_SHORT = ("model", "format", "acc", "Δacc", "agree", "max|Δp|", "mean|Δp|", "size", "gate")

BENCHMARK_HEADER = (
    "model",
    "format",
    "runtime",
    "device",
    "threads",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "images/s",
    "size",
    "MACs",
)

COMPUTE_HEADER = ("model", "runtime", "threads", "batch", "MACs/image", "GMAC/s", "peak GMAC/s", "of peak")
COMPUTE_NOTE = (
    "GMAC/s: multiply-accumulates per image × batch / p50 latency. Peak: this machine's float32 "
    "matrix multiply (numpy BLAS) on the same thread count, measured in this process; small models "
    "at batch 1 reach a small fraction of it (layers too small to keep the vector units busy)."
)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


def size_text(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _ms(value: float | None) -> str:
    """Milliseconds with 3 significant digits (tiny models run in microseconds)."""
    if value is None or value != value:
        return "—"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def latency_table_rows(rows: Sequence[dict[str, Any]], short: bool = False) -> list[list[str]]:
    """Latency rows as strings: model, runtime, device, threads, batch, p50, p90, p99, images/s, ×Keras
    (``short``: abbreviated runtime names, for a terminal; else the runtime names its provider)."""
    out = []
    for row in rows:
        threads = (
            "—"
            if row.get("threads_used") is None
            else (f"{row['threads_used']}" + ("*" if row.get("threads") == 0 else ""))
        )
        runtime = _RUNTIME_SHORT.get(row["runtime"], row["runtime"]) if short else row["runtime"]
        if not short and row.get("provider"):
            runtime += f" ({row['provider']})"
        speedup = row.get("speedup_vs_keras")
        out.append(
            [
                row["model"],
                runtime,
                row.get("device", "?"),
                threads,
                str(row["batch"]),
                _ms(row["p50_ms"]),
                _ms(row["p90_ms"]),
                _ms(row["p99_ms"]),
                f"{row['images_per_second']:,.0f}",
                f"{speedup:.2f}×" if speedup else "—",
            ]
        )
    return out


def compute_table_rows(rows: Sequence[dict[str, Any]], short: bool = False) -> list[list[str]]:
    """The latency rows that have MACs (``evaluate.peak.achieved``): model, runtime, threads,
    batch, MACs per image, achieved GMAC/s, the matmul peak on those threads, the fraction."""
    from edgexfer.evaluate.formatting import macs

    out = []
    for row, text in zip(rows, latency_table_rows(rows, short=short)):
        if row.get("gmacs") is None:
            continue
        fraction = row.get("fraction_of_peak")
        out.append(
            [
                text[0],
                text[1],
                text[3],
                text[4],
                macs(row.get("macs")),
                f"{row['gmacs']:.3g}",
                _fmt(row.get("peak_gmacs"), 1),
                f"{fraction:.1%}" if fraction is not None else "—",
            ]
        )
    return out


def _compute_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    table = compute_table_rows(rows)
    return ["## Compute", "", COMPUTE_NOTE, "", markdown_table(COMPUTE_HEADER, table), ""] if table else []


def parity_table_rows(result: dict[str, Any], short: bool = False) -> list[list[str]]:
    """One row per Keras parent and per candidate: model, format/quant, accuracy, Δacc against
    the parent, agreement, max and mean |Δp|, size (and ratio to the parent), gate with the
    failure reasons (``short``: for a terminal; no ratio, no reasons)."""
    rows = []
    for parent in result["parents"]:
        rows.append(
            [
                f"{parent['name']} (Keras)",
                "keras",
                _fmt(parent["accuracy"]),
                "—",
                "—",
                "—",
                "—",
                size_text(parent["size_bytes"]),
                "—",
            ]
        )
    for row in result["candidates"]:
        p = row["parity"]
        if row.get("reference"):
            gate = "reference"
        elif not result["gated"]:
            gate = "—"
        elif row["passed"]:
            gate = "PASS"
        else:
            gate = "FAIL" + ("" if short else ": " + "; ".join(row["failures"]))
        delta = p["accuracy"] - p["reference_accuracy"] + 0.0  # + 0.0: no "-0.0000"
        ratio = f" ({row['size_ratio']:.2f}×)" if row.get("size_ratio") is not None and not short else ""
        rows.append(
            [
                row["name"],
                f"{row['format']}/{row['quant']}",
                _fmt(p["accuracy"]),
                f"{delta:+.4f}" if abs(delta) >= 5e-5 else "0",
                _fmt(p["agreement"]),
                f"{p['max_abs_diff']:.1e}",
                f"{p['mean_abs_diff']:.1e}",
                size_text(row["size_bytes"]) + ratio,
                gate,
            ]
        )
    return rows


def per_class_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["class", "n"] + [row["name"] for row in result["candidates"]]
    rows = []
    for name in result["label_names"]:
        first = result["candidates"][0]["parity"]["per_class"][name]
        rows.append(
            [name, str(first["n"])]
            + [_fmt(row["parity"]["per_class"][name]["agreement"]) for row in result["candidates"]]
        )
    return header, rows


def render_check_markdown(result: dict[str, Any]) -> str:
    thresholds = result["thresholds"]
    status = (
        ("PASSED" if result["passed"] else f"FAILED ({', '.join(result['failed'])})")
        if result["gated"]
        else "no gate (pass --min-agreement / --max-acc-drop)"
    )
    lines = [
        f"# edgexfer check — {status}",
        "",
        f"Test data: `{result['data']}` ({result['split']}, {result['n']} images, "
        f"{len(result['label_names'])} classes). Thresholds: min agreement "
        f"{_fmt(thresholds['min_agreement'])}, max accuracy drop {_fmt(thresholds['max_acc_drop'])}.",
        "",
        "## Parity with the Keras parent"
        if result.get("reference", {}).get("kind", "keras") == "keras"
        else f"## Parity with {result['reference']['name']} (no Keras parent: {result['reference']['why']})",
        "",
        "Δacc: accuracy minus the Keras parent's; agreement: fraction of images with the parent's "
        "top-1 class; |Δp|: absolute difference of the probabilities; size: bytes on disk (× the parent's).",
        "",
        markdown_table(PARITY_HEADER, parity_table_rows(result)),
        "",
    ]
    header, rows = per_class_rows(result)
    lines += ["## Per-class top-1 agreement (over each true class)", "", markdown_table(header, rows), ""]
    latency_rows = [r for row in result["parents"] for r in row["latency"]] + [
        r for row in result["candidates"] for r in row["latency"]
    ]
    if latency_rows:
        settings = result["latency_settings"]
        lines += [
            "## Latency",
            "",
            f"{settings['warmup']} warm-up runs, then up to {settings['runs']} timed runs per row "
            f"(time.perf_counter); {settings['cpu_count']} CPUs on this machine. Compare rows of this "
            "report with each other, not with other runs. Threads marked * are all usable cores "
            "(--threads 0).",
            "",
            markdown_table(LATENCY_HEADER, latency_table_rows(latency_rows)),
            "",
        ]
        lines += _compute_markdown(latency_rows)
    warnings = [f"{row['name']}: {w}" for row in result["candidates"] for w in row["warnings"]]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    lines += (
        ["## Lineage", ""]
        + [
            f"- `{row['name']}` ({row['artifact']}) ← Keras `{row['parent']['path']}` ({row['parent']['stage']})"
            if row.get("parent")
            else f"- `{row['name']}` ({row['artifact']}): Keras parent not loaded"
            for row in result["candidates"]
        ]
        + [""]
    )
    gpu_rows = [row for row in result["candidates"] if row.get("parity_vs_cpu")]
    if gpu_rows:
        lines += [
            "## GPU session against the CPU session of the same file",
            "",
            markdown_table(
                ("model", "provider", "device", "agreement", "max|Δp|", "mean|Δp|"),
                [
                    [
                        row["name"],
                        row["placement"]["provider"],
                        row["placement"]["device"],
                        _fmt(row["parity_vs_cpu"]["agreement"]),
                        f"{row['parity_vs_cpu']['max_abs_diff']:.1e}",
                        f"{row['parity_vs_cpu']['mean_abs_diff']:.1e}",
                    ]
                    for row in gpu_rows
                ],
            ),
            "",
        ]
    return "\n".join(lines)


def benchmark_table_rows(result: dict[str, Any], short: bool = False) -> list[list[str]]:
    from edgexfer.evaluate.formatting import macs

    counted = {size["model"]: size.get("macs") for size in result.get("sizes", [])}
    out = []
    for row, text in zip(result["rows"], latency_table_rows(result["rows"], short=short)):
        per_image = row.get("macs") or counted.get(row["model"])
        out.append(
            [text[0], f"{row['format']}/{row['quant']}", *text[1:9], size_text(row["size_bytes"]), macs(per_image)]
        )
    return out


def render_benchmark_markdown(result: dict[str, Any]) -> str:
    settings = result["latency_settings"]
    lines = [
        "# edgexfer benchmark",
        "",
        f"{settings['warmup']} warm-up runs, then up to {settings['runs']} timed runs per row "
        f"(time.perf_counter), random input; {settings['cpu_count']} CPUs on this machine "
        f"({result['environment']['processor']}). Throughput is images per second at the median (p50) latency.",
        "",
        markdown_table(BENCHMARK_HEADER, benchmark_table_rows(result)),
        "",
        *_compute_markdown(result["rows"]),
        "## Size",
        "",
        markdown_table(
            ("model", "format", "quant", "bytes", "gzip bytes"),
            [
                [s["model"], s["format"], s["quant"], f"{s['size_bytes']:,}", f"{s['gzip_bytes']:,}"]
                for s in result["sizes"]
            ],
        ),
        "",
    ]
    return "\n".join(lines)
