"""CLI commands of the compression stages: ``distill``, ``prune``, ``quantize``.

Thin like ``edgexfer.cli``: parse options → build a config → call ``edgexfer.compress.api``
→ render a table. Registered through ``edgexfer.cli.main._COMMAND_MODULES``; errors are
``EdgexferError``s that ``edgexfer.cli.main`` turns into one red line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgexfer.compress.config import DistillConfig, PruneConfig, QuantizeConfig
from edgexfer.errors import ConfigError

console = Console()


def _help(model, field: str, text: str | None = None) -> str:
    info = model.model_fields[field]
    return f"{text or info.description or ''} (default: {info.default})".strip()


def _values(
    config_file: Optional[Path],
    flags: dict[str, Any],
    augment: dict[str, Any] | None = None,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Options from ``--config`` overridden by the flags given on the command line."""
    from edgexfer.config import load_config_file

    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    for group, options in (("augment", augment or {}), ("head", head or {})):
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            values[group] = {**values.get(group, {}), **given}
    return values


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


STRATEGY_HELP = (
    "default | mirrored | multi-worker (tf.distribute; multi-worker reads TF_CONFIG, each worker "
    "trains on its own shard, --batch-size is the global batch, worker 0 writes the artifact; "
    "tools/launch_local.py starts N workers here) (default: default)"
)

_AUGMENT_HELP = {
    "flip": "Random horizontal flips (default: off)",
    "crop_zoom": "Random crop/zoom, max fraction (default: 0)",
    "brightness": "Random brightness, max delta as fraction of 255 (default: 0)",
    "contrast": "Random contrast, max factor delta (default: 0)",
}


