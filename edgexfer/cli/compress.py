"""CLI commands of the compression stages: ``distill``, ``prune``, ``quantize``.

Thin like ``edgexfer.cli``: parse options (shared ones from ``edgexfer.cli.options``) → build
a config → call ``edgexfer.api`` → render the stage's typed result
(``edgexfer.compress.results``). Registered through ``edgexfer.cli.main._COMMAND_MODULES``;
errors are ``EdgexferError``s that ``edgexfer.cli.main`` turns into one red line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from edgexfer.cli import options
from edgexfer.cli.options import config_help as _help
from edgexfer.compress.config import DistillConfig, PruneConfig, QuantizeConfig
from edgexfer.compress.results import DistillResult, PruneResult, QatPreflight, QuantizeResult
from edgexfer.errors import ConfigError, ExportError


def _console():
    """The CLI's one console (``edgexfer.cli.main`` registers this module, so it is imported late)."""
    from edgexfer.cli.main import console

    return console


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _before_after(title: str, rows: list[tuple[str, Any, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for name, before, after in rows:
        table.add_row(name, _fmt(before), _fmt(after))
    return table


def distill(
    teacher: Path = typer.Argument(..., help="The teacher: a finetune (or other Keras) artifact."),
    data: Optional[Path] = typer.Argument(
        None,
        help="Image folder with the teacher's classes. Leave it out to learn from --unlabelled images "
        "alone, reading no label (e.g. after adapt --method shot).",
    ),
    out: options.Out = ...,
    student: Optional[str] = typer.Option(
        None, help="Student backbone, e.g. cnn_small, mobilenet_v2, efficientnet_lite0 (see `edgexfer backbones`)."
    ),
    student_weights: Optional[str] = typer.Option(
        None, help="imagenet | none | PATH (default: imagenet where the backbone has it, else none)"
    ),
    student_width: Optional[float] = typer.Option(None, help="Student width multiplier, e.g. 0.35 for mobilenet_v2."),
    student_img_size: Optional[int] = typer.Option(None, help="Student input size (default: the teacher's)."),
    temperature: Optional[float] = typer.Option(None, help=_help(DistillConfig, "temperature")),
    alpha: Optional[float] = typer.Option(None, help=_help(DistillConfig, "alpha")),
    feature_weight: Optional[float] = typer.Option(None, help=_help(DistillConfig, "feature_weight")),
    baseline: Optional[bool] = typer.Option(
        None,
        "--baseline/--no-baseline",
        help="Also train the same student without distillation, to measure the gain (default: off)",
    ),
    unlabelled: Optional[Path] = typer.Option(None, help=_help(DistillConfig, "unlabelled")),
    max_unlabelled_images: Optional[int] = typer.Option(None, help=_help(DistillConfig, "max_unlabelled_images")),
    teacher_view: Optional[str] = typer.Option(None, help=_help(DistillConfig, "teacher_view")),
    correct_teacher: Optional[bool] = typer.Option(
        None, "--correct-teacher/--no-correct-teacher", help=_help(DistillConfig, "correct_teacher")
    ),
    epochs: Optional[int] = typer.Option(None, help=_help(DistillConfig, "epochs")),
    batch_size: Optional[int] = typer.Option(None, help=_help(DistillConfig, "batch_size")),
    learning_rate: Optional[float] = typer.Option(None, help=_help(DistillConfig, "learning_rate")),
    warmup_fraction: Optional[float] = typer.Option(None, help=_help(DistillConfig, "warmup_fraction")),
    early_stopping: Optional[int] = typer.Option(
        None, "--early-stopping", help=_help(DistillConfig, "early_stopping_patience")
    ),
    dropout: Optional[float] = typer.Option(None, help="Student head dropout (default: 0.2)"),
    flip: options.Flip = None,
    crop_zoom: options.CropZoom = None,
    brightness: options.Brightness = None,
    contrast: options.Contrast = None,
    scale: options.Scale = None,
    low_res: options.LowRes = None,
    max_train_images: options.MaxTrainImages = None,
    seed: options.Seed = None,
    strategy: options.Strategy = None,
    strict: options.Strict = False,
    config: options.ConfigFile = None,
) -> None:
    """Distill a fine-tuned teacher into a small student (Hinton KD: soft targets at T, T² scaling)."""
    from edgexfer import api

    values = options.merge_config(
        config,
        dict(
            student=student,
            student_weights=student_weights,
            student_width=student_width,
            student_img_size=student_img_size,
            temperature=temperature,
            alpha=alpha,
            feature_weight=feature_weight,
            baseline=baseline,
            epochs=epochs,
            batch_size=batch_size,
            unlabelled=str(unlabelled) if unlabelled else None,
            max_unlabelled_images=max_unlabelled_images,
            teacher_view=teacher_view,
            correct_teacher=correct_teacher,
            learning_rate=learning_rate,
            warmup_fraction=warmup_fraction,
            early_stopping_patience=early_stopping,
            max_train_images=max_train_images,
            seed=seed,
            strategy=strategy,
            strict=strict or None,
        ),
        augment=dict(
            flip=flip, crop_zoom=crop_zoom, brightness=brightness, contrast=contrast, scale=scale, low_res=low_res
        ),
        head=dict(dropout=dropout),
    )
    artifact = api.distill(
        teacher, data, out, progress=sys.stdout.isatty(), log=_console().print, config=DistillConfig.build(**values)
    )
    if artifact is None:  # a multi-worker run's non-chief worker
        _console().print("this worker's share of the training is done; the chief (worker 0) writes the artifact")
        return
    render_distill(DistillResult.of(artifact))


def render_distill(result: DistillResult) -> None:
    # No DATA: no label was read, so there is no accuracy to show (agreement with the teacher below).
    accuracy = [(f"{result.eval_split} accuracy", result.accuracy.before, result.accuracy.after)]
    rows = accuracy if result.labels_read else []
    table = _before_after(
        f"distill: {result.teacher_backbone} → {result.student_backbone} ({result.path})",
        [
            *rows,
            ("parameters", result.params.before, result.params.after),
            ("model bytes (.h5)", result.h5_bytes.before, result.h5_bytes.after),
            ("input size (px)", result.input_size.before, result.input_size.after),
        ],
    )
    _console().print(table)
    summary = Table(show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    summary.add_row("params ratio (teacher / student)", f"{result.params_ratio:.1f}×")
    if result.gap_to_teacher is not None:
        summary.add_row("gap to teacher (points)", f"{100 * result.gap_to_teacher:.2f}")
    if result.teacher_agreement is not None:
        where = f"{result.eval_images} {result.eval_split} images" + ("" if result.labels_read else ", no label read")
        summary.add_row(f"agreement with the teacher ({where})", f"{100 * result.teacher_agreement:.2f} %")
    if result.baseline_accuracy is not None:
        summary.add_row("same student without distillation", f"{result.baseline_accuracy:.4f}")
        summary.add_row("gain from distillation (points)", f"{100 * result.distillation_gain:+.2f}")
    summary.add_row("teacher logits", result.teacher_logits)
    if result.feature_weight > 0:
        summary.add_row(f"feature hint (β {result.feature_weight:g}): last loss", _fmt(result.feature_loss))
    _console().print(summary)


def prune(
    model: Path = typer.Argument(..., help="A Keras artifact (finetune, distill …)."),
    data: Path = typer.Argument(..., help="Image folder with the model's classes (for fine-tuning while pruning)."),
    out: options.Out = ...,
    sparsity: Optional[float] = typer.Option(
        None, help="Target fraction of zero weights, in [0, 1) (2:4 implies 0.5)."
    ),
    structure: Optional[str] = typer.Option(
        None, help="unstructured | 2:4 (2 zeros in every 4 weights, Conv2D/Dense) (default: unstructured)"
    ),
    schedule: Optional[str] = typer.Option(None, help="constant | polynomial (default: polynomial)"),
    initial_sparsity: Optional[float] = typer.Option(None, help=_help(PruneConfig, "initial_sparsity")),
    end_fraction: Optional[float] = typer.Option(None, help=_help(PruneConfig, "end_fraction")),
    frequency: Optional[int] = typer.Option(None, help=_help(PruneConfig, "frequency")),
    epochs: Optional[int] = typer.Option(None, help=_help(PruneConfig, "epochs")),
    batch_size: Optional[int] = typer.Option(None, help=_help(PruneConfig, "batch_size")),
    learning_rate: Optional[float] = typer.Option(None, help=_help(PruneConfig, "learning_rate")),
    measure_tflite: Optional[bool] = typer.Option(
        None,
        "--measure-tflite/--no-measure-tflite",
        help="Convert to float TFLite to report its gzip size (default: on)",
    ),
    unlabelled: Optional[Path] = typer.Option(None, help=_help(PruneConfig, "unlabelled")),
    max_unlabelled_images: Optional[int] = typer.Option(None, help=_help(PruneConfig, "max_unlabelled_images")),
    flip: options.Flip = None,
    crop_zoom: options.CropZoom = None,
    brightness: options.Brightness = None,
    contrast: options.Contrast = None,
    scale: options.Scale = None,
    low_res: options.LowRes = None,
    max_train_images: options.MaxTrainImages = None,
    seed: options.Seed = None,
    strategy: options.Strategy = None,
    strict: options.Strict = False,
    config: options.ConfigFile = None,
) -> None:
    """Magnitude-prune while fine-tuning (tfmot); reports per-layer sparsity and gzip size."""
    from edgexfer import api

    values = options.merge_config(
        config,
        dict(
            sparsity=sparsity,
            structure=structure,
            schedule=schedule,
            initial_sparsity=initial_sparsity,
            end_fraction=end_fraction,
            frequency=frequency,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            measure_tflite=measure_tflite,
            unlabelled=str(unlabelled) if unlabelled else None,
            max_unlabelled_images=max_unlabelled_images,
            max_train_images=max_train_images,
            seed=seed,
            strategy=strategy,
            strict=strict or None,
        ),
        augment=dict(
            flip=flip, crop_zoom=crop_zoom, brightness=brightness, contrast=contrast, scale=scale, low_res=low_res
        ),
    )
    artifact = api.prune(
        model, data, out, progress=sys.stdout.isatty(), log=_console().print, config=PruneConfig.build(**values)
    )
    if artifact is None:  # a multi-worker run's non-chief worker
        _console().print("this worker's share of the training is done; the chief (worker 0) writes the artifact")
        return
    render_prune(PruneResult.of(artifact))


def render_prune(result: PruneResult) -> None:
    rows = [
        (f"{result.eval_split} accuracy", result.accuracy.before, result.accuracy.after),
        ("weight sparsity (all kernels)", result.sparsity.before, result.sparsity.after),
        ("non-zero parameters", result.nonzero_params.before, result.nonzero_params.after),
        ("model bytes (.h5)", result.h5_bytes.before, result.h5_bytes.after),
        ("gzip bytes (.h5)", result.h5_gzip_bytes.before, result.h5_gzip_bytes.after),
        ("MACs per image (zeros count)", result.macs.before, result.macs.after),
    ]
    if result.tflite_bytes is not None:
        rows += [
            ("float TFLite bytes", result.tflite_bytes.before, result.tflite_bytes.after),
            ("float TFLite gzip bytes", result.tflite_gzip_bytes.before, result.tflite_gzip_bytes.after),
        ]
    two_four = result.structure == "2:4"
    target = "2:4" if two_four else f"{result.target_sparsity:.0%}"
    _console().print(_before_after(f"prune ({target}) → {result.path}", rows))
    layers = Table(title="sparsity reached per pruned layer")
    for column in ("layer", "params", "sparsity") + (("2:4",) if two_four else ()):
        layers.add_column(column, justify="left" if column == "layer" else "right")
    for layer in result.layers:
        row = [layer.name, f"{layer.params:,}", f"{layer.sparsity:.3f}"]
        if two_four:
            row.append("yes" if layer.pattern_2_4 else "no")
        layers.add_row(*row)
    _console().print(layers)
    _console().print(
        f"pruned layers: sparsity {result.pruned_layers_sparsity:.3f}; gzip ratio {result.gzip_ratio:.2f}×"
        + (f" (float TFLite {result.tflite_gzip_ratio:.2f}×)" if result.tflite_gzip_ratio is not None else "")
    )
    if result.dense_layers:
        dense = Table(title=f"{len(result.dense_layers)} layers with weights stay dense")
        for column in ("layer", "class", "params", "why"):
            dense.add_column(column)
        for layer in result.dense_layers:
            dense.add_row(layer.name, layer.kind, f"{layer.params:,}", layer.reason)
        _console().print(dense)


def quantize(
    model: Path = typer.Argument(
        ..., help="A Keras artifact (finetune, distill, prune …); with --check also a student name, e.g. lite0_b3."
    ),
    data: Optional[Path] = typer.Argument(
        None, help="Image folder with the model's classes (not needed with --check)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Artifact directory to write."),
    mode: Optional[str] = typer.Option(None, help="qat | ptq (default: qat)"),
    quant_type: Optional[str] = typer.Option(None, "--type", help="PTQ kind: int8 | fp16 | dynamic (default: int8)"),
    calibration_images: Optional[int] = typer.Option(None, help=_help(QuantizeConfig, "calibration_images")),
    epochs: Optional[int] = typer.Option(None, help=_help(QuantizeConfig, "epochs")),
    batch_size: Optional[int] = typer.Option(None, help=_help(QuantizeConfig, "batch_size")),
    learning_rate: Optional[float] = typer.Option(None, help=_help(QuantizeConfig, "learning_rate")),
    preserve_sparsity: Optional[bool] = typer.Option(
        None,
        "--preserve-sparsity/--no-preserve-sparsity",
        help="Pruning-preserving QAT (default: when MODEL is pruned)",
    ),
    compare_ptq: Optional[bool] = typer.Option(
        None, "--compare-ptq/--no-compare-ptq", help="QAT: also measure PTQ int8 of MODEL (default: on)"
    ),
    unlabelled: Optional[Path] = typer.Option(None, help="QAT: " + _help(QuantizeConfig, "unlabelled")),
    max_unlabelled_images: Optional[int] = typer.Option(
        None, help="QAT: " + _help(QuantizeConfig, "max_unlabelled_images")
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Preflight: list what QAT will and won't quantize, then stop. On a student name (cnn_small, "
        "lite0_b3 …) also convert it to int8 TFLite and fail if any tensor stays float.",
    ),
    img_size: Optional[int] = typer.Option(
        None, help="--check STUDENT: its input size in pixels (default: the backbone's)."
    ),
    width: Optional[float] = typer.Option(
        None, help="--check STUDENT: its width multiplier where it has one (see `edgexfer backbones`)."
    ),
    flip: options.Flip = None,
    crop_zoom: options.CropZoom = None,
    brightness: options.Brightness = None,
    contrast: options.Contrast = None,
    scale: options.Scale = None,
    low_res: options.LowRes = None,
    max_train_images: options.MaxTrainImages = None,
    seed: options.Seed = None,
    strategy: Optional[str] = typer.Option(None, help=options.STRATEGY_HELP + "; QAT only: PTQ trains nothing"),
    strict: options.Strict = False,
    config: options.ConfigFile = None,
) -> None:
    """QAT (pruning-preserving on a pruned model) or PTQ for export, measured as TFLite; --check: preflight
    (of an artifact, or of a student name before training it)."""
    from edgexfer import api

    if check:
        report = QatPreflight.of(
            api.quantize_check(model, preserve_sparsity=preserve_sparsity, img_size=img_size, width=width)
        )
        render_check(report)
        fail_unless_fully_int8(report)
        return
    if img_size is not None or width is not None:
        raise ConfigError("--img-size and --width go with --check STUDENT (a student name); drop them")
    if data is None or out is None:
        raise ConfigError("quantize needs DATA and --out (or --check MODEL for the preflight alone)")
    values = options.merge_config(
        config,
        dict(
            mode=mode,
            type=quant_type,
            calibration_images=calibration_images,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            preserve_sparsity=preserve_sparsity,
            compare_ptq=compare_ptq,
            unlabelled=str(unlabelled) if unlabelled else None,
            max_unlabelled_images=max_unlabelled_images,
            max_train_images=max_train_images,
            seed=seed,
            strategy=strategy,
            strict=strict or None,
        ),
        augment=dict(
            flip=flip, crop_zoom=crop_zoom, brightness=brightness, contrast=contrast, scale=scale, low_res=low_res
        ),
    )
    artifact = api.quantize(
        model, data, out, progress=sys.stdout.isatty(), log=_console().print, config=QuantizeConfig.build(**values)
    )
    if artifact is None:  # a multi-worker run's non-chief worker
        _console().print("this worker's share of the training is done; the chief (worker 0) writes the artifact")
        return
    render_quantize(QuantizeResult.of(artifact))


def render_check(report: QatPreflight) -> None:
    kind = "pruning-preserving QAT" if report.pqat else "QAT"
    if report.artifact is not None:
        title = f"QAT preflight: {report.backbone} ({report.artifact}) — {kind}"
    else:  # a student name: what was built, on its own line (a long title would wrap to the table's width)
        from edgexfer.evaluate.formatting import macs

        width = f", width {report.width}" if report.width is not None else ""
        _console().print(
            f"student {report.backbone} at {report.input_size} px{width} (random weights): "
            f"{report.params:,} params, {macs(report.macs)} MACs per image"
        )
        title = f"{kind} preflight"
    table = Table(title=title)
    for column in ("status", "layers"):
        table.add_column(column)
    for status in ("int8", "folded", "passthrough", "float"):
        if report.counts.get(status):
            table.add_row(status, str(report.counts[status]))
    _console().print(table)
    floats = report.float_layers
    if floats:
        groups: dict[tuple[str, str], list[str]] = {}
        for layer in floats:
            groups.setdefault((layer.kind, layer.reason), []).append(layer.name)
        listing = Table(title=f"{len(floats)} layers stay float under QAT")
        for column in ("class", "count", "why", "layers"):
            listing.add_column(column, justify="right" if column == "count" else "left")
        for (kind, reason), names in groups.items():
            shown = ", ".join(names[:3]) + (f" … (+{len(names) - 3})" if len(names) > 3 else "")
            listing.add_row(kind, str(len(names)), reason, shown)
        _console().print(listing)
    if report.error:
        _console().print(f"[bold red]QAT not possible:[/bold red] {report.error}")
    elif report.whole_model:
        _console().print(f"[green]the whole model is quantized[/green] ({report.quantizable} layers with weights)")
    else:
        _console().print(f"partial QAT: {report.quantizable} layers with int8 weights, {len(floats)} float layers")
    if report.int8 is not None:
        _console().print(int8_line(report))


def int8_line(report: QatPreflight) -> str:
    """The converter's verdict on a student: ``int8 TFLite: 0 float tensors`` or what stays float."""
    converted = report.int8
    source = "the QAT model" if converted.from_qat else "the float model (PTQ)"
    if converted.error:
        return f"[bold red]int8 TFLite: conversion failed[/bold red] ({source}): {converted.error}"
    if converted.fully_int8:
        return f"[green]int8 TFLite: 0 float tensors[/green] (converted from {source})"
    names = ", ".join(repr(name) for name in converted.fp32_tensors[:5])
    more = " …" if converted.fp32_tensor_count > 5 else ""
    return (
        f"[bold red]int8 TFLite: {converted.fp32_tensor_count} float tensors[/bold red] "
        f"(converted from {source}): {names}{more}"
    )


def fail_unless_fully_int8(report: QatPreflight) -> None:
    """``quantize --check STUDENT`` fails (one line, exit 2) unless QAT applies and the int8 TFLite
    keeps no float tensor."""
    converted = report.int8
    if converted is None:  # an artifact: the preflight alone, as before
        return
    student = f"{report.backbone} at {report.input_size} px"
    advice = "pick another student (edgexfer backbones) or deploy it with --quant fp16 or dynamic"
    if report.error:
        raise ExportError(f"student {student} cannot be QAT-trained: {report.error}; {advice}")
    if converted.error:
        raise ExportError(f"student {student} cannot be converted to int8 TFLite ({converted.error}); {advice}")
    if not converted.fully_int8:
        names = ", ".join(repr(name) for name in converted.fp32_tensors[:3])
        raise ExportError(
            f"student {student} is not fully int8: the converter leaves {converted.fp32_tensor_count} float32 "
            f"tensors ({names}{' …' if converted.fp32_tensor_count > 3 else ''}); {advice}"
        )


def render_quantize(result: QuantizeResult) -> None:
    kind = result.mode if result.mode != "ptq" else f"ptq {result.type}"
    table = Table(
        title=f"quantize ({kind}) → {result.path}, "
        f"{result.eval_split} split, n={result.eval_images}; converted models run with LiteRT"
    )
    for column in ("model", "accuracy", "bytes", "gzip bytes", "fp32 tensors", "sparsity"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row(
        "float Keras", _fmt(result.float_accuracy), _fmt(result.float_bytes), "—", "—", _fmt(result.float_sparsity)
    )
    for converted in result.converted:
        table.add_row(
            converted.label,
            _fmt(converted.accuracy),
            _fmt(converted.size_bytes),
            _fmt(converted.gzip_bytes),
            _fmt(converted.fp32_tensor_count),
            _fmt(converted.weight_sparsity),
        )
    _console().print(table)
    if result.macs is not None:
        from edgexfer.evaluate.formatting import macs

        _console().print(f"{macs(result.macs)} MACs per image (multiply-accumulates; the same in every model above)")
    if result.qat_keras_accuracy is not None:
        _console().print(
            f"QAT (fake-quant Keras) accuracy {result.qat_keras_accuracy:.4f}; "
            + (
                "whole model quantized"
                if result.whole_model
                else f"{len(result.float_layers)} layers stay float: " + ", ".join(result.float_layers[:10])
            )
        )
    check = result.sparsity_check
    if check:
        verdict = "[green]kept[/green]" if check.kept else "[bold red]NOT kept[/bold red]"
        _console().print(
            f"sparsity {verdict}: input {check.input_sparsity:.3f} → converted int8 TFLite weights "
            f"{check.tflite_sparsity:.3f}"
        )
    if result.calibration_images:
        _console().print(
            f"calibration: {result.calibration_images} training images stored in {result.calibration_file} for export"
        )


def register(app: typer.Typer) -> None:
    """Add the compression commands to the edgexfer CLI."""
    app.command()(distill)
    app.command()(prune)
    app.command()(quantize)
