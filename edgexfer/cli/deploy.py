"""CLI commands of the deploy half: ``export``, ``check``, ``predict``, ``benchmark``.

Thin: parse options, call the API, render rich tables. Imports stay inside the commands so
``edgexfer predict`` never imports TensorFlow (only ``edgexfer.export.formats`` is read at
registration, for the help text; it imports no TensorFlow).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgexfer.evaluate.latency import DEFAULT_BATCH, DEFAULT_RUNS, DEFAULT_WARMUP


def _formats_help() -> str:
    from edgexfer.export.formats import FORMATS

    return "; ".join(f"{name} (--quant {'|'.join(row.quant_modes)})" for name, row in FORMATS.items())


def _quant_help() -> str:
    from edgexfer.export.formats import QUANT_MODES

    return (
        f"{' | '.join(QUANT_MODES)}; which the format allows is listed under --format. Default: what "
        "the artifact's quantize stage chose (PTQ type; int8 for QAT), else none"
    )


_CHECK_HELP = (
    "Parity with the Keras parent, size and latency of exported models; a gate with thresholds.\n\n"
    "Parity: accuracy, top-1 agreement, max/mean |Δp| and per-class agreement against the nearest Keras "
    "model in each artifact's lineage. Latency: LiteRT (XNNPACK) and onnxruntime (CPU; CUDA where "
    "available) at batch 1 and N per thread count; the Keras parent is the float baseline (TensorFlow "
    "runs with the first --threads count). With --min-agreement / --max-acc-drop it is a gate: exit code "
    "3 when a model fails (check.json and check.md are written first)."
)


_DEVICE_HELP = (
    "cpu | cuda | auto: where onnxruntime runs .onnx models. cuda must really run on CUDA (checked "
    "after the session is built; an error says why if not, never a CPU number; needs "
    "edgexfer[gpu]); auto: CUDA where it starts, plus the CPU. .tflite runs on the CPU (LiteRT)."
)


def _consoles():
    from edgexfer.cli.main import console, err_console

    return console, err_console


def _log(message: str) -> None:
    _consoles()[1].print(f"[dim]{message}[/dim]", highlight=False)


def _bytes(value) -> str:
    from edgexfer.evaluate.check_tables import size_text as fmt

    return fmt(value)


def register(app: typer.Typer) -> None:
    """Add the export, check, predict and benchmark commands to ``app``."""

    @app.command("export")
    def export_command(
        artifact: Path = typer.Argument(..., help="A Keras artifact (finetune, distill, prune, quantize …)."),
        fmt: str = typer.Option(..., "--format", "-f", help=f"Export format: {_formats_help()}."),
        quant: Optional[str] = typer.Option(None, "--quant", "-q", help=_quant_help()),
        out: Path = typer.Option(..., "--out", "-o", help="Export artifact directory to write."),
        calibration_data: Optional[Path] = typer.Option(
            None,
            "--calibration-data",
            help="int8: image folder of target-domain images with the model's classes "
            "(default: the artifact's stored calibration set, else its dataset's train split).",
        ),
        calibration_images: int = typer.Option(
            300, "--calibration-images", help="int8: at most this many calibration images (classes in proportion)."
        ),
        opset: int = typer.Option(15, "--opset", help="ONNX opset (13–17)."),
        bundle: Optional[Path] = typer.Option(
            None,
            "--bundle",
            help="Also write a deploy bundle to this new "
            "folder: model, labels, README with the preprocessing, and a "
            "minimal example program (see `edgexfer bundle`).",
        ),
        io_type: Optional[str] = typer.Option(
            None,
            "--io-type",
            help="tflite input/output type: uint8 (default for int8: what MediaPipe Tasks "
            "and the Task Library accept; raw pixels in), int8, or float32.",
        ),
        gray_input: bool = typer.Option(
            False,
            "--gray-input",
            help="The device's images are grayscale (X-rays, digits, scans): average the first convolution's "
            "colour channels, exact on gray images, so int8 cannot break filters whose colours cancel.",
        ),
    ) -> None:
        """Export a Keras artifact to TFLite / ONNX / SavedModel, labels and preprocessing embedded."""
        from edgexfer import api
        from edgexfer.export.results import ExportResult

        console, _ = _consoles()
        exported = api.export(
            artifact,
            out,
            fmt,
            quant,
            calibration_data=calibration_data,
            calibration_images=calibration_images,
            opset=opset,
            log=_log,
            io_type=io_type,
            gray_input=gray_input,
        )
        _render_export(ExportResult.of(exported))
        if bundle is not None:
            console.print(f"deploy bundle: {api.bundle(exported.path, bundle)}")

    @app.command("bundle")
    def bundle_command(
        artifact: Path = typer.Argument(..., help="An export artifact (.tflite / .onnx / tflite-micro)."),
        dest: Path = typer.Argument(..., help="New folder to write the bundle to."),
    ) -> None:
        """A deploy bundle of an exported model: the model, labels.txt, preprocessing.json, a README with the
        preprocessing in words and numbers, and predict.py, a minimal example using only numpy, Pillow and
        the runtime. Needs no TensorFlow."""
        from edgexfer import api

        console, _ = _consoles()
        console.print(f"deploy bundle: {api.bundle(artifact, dest)}")

    @app.command(
        "check",
        help=_CHECK_HELP,
        short_help="Parity with the Keras parent, size and latency of exported models; a gate with thresholds.",
    )
    def check_command(
        artifacts: list[Path] = typer.Argument(..., help="Export artifacts (the --out of edgexfer export)."),
        data: Path = typer.Option(..., "--data", "-d", help="Labelled test image folder with the models' classes."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Where check.json and check.md go (default: <first artifact>/../check)."
        ),
        split: str = typer.Option("all", help="all | train | val | test of the folder (all for a test folder)."),
        min_agreement: Optional[float] = typer.Option(
            None, "--min-agreement", help="Gate: least top-1 agreement with the Keras parent, e.g. 0.99."
        ),
        max_acc_drop: Optional[float] = typer.Option(
            None, "--max-acc-drop", help="Gate: most accuracy lost against the Keras parent, e.g. 0.01."
        ),
        threads: str = typer.Option("1", "--threads", help="Thread counts to time, comma-separated; 0 = all cores."),
        batch_size: int = typer.Option(
            DEFAULT_BATCH, "--batch-size", help="Batch N of the batched latency (batch 1 is always timed)."
        ),
        runs: int = typer.Option(DEFAULT_RUNS, "--runs", help="Timed runs per latency row."),
        warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", help="Untimed warm-up runs per latency row."),
        latency: bool = typer.Option(
            True, "--latency/--no-latency", help="Time the models (parity only with --no-latency)."
        ),
        max_images: Optional[int] = typer.Option(None, "--max-images", help="Check on a stratified subset."),
        strict: bool = typer.Option(False, "--strict", help="Corrupt image files are an error."),
        device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    ) -> None:
        from edgexfer import api
        from edgexfer.evaluate.check import gate_error
        from edgexfer.evaluate.latency import LatencySettings, parse_threads

        settings = LatencySettings(warmup=warmup, runs=runs, batch_size=batch_size, threads=parse_threads(threads))
        result = api.check(
            artifacts,
            data,
            out=out,
            split=split,
            min_agreement=min_agreement,
            max_acc_drop=max_acc_drop,
            latency=settings,
            measure_latency=latency,
            max_images=max_images,
            strict=strict,
            log=_log,
            device=device,
        )
        from edgexfer.evaluate.results import CheckResult

        _render_check(CheckResult.of(result))
        error = gate_error(result)
        if error is not None:
            raise error

    @app.command("predict")
    def predict_command(
        model: Path = typer.Argument(..., help="A .tflite/.onnx file or an export artifact directory."),
        inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
        top_k: int = typer.Option(3, "--top-k", "-k", help="How many classes to show per image."),
        as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON on stdout."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per inference batch."),
        threads: Optional[int] = typer.Option(
            None,
            "--threads",
            help="Runtime threads; 0 = all cores, as in check and benchmark (default: the runtime's).",
        ),
    ) -> None:
        """Classify images on the on-device runtime (LiteRT / onnxruntime; no TensorFlow)."""
        from edgexfer import api
        from edgexfer.errors import ConfigError
        from edgexfer.runtime.predict import PredictionRun

        if threads is not None and threads < 0:
            raise ConfigError(f"--threads {threads} is invalid; use a count of at least 1, or 0 for all cores")
        console, err_console = _consoles()
        progress = _progress(err_console)
        task = None

        def on_batch(done: int, total: int) -> None:
            nonlocal task
            if progress is None:
                return
            if task is None:
                progress.start()
                task = progress.add_task("predicting", total=total)
            progress.update(task, completed=done)

        try:
            result = api.predict(
                model, inputs, top_k=top_k, batch_size=batch_size, num_threads=threads, on_batch=on_batch
            )
        finally:
            if progress is not None and task is not None:
                progress.stop()
        if as_json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return
        run = PredictionRun.of(result)
        table = Table(title=f"{run.model} ({run.backend}, {len(run.predictions)} images)")
        table.add_column("image", overflow="fold")
        table.add_column("class", style="bold")
        table.add_column("p", justify="right")
        table.add_column(f"top {min(top_k, len(run.labels))}")
        for prediction in run.predictions:
            table.add_row(
                prediction.path,
                prediction.label,
                f"{prediction.score:.4f}",
                ", ".join(f"{label} {score:.3f}" for label, score in prediction.top_k),
            )
        console.print(table)

    @app.command("benchmark")
    def benchmark_command(
        models: list[Path] = typer.Argument(
            ..., help=".tflite/.onnx files or artifact directories (Keras artifacts are timed in TensorFlow)."
        ),
        threads: str = typer.Option(
            "1", "--threads", help="Thread counts, comma-separated; 0 = all cores, e.g. 1,2,0."
        ),
        batch_size: int = typer.Option(
            DEFAULT_BATCH, "--batch-size", help="Batch N for throughput (batch 1 is always timed)."
        ),
        runs: int = typer.Option(DEFAULT_RUNS, "--runs", help="Timed runs per row."),
        warmup: int = typer.Option(DEFAULT_WARMUP, "--warmup", help="Untimed warm-up runs per row."),
        out: Optional[Path] = typer.Option(
            None,
            "--out",
            "-o",
            help="Where benchmark.json and benchmark.md go (default: <first model's artifact>/../benchmark).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
        device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    ) -> None:
        """Latency (p50/p90/p99), throughput (images/s at batch N) and size across formats and threads."""
        from edgexfer import api
        from edgexfer.evaluate.check_tables import BENCHMARK_HEADER, benchmark_table_rows
        from edgexfer.evaluate.latency import LatencySettings, parse_threads
        from edgexfer.evaluate.results import BenchmarkResult

        console, _ = _consoles()
        settings = LatencySettings(warmup=warmup, runs=runs, batch_size=batch_size, threads=parse_threads(threads))
        result = api.benchmark(models, out=out, latency=settings, log=_log, device=device)
        if as_json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return
        bench = BenchmarkResult.of(result)
        table = _table(
            f"benchmark ({settings.runs} runs after {settings.warmup} warm-up; "
            f"{bench.cpus_usable} CPUs usable; * = all cores)",
            BENCHMARK_HEADER,
            left=("model", "format", "runtime"),
            first_width=_longest(bench.models),
        )
        for row in benchmark_table_rows(bench.raw, short=True):
            table.add_row(*row)
        _print(table)
        _print_compute(bench.raw["rows"])
        console.print(f"report: {bench.markdown_path}")


def _render_export(result) -> None:
    console, _ = _consoles()
    table = Table(title=f"export {result.format} {result.quant} → {result.path}")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("model file", str(result.model_path))
    table.add_row("size", f"{result.size_bytes:,} bytes (gzip {result.gzip_bytes:,})")
    if result.size_ratio is not None:
        table.add_row("size vs Keras", f"{result.size_ratio:.3f}×")
    if result.macs is not None:
        from edgexfer.evaluate.formatting import macs

        table.add_row("MACs per image", f"{macs(result.macs)} ({result.macs:,} multiply-accumulates)")
    table.add_row("conversion", f"{result.conversion_seconds:.1f} s")
    if result.calibration_images:
        table.add_row("calibration", f"{result.calibration_images} images from {result.calibration_source or '?'}")
    for key, value in result.io_quantization.items():
        table.add_row(key, json.dumps(value))
    for name, value in (
        ("fp32 tensor count", result.fp32_tensor_count),
        ("fp32 weight count", result.fp32_weight_count),
    ):
        if value is not None:
            table.add_row(name, str(value))
    if result.tensor_arena_bytes is not None:
        table.add_row(
            "tensor arena",
            f"{result.tensor_arena_bytes:,} bytes (estimate; model.c, model.h written next to the model)",
        )
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def _print_compute(latency_rows) -> None:
    """The achieved GMAC/s of each latency row next to this machine's matmul peak."""
    from edgexfer.evaluate.check_tables import COMPUTE_HEADER, compute_table_rows

    rows = compute_table_rows(latency_rows, short=True)
    if rows:
        table = _table(
            "compute (MACs × batch / p50, against a float32 matmul on the same threads)",
            COMPUTE_HEADER,
            left=("model", "runtime"),
            first_width=_longest([r[0] for r in rows]),
        )
        for row in rows:
            table.add_row(*row)
        _print(table)