def distill(
    teacher: Path = typer.Argument(..., help="The teacher: a finetune (or other Keras) artifact."),
    data: Path = typer.Argument(..., help="Image folder with the teacher's classes."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
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
    baseline: Optional[bool] = typer.Option(
        None,
        "--baseline/--no-baseline",
        help="Also train the same student without distillation, to measure the gain (default: off)",
    ),
    unlabelled: Optional[Path] = typer.Option(None, help=_help(DistillConfig, "unlabelled")),
    max_unlabelled_images: Optional[int] = typer.Option(None, help=_help(DistillConfig, "max_unlabelled_images")),
    epochs: Optional[int] = typer.Option(None, help=_help(DistillConfig, "epochs")),
    batch_size: Optional[int] = typer.Option(None, help=_help(DistillConfig, "batch_size")),
    learning_rate: Optional[float] = typer.Option(None, help=_help(DistillConfig, "learning_rate")),
    warmup_fraction: Optional[float] = typer.Option(None, help=_help(DistillConfig, "warmup_fraction")),
    early_stopping: Optional[int] = typer.Option(
        None, "--early-stopping", help=_help(DistillConfig, "early_stopping_patience")
    ),
    dropout: Optional[float] = typer.Option(None, help="Student head dropout (default: 0.2)"),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help=_AUGMENT_HELP["flip"]),
    crop_zoom: Optional[float] = typer.Option(None, help=_AUGMENT_HELP["crop_zoom"]),
    brightness: Optional[float] = typer.Option(None, help=_AUGMENT_HELP["brightness"]),
    contrast: Optional[float] = typer.Option(None, help=_AUGMENT_HELP["contrast"]),
    max_train_images: Optional[int] = typer.Option(None, help="Stratified subset of the training split."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: 0)"),
    strategy: Optional[str] = typer.Option(None, help=STRATEGY_HELP),
    strict: bool = typer.Option(False, "--strict", help="Corrupt image files are an error."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/TOML file of these options; flags override it."),
) -> None:
    """Distill a fine-tuned teacher into a small student (Hinton KD: soft targets at T, T² scaling)."""
    from edgexfer.compress import api

    values = _values(
        config,
        dict(
            student=student,
            student_weights=student_weights,
            student_width=student_width,
            student_img_size=student_img_size,
            temperature=temperature,
            alpha=alpha,
            baseline=baseline,
            epochs=epochs,
            batch_size=batch_size,
            unlabelled=str(unlabelled) if unlabelled else None,
            max_unlabelled_images=max_unlabelled_images,
            learning_rate=learning_rate,
            warmup_fraction=warmup_fraction,
            early_stopping_patience=early_stopping,
            max_train_images=max_train_images,
            seed=seed,
            strategy=strategy,
            strict=strict or None,
        ),
        augment=dict(flip=flip, crop_zoom=crop_zoom, brightness=brightness, contrast=contrast),
        head=dict(dropout=dropout),
    )
    artifact = api.distill(
        teacher, data, out, progress=sys.stdout.isatty(), log=console.print, config=DistillConfig.build(**values)
    )
    if artifact is None:  # a multi-worker run's non-chief worker
        console.print("this worker's share of the training is done; the chief (worker 0) writes the artifact")
        return
    render_distill(artifact)


def render_distill(artifact) -> None:
    m = artifact.metrics
    teacher = artifact.manifest.extra.get("teacher", {})
    table = _before_after(
        f"distill: {teacher.get('backbone', 'teacher')} → {artifact.manifest.backbone} ({artifact.path})",
        [
            (f"{m['eval_split']} accuracy", m["accuracy_before"], m["accuracy_after"]),
            ("parameters", m["params_before"], m["params_after"]),
            ("model bytes (.h5)", m["size_bytes_before"], m["size_bytes_after"]),
            ("input size (px)", teacher.get("input_size"), artifact.manifest.preprocessing.input_size),
        ],
    )
    console.print(table)
    summary = Table(show_header=False)
    summary.add_column("", style="bold")
    summary.add_column("", justify="right")
    summary.add_row("params ratio (teacher / student)", f"{m['params_ratio']:.1f}×")
    summary.add_row("gap to teacher (points)", f"{100 * m['accuracy_gap_to_teacher']:.2f}")
    if "baseline_accuracy" in m:
        summary.add_row("same student without distillation", f"{m['baseline_accuracy']:.4f}")
        summary.add_row("gain from distillation (points)", f"{100 * m['distillation_gain']:+.2f}")
    summary.add_row("teacher logits", m["teacher_logits"])
    console.print(summary)


def prune(
    model: Path = typer.Argument(..., help="A Keras artifact (finetune, distill …)."),
    data: Path = typer.Argument(..., help="Image folder with the model's classes (for fine-tuning while pruning)."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
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
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help=_AUGMENT_HELP["flip"]),
    crop_zoom: Optional[float] = typer.Option(None, help=_AUGMENT_HELP["crop_zoom"]),
    max_train_images: Optional[int] = typer.Option(None, help="Stratified subset of the training split."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: 0)"),
    strategy: Optional[str] = typer.Option(None, help=STRATEGY_HELP),
    strict: bool = typer.Option(False, "--strict", help="Corrupt image files are an error."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/TOML file of these options; flags override it."),
) -> None:
    """Magnitude-prune while fine-tuning (tfmot); reports per-layer sparsity and gzip size."""
    from edgexfer.compress import api

    values = _values(
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
            max_train_images=max_train_images,
            seed=seed,
            strategy=strategy,
            strict=strict or None,
        ),
        augment=dict(flip=flip, crop_zoom=crop_zoom),
    )
    artifact = api.prune(
        model, data, out, progress=sys.stdout.isatty(), log=console.print, config=PruneConfig.build(**values)
    )
    if artifact is None:  # a multi-worker run's non-chief worker
        console.print("this worker's share of the training is done; the chief (worker 0) writes the artifact")
        return
    render_prune(artifact)


def render_prune(artifact) -> None:
    m = artifact.metrics
    rows = [
        (f"{m['eval_split']} accuracy", m["accuracy_before"], m["accuracy_after"]),
        ("weight sparsity (all kernels)", m["sparsity_before"], m["sparsity_after"]),
        ("non-zero parameters", m["params_nonzero_before"], m["params_nonzero_after"]),
        ("model bytes (.h5)", m["size_bytes_before"], m["size_bytes_after"]),
        ("gzip bytes (.h5)", m["gzip_bytes_before"], m["gzip_bytes_after"]),
    ]
    if m.get("tflite_fp32"):
        t = m["tflite_fp32"]
        rows += [
            ("float TFLite bytes", t["size_bytes_before"], t["size_bytes_after"]),
            ("float TFLite gzip bytes", t["gzip_bytes_before"], t["gzip_bytes_after"]),
        ]
    target = "2:4" if m["structure"] == "2:4" else f"{m['target_sparsity']:.0%}"
    console.print(_before_after(f"prune ({target}) → {artifact.path}", rows))
    layers = Table(title="sparsity reached per pruned layer")
    for column in ("layer", "params", "sparsity") + (("2:4",) if m["structure"] == "2:4" else ()):
        layers.add_column(column, justify="left" if column == "layer" else "right")
    for name, entry in m["layers"].items():
        row = [name, f"{entry['params']:,}", f"{entry['sparsity']:.3f}"]
        if m["structure"] == "2:4":
            row.append("yes" if entry.get("pattern_2_4") else "no")
        layers.add_row(*row)
    console.print(layers)
    console.print(
        f"pruned layers: sparsity {m['pruned_layers_sparsity']:.3f}; gzip ratio {m['gzip_ratio']:.2f}×"
        + (f" (float TFLite {m['tflite_fp32']['gzip_ratio']:.2f}×)" if m.get("tflite_fp32") else "")
    )
    if m["dense_layers"]:
        dense = Table(title=f"{len(m['dense_layers'])} layers with weights stay dense")
        for column in ("layer", "class", "params", "why"):
            dense.add_column(column)
        for entry in m["dense_layers"]:
            dense.add_row(entry["layer"], entry["class"], f"{entry['params']:,}", entry["reason"])
        console.print(dense)


def quantize(
    model: Path = typer.Argument(..., help="A Keras artifact (finetune, distill, prune …)."),
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
    check: bool = typer.Option(False, "--check", help="Preflight: list what QAT will and won't quantize, then stop."),
    max_train_images: Optional[int] = typer.Option(None, help="Stratified subset of the training split."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: 0)"),
    strategy: Optional[str] = typer.Option(None, help=STRATEGY_HELP + "; QAT only: PTQ trains nothing"),
    strict: bool = typer.Option(False, "--strict", help="Corrupt image files are an error."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/TOML file of these options; flags override it."),
) -> None:
    """QAT (pruning-preserving on a pruned model) or PTQ for export, measured as TFLite; --check: preflight."""
    from edgexfer.compress import api

    if check:
        render_check(api.quantize_check(model, preserve_sparsity=preserve_sparsity))
        return
    if data is None or out is None:
        raise ConfigError("quantize needs DATA and --out (or --check MODEL for the preflight alone)")
    values = _values(
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
            max_train_images=max_train_images,
            seed=seed,
            strategy=strategy,
            strict=strict or None,
        ),
    )
    artifact = api.quantize(
        model, data, out, progress=sys.stdout.isatty(), log=console.print, config=QuantizeConfig.build(**values)
    )
    if artifact is None:  # a multi-worker run's non-chief worker
        console.print("this worker's share of the training is done; the chief (worker 0) writes the artifact")
        return
    render_quantize(artifact)


def render_check(report: dict) -> None:
    counts = report.get("counts", {})
    title = f"QAT preflight: {report['backbone']} ({report['artifact']}) — " + (
        "pruning-preserving QAT" if report.get("pqat") else "QAT"
    )
    table = Table(title=title)
    for column in ("status", "layers"):
        table.add_column(column)
    for status in ("int8", "folded", "passthrough", "float"):
        if counts.get(status):
            table.add_row(status, str(counts[status]))
    console.print(table)
    floats = report.get("float_layers", [])
    if floats:
        groups: dict[tuple[str, str], list[str]] = {}
        for entry in floats:
            groups.setdefault((entry["class"], entry["reason"]), []).append(entry["layer"])
        listing = Table(title=f"{len(floats)} layers stay float under QAT")
        for column in ("class", "count", "why", "layers"):
            listing.add_column(column, justify="right" if column == "count" else "left")
        for (kind, reason), names in groups.items():
            shown = ", ".join(names[:3]) + (f" … (+{len(names) - 3})" if len(names) > 3 else "")
            listing.add_row(kind, str(len(names)), reason, shown)
        console.print(listing)
    if report.get("error"):
        console.print(f"[bold red]QAT not possible:[/bold red] {report['error']}")
    elif report.get("whole_model"):
        console.print(f"[green]the whole model is quantized[/green] ({report['quantizable']} layers with weights)")
    else:
        console.print(f"partial QAT: {report['quantizable']} layers with int8 weights, {len(floats)} float layers")


def render_quantize(artifact) -> None:
    m = artifact.metrics
    q = artifact.manifest.quantization or {}
    mode = q.get("mode", "?")
    table = Table(
        title=f"quantize ({mode}{'' if mode != 'ptq' else ' ' + q.get('type', '')}) → {artifact.path}, "
        f"{m['eval_split']} split, n={m['eval_images']}; converted models run with LiteRT"
    )
    for column in ("model", "accuracy", "bytes", "gzip bytes", "fp32 tensors", "sparsity"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row(
        "float Keras", _fmt(m["float_accuracy"]), _fmt(m["size_bytes_before"]), "—", "—", _fmt(m["sparsity_before"])
    )
    for key, label in (
        ("tflite_qat_int8", "QAT int8"),
        ("tflite_ptq_int8", "PTQ int8"),
        ("tflite_ptq_fp16", "PTQ fp16"),
        ("tflite_ptq_dynamic", "PTQ dynamic"),
    ):
        if key in m:
            t = m[key]
            table.add_row(
                label,
                _fmt(t["accuracy"]),
                _fmt(t["size_bytes"]),
                _fmt(t["gzip_bytes"]),
                _fmt(t["fp32_tensor_count"]),
                _fmt(t["weight_sparsity"]),
            )
    console.print(table)
    if "qat_keras_accuracy" in m:
        console.print(
            f"QAT (fake-quant Keras) accuracy {m['qat_keras_accuracy']:.4f}; "
            + (
                "whole model quantized"
                if m.get("whole_model")
                else f"{len(m.get('float_layers', []))} layers stay float: "
                + ", ".join(f["layer"] for f in m.get("float_layers", [])[:10])
            )
        )
    check = m.get("sparsity_check")
    if check:
        verdict = "[green]kept[/green]" if check["kept"] else "[bold red]NOT kept[/bold red]"
        console.print(
            f"sparsity {verdict}: input {check['input_sparsity']:.3f} → converted int8 TFLite weights "
            f"{check['tflite_sparsity']:.3f}"
        )
    if q.get("calibration_images"):
        console.print(
            f"calibration: {q['calibration_images']} training images stored in {q.get('calibration_file')} for export"
        )


def register(app: typer.Typer) -> None:
    """Add the compression commands to the edgexfer CLI."""
    app.command()(distill)
    app.command()(prune)
    app.command()(quantize)
