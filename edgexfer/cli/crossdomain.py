"""Cross-domain commands: ``adapt`` (unsupervised domain adaptation) and ``fuse`` (weight-space
interpolation). Thin: parse options (``--config`` merged by ``edgexfer.cli.options``) → build a
config → call ``edgexfer.api`` → render the stage's typed result (``edgexfer.train.results``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from edgexfer.cli import options
from edgexfer.cli.options import config_help as _help
from edgexfer.errors import ConfigError
from edgexfer.train.config import AdaptConfig, FuseConfig
from edgexfer.train.results import AdaptResult, FuseResult


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def register(app: typer.Typer) -> None:
    from edgexfer.cli.main import console

    @app.command()
    def adapt(
        model: Path = typer.Argument(..., help="The artifact to adapt (e.g. a finetune output)."),
        source: Optional[Path] = typer.Option(
            None,
            "--source",
            help="Labelled SOURCE image folder (the model's classes). Needed by every method but shot; "
            "refused with shot, which is source-free (its artifact records that no source image was read).",
        ),
        target: Path = typer.Option(
            ...,
            "--target",
            help="TARGET images: a folder of images, or an image folder whose class labels are ignored (never read).",
        ),
        method: str = typer.Option(
            ...,
            "--method",
            help="adabn | coral | dann | pseudo-label | shot (source-free: the model and target images only) | "
            "auto (runs the others, keeps the one agreeing most with their consensus on the target)",
        ),
        out: options.Out = ...,
        after: Optional[str] = typer.Option(
            None,
            help="pseudo-label only: first run adabn | coral | dann, then "
            "self-train; none: the input model labels the first round "
            "(default: coral)",
        ),
        bn: Optional[str] = typer.Option(
            None,
            help="domain: BatchNorm statistics per domain (source batches use "
            "source statistics, target batches target ones, the written "
            "model carries the target's: AdaBN under the method); frozen: "
            "the model's own statistics throughout (default: adabn, dann "
            "domain; coral, pseudo-label frozen)",
        ),
        output_stats: Optional[str] = typer.Option(
            None,
            help="BatchNorm statistics of the written model: target | "
            "source (the source-statistics baseline) "
            "(default: target)",
        ),
        epochs: Optional[int] = typer.Option(
            None,
            help="Epochs over the source (pseudo-label: per round; adabn: "
            "re-fit under source statistics, 0 = pure re-estimation) "
            "(default: per method)",
        ),
        train_layers: Optional[int] = typer.Option(
            None, help="Top weighted layers trained besides the head; 0: the head only (default: 30)"
        ),
        batch_size: Optional[int] = typer.Option(None, help="(default: 64)"),
        learning_rate: Optional[float] = typer.Option(None, help="(default: 1e-3, cosine decay)"),
        coral_weight: Optional[float] = typer.Option(None, help="coral: weight of the CORAL loss (default: 1.0)"),
        dann_weight: Optional[float] = typer.Option(
            None, help="dann: largest gradient-reversal coefficient (default: 0.3)"
        ),
        shot_weight: Optional[float] = typer.Option(
            None, help="shot: weight β of the centroid pseudo-label loss (default: 0.3)"
        ),
        restarts: Optional[int] = typer.Option(
            None,
            help="shot: train N times from the same start and keep the one with the highest information "
            "maximisation on the target (label-free; N × the training time) (default: 1)",
        ),
        threshold: Optional[float] = typer.Option(None, help="pseudo-label: minimum confidence (default: 0.9)"),
        rounds: Optional[int] = typer.Option(None, help="pseudo-label: rounds of re-labelling (default: 3)"),
        class_map: Optional[str] = typer.Option(
            None, "--class-map", help="Rename the target's class folders to the model's: 'seven=7,eight=8' or a file"
        ),
        max_source_images: Optional[int] = typer.Option(None, help="Seeded subset of the source training images."),
        max_target_images: Optional[int] = typer.Option(None, help="Seeded subset of the target images."),
        seed: options.Seed = None,
        strategy: Optional[str] = typer.Option(
            None,
            help="default only: adapt cannot be distributed (its step "
            "swaps BatchNorm statistics per domain); one process",
        ),
        strict: options.Strict = False,
        config: options.ConfigFile = None,
    ) -> None:
        """Adapt a model to an unlabelled target domain (target labels are never read)."""
        from edgexfer import api
        from edgexfer.data.class_map import parse_class_map

        flags = dict(
            method=method,
            after=after,
            bn=bn,
            output_stats=output_stats,
            epochs=epochs,
            train_layers=train_layers,
            batch_size=batch_size,
            learning_rate=learning_rate,
            coral_weight=coral_weight,
            dann_weight=dann_weight,
            shot_weight=shot_weight,
            restarts=restarts,
            threshold=threshold,
            rounds=rounds,
            max_source_images=max_source_images,
            max_target_images=max_target_images,
            seed=seed,
            strategy=strategy,
            strict=strict or None,
        )
        values = options.merge_config(config, flags)
        if class_map is not None or "class_map" in values:
            values["class_map"] = parse_class_map(class_map if class_map is not None else values["class_map"])
        artifact = api.adapt(
            model,
            source,
            target,
            out,
            config=AdaptConfig.build(**values),
            progress=sys.stdout.isatty(),
            log=console.print,
        )
        render_adapt(AdaptResult.of(artifact), source)

    @app.command()
    def fuse(
        source: str = typer.Argument(
            ...,
            help="SOURCE: an artifact of the same architecture, or "
            "imagenet:<backbone> (the pretrained backbone; e.g. "
            "imagenet:efficientnet_lite0).",
        ),
        finetuned: Path = typer.Argument(..., help="FINETUNED: the fine-tuned artifact."),
        out: options.Out = ...,
        alpha: str = typer.Option(
            ...,
            "--alpha",
            help="ALPHA is the weight of the SOURCE: θ = α·θ_source + "
            "(1−α)·θ_finetuned; 0 keeps the fine-tuned model, 1 takes "
            "the source weights. 'auto' sweeps α on --val-data. Where "
            "the source's head differs (e.g. ImageNet classes), only "
            "the shared layers are interpolated and the fine-tuned head "
            "is kept.",
        ),
        val_data: Optional[str] = typer.Option(
            None,
            "--val-data",
            help="[NAME=]DIR: labelled folder (source or target domain, your choice) that auto selects α on.",
        ),
        source_data: Optional[str] = typer.Option(
            None,
            "--source-data",
            help="[NAME=]DIR: labelled SOURCE-domain folder, scored on its held-out test split (as the source "
            "model's run carved it): its α curve, and what --keep-source protects.",
        ),
        val_images: Optional[str] = typer.Option(
            None,
            "--val-images",
            help="all | labelled: with labelled, select α on only the --val-data images the fine-tuned model's "
            "--per-class run labelled (default: all)",
        ),
        keep_source: Optional[float] = typer.Option(
            None,
            "--keep-source",
            help="With --alpha auto: the α with the best --val-data accuracy among those losing at most this much "
            "--source-data accuracy against the source model (0.01 = one point).",
        ),
        curve_data: Optional[list[str]] = typer.Option(
            None,
            "--curve-data",
            help="NAME=DIR, repeatable: more labelled folders to draw the α curve on (not used to select).",
        ),
        alphas: Optional[str] = typer.Option(
            None, help="The grid auto sweeps, e.g. '0,0.25,0.5,0.75,1' (default: 0 to 1 by 0.1)"
        ),
        class_map: Optional[str] = typer.Option(
            None, "--class-map", help="Rename folder classes to the model's: 'seven=7,eight=8' or a file"
        ),
        bn_reset: Optional[Path] = typer.Option(
            None,
            "--bn-reset",
            help="Images (labels unused) to re-estimate "
            "BatchNorm statistics on after "
            "interpolating, at every α: for models "
            "with different statistics (e.g. an "
            "adapted model and its source).",
        ),
        max_images: Optional[int] = typer.Option(
            None, help="At most this many images per folder (seeded; default: all)"
        ),
        batch_size: Optional[int] = typer.Option(None, help=_help(FuseConfig, "batch_size", "Images per batch")),
        strict: options.Strict = False,
        config: options.ConfigFile = None,
    ) -> None:
        """Interpolate weights: θ = α·θ_source + (1−α)·θ_finetuned (α = weight of the SOURCE).

        Both models must have the same architecture. Where the source has a different head
        (e.g. ImageNet's classes), only the shared layers are interpolated and the fine-tuned
        head is kept.
        """
        from edgexfer import api
        from edgexfer.data.class_map import parse_class_map
        from edgexfer.evaluate.domains import parse_domains

        if alpha.strip().lower() == "auto":
            alpha_value: float | str = "auto"
        else:
            try:
                alpha_value = float(alpha)
            except ValueError:
                raise ConfigError(f"--alpha {alpha!r} is not a number in [0, 1] or 'auto'") from None
        grid = None
        if alphas:
            try:
                grid = tuple(float(a) for a in alphas.split(",") if a.strip())
            except ValueError:
                raise ConfigError(f"--alphas {alphas!r}: write numbers in [0, 1] separated by commas") from None
        flags = dict(
            alpha=alpha_value,
            alphas=grid,
            val_data=val_data or None,
            source_data=source_data or None,
            val_images=val_images or None,
            keep_source=keep_source,
            curve_data=parse_domains(curve_data) if curve_data else None,
            max_images=max_images,
            bn_reset=str(bn_reset) if bn_reset else None,
            batch_size=batch_size,
            strict=strict or None,
        )
        values = options.merge_config(config, flags)
        if class_map or "class_map" in values:
            values["class_map"] = parse_class_map(class_map or values["class_map"])
        artifact = api.fuse(
            source, finetuned, out, config=FuseConfig.build(**values), log=console.print, progress=sys.stdout.isatty()
        )
        render_fuse(FuseResult.of(artifact))


def render_adapt(result: AdaptResult, source: Path | None) -> None:
    from edgexfer.cli.main import console

    picked = f" → {result.picked}" if result.picked else ""
    after = f" after {result.after}" if result.after else ""
    table = Table(title=f"adapt ({result.method}{picked}{after}, BatchNorm {result.bn}) → {result.path}")
    table.add_column("metric")
    table.add_column("input", justify="right")
    table.add_column("adapted", justify="right")
    table.add_row("source val accuracy", _fmt(result.source_val_accuracy_input), _fmt(result.source_val_accuracy))
    table.add_row("source val accuracy, source BN statistics", "", _fmt(result.source_stats_source_val_accuracy))
    table.add_row("target mean confidence (no labels)", "", _fmt(result.target_mean_confidence))
    table.add_row("target images ≥ threshold (no labels)", "", _fmt(result.target_confident_fraction))
    table.add_row(
        "images (source / val / target)",
        "",
        f"{result.source_train_images} / {result.source_val_images} / {result.target_images}",
    )
    table.add_row("seconds", "", f"{result.seconds:.1f}")
    console.print(table)
    if result.auto_reason:
        console.print(f"auto picked {result.auto_reason}")
    if result.source_free:
        console.print("source-free: no source image was read")
    domains = f"--data source={source} " if source is not None else ""
    console.print(f"target accuracy needs labels: edgexfer evaluate {result.path} {domains}--data target=DIR")


def render_fuse(result: FuseResult) -> None:
    from edgexfer.cli.main import console

    curve = result.curve
    if curve is not None:
        table = Table(title="fuse: accuracy vs α")
        table.add_column("α", justify="right")
        for name in curve.curves:
            table.add_column(name + (" (selection)" if name == curve.selected_on else ""), justify="right")
        for i, a in enumerate(curve.alphas):
            mark = " ← chosen" if a == result.alpha else ""
            table.add_row(f"{a:g}{mark}", *(f"{accuracies[i]:.4f}" for accuracies in curve.curves.values()))
        console.print(table)
        if curve.rule:
            console.print(f"chosen by: {curve.rule}")
        console.print("α = weight of the source: θ = α·θ_source + (1−α)·θ_finetuned (0: fine-tuned, 1: source)")
        console.print(f"curve: {curve.json_path}, {curve.png_path}")
    kept = result.kept_from_finetuned
    kept_text = f", kept from the fine-tuned model: {', '.join(kept)}" if kept else ""
    console.print(
        f"fused α = {result.alpha:g} ({result.interpolated_layers} layers interpolated{kept_text}) → {result.path}"
    )