def _table(title: str, header, left=("model",), first_width: int = 12) -> Table:
    """A compact table (no vertical rules) whose first column folds long names."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for index, column in enumerate(header):
        if index == 0:
            table.add_column(column, overflow="fold", min_width=min(max(first_width, len(column)), 18))
        else:
            table.add_column(column, justify="left" if column in left else "right", no_wrap=True)
    return table


def _print(table: Table) -> None:
    """Print a wide table: into a file or pipe at 120 columns (rich would squeeze it into 80);
    at a narrow terminal with one space between columns."""
    console, _ = _consoles()
    if not console.is_terminal:
        from rich.console import Console

        Console(file=console.file, width=max(console.width, 120), color_system=None).print(table)
        return
    if console.width < 110:
        table.padding = (0, 0)
    console.print(table)


def _longest(names) -> int:
    return max((len(str(n)) for n in names), default=8)


def _progress(err_console):
    """A rich progress bar on stderr when it is a terminal (stdout stays clean for --json)."""
    if not err_console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def _render_check(check) -> None:
    from edgexfer.evaluate.check_tables import (
        LATENCY_HEADER,
        PARITY_HEADER_SHORT,
        latency_table_rows,
        parity_table_rows,
        per_class_rows,
    )

    console, _ = _consoles()
    if check.gated:
        status = "[green]PASSED[/green]" if check.passed else f"[red]FAILED[/red]: {', '.join(check.failed)}"
    else:
        status = "no gate"
    table = _table(
        f"check on {check.data} ({check.split}, n={check.n}) — {status}",
        PARITY_HEADER_SHORT,
        left=("model", "format", "gate"),
        first_width=_longest([c.name for c in check.candidates]),
    )
    for row in parity_table_rows(check.raw, short=True):
        table.add_row(*row, style="red" if row[-1] == "FAIL" else None)
    _print(table)
    for candidate in check.candidates:
        if not candidate.passed:
            console.print(f"[red]FAIL[/red] {candidate.name}: {'; '.join(candidate.failures)}", highlight=False)
    if not check.reference_is_keras:
        console.print(f"[yellow]note:[/yellow] {check.reference_note}", highlight=False)
    if check.class_count <= 30:
        header, rows = per_class_rows(check.raw)
        against = "the Keras parent" if check.reference_is_keras else check.reference_name
        per_class = _table(f"per-class top-1 agreement with {against}", header, left=("class",))
        for row in rows:
            per_class.add_row(*row)
        _print(per_class)
    if check.latency_rows:
        table = _table(
            "latency (ms; compare within this table; * = all cores)",
            LATENCY_HEADER,
            left=("model", "runtime"),
            first_width=_longest([r["model"] for r in check.latency_rows]),
        )
        for row in latency_table_rows(list(check.latency_rows), short=True):
            table.add_row(*row)
        _print(table)
        _print_compute(list(check.latency_rows))
    for candidate in check.candidates:
        for warning in candidate.warnings:
            console.print(f"[yellow]warning:[/yellow] {candidate.name}: {warning}", highlight=False)
    console.print(f"report: {check.json_path}, {check.markdown_path}")
