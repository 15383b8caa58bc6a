"""The typer CLI: parse options → build a config → call ``edgexfer.api`` → render. No logic here.

Every ``EdgexferError`` becomes one red line on stderr and its exit code; no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from edgexfer.cli import options
from edgexfer.config import FinetuneConfig
from edgexfer.errors import ConfigError, EdgexferError

app = typer.Typer(
    help="edgexfer: pretrained backbone → your domain → edge device, with numbers at every step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Bundled real datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def _default(field: str, model=FinetuneConfig) -> str:
    info = model.model_fields[field]
    text = info.description or ""
    return f"{text} (default: {info.default})".strip()


# Commands that work on the runtime-only install (`pip install edgexfer`, no TensorFlow); every
# other command says up front that it needs the training extra. (`run` checks per stage, so
# `run --list` works everywhere.)
RUNTIME_COMMANDS = ("predict", "benchmark", "info", "check", "bundle", "run", "report")


@app.callback()
def _global(
    ctx: typer.Context, verbose: bool = typer.Option(False, "--verbose", "-v", help="Show TensorFlow's own logs.")
) -> None:
    import logging

    from rich.logging import RichHandler

    from edgexfer.tf_env import configure_tensorflow_env

    configure_tensorflow_env(verbose=verbose)
    _require_train_extra(ctx.invoked_subcommand)
    import warnings

    from PIL import Image

    # PIL warns about images over ~89 Mpx and refuses those over twice that (a one-line DataError
    # then); the warning itself is noise in a terminal.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # Warnings from the library (e.g. skipped corrupt images) reach the user on stderr; one
    # handler however often the app runs in a process (tests, the demo's stages).
    logger = logging.getLogger("edgexfer")
    if not any(getattr(h, "edgexfer_cli", False) for h in logger.handlers):
        handler = RichHandler(console=err_console, show_time=False, show_path=False)
        handler.edgexfer_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _require_train_extra(command: str | None) -> None:
    """A training command on the runtime-only install: the one-line error naming the extra,
    before anything is read or written (``--help`` still works)."""
    import importlib.util

    if command in RUNTIME_COMMANDS or {"--help", "-h"} & set(sys.argv[1:]):
        return
    if command is not None and importlib.util.find_spec("tensorflow") is None:
        from edgexfer.tf_env import missing_train_extra

        raise missing_train_extra(ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow"))


@app.command()
def finetune(
    data: Path = typer.Argument(..., help="Image folder: ROOT/<class>/* or ROOT/{train,val,test}/<class>/*"),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write."),
    backbone: Optional[str] = typer.Option(None, help=_default("backbone") + " (see `edgexfer backbones`)"),
    weights: Optional[str] = typer.Option(None, help="imagenet | none | PATH to a weights file (default: imagenet)"),
    width: Optional[float] = typer.Option(
        None, help="Width multiplier (MobileNet alpha) where the backbone has several."
    ),
    img_size: Optional[int] = typer.Option(None, help="Input size in pixels (default: the backbone's)"),
    epochs: Optional[int] = typer.Option(None, help=_default("epochs")),
    fine_tune_epochs: Optional[int] = typer.Option(None, help=_default("fine_tune_epochs")),
    unfreeze_layers: Optional[int] = typer.Option(None, help=_default("unfreeze_layers")),
    batch_size: Optional[int] = typer.Option(None, help=_default("batch_size")),
    learning_rate: Optional[float] = typer.Option(None, help=_default("learning_rate")),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, help=_default("fine_tune_learning_rate")),
    warmup_fraction: Optional[float] = typer.Option(
        None, help="Fraction of steps of linear warm-up before cosine decay (default: 0.1)"
    ),
    label_smoothing: Optional[float] = typer.Option(None, help=_default("label_smoothing")),
    class_weights: Optional[str] = typer.Option(None, help="none | balanced (for imbalanced data) (default: none)"),
    early_stopping: Optional[int] = typer.Option(
        None, "--early-stopping", help="Patience in epochs on val accuracy, best weights restored; 0 off (default: 3)"
    ),
    dropout: Optional[float] = typer.Option(None, help="Head dropout (default: 0.2)"),
    flip: options.Flip = None,
    crop_zoom: options.CropZoom = None,
    brightness: options.Brightness = None,
    contrast: options.Contrast = None,
    scale: options.Scale = None,
    low_res: options.LowRes = None,
    feature_cache: Optional[bool] = typer.Option(
        None, "--feature-cache/--no-feature-cache", help="Phase 1 on features computed once (default: on)"
    ),
    image_cache: Optional[str] = typer.Option(
        None,
        "--image-cache",
        help="auto | memory | disk | none: where decoded images and phase-1 features stay between epochs; disk "
        "and none keep memory flat as the data grows; auto: memory up to 1 GiB, else disk under EDGEXFER_CACHE "
        "(default: auto)",
    ),
    max_train_images: Optional[int] = typer.Option(None, help="Stratified subset of the training split."),
    val_fraction: Optional[float] = typer.Option(None, help=_default("val_fraction")),
    test_fraction: Optional[float] = typer.Option(None, help=_default("test_fraction")),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: 0)"),
    split_seed: Optional[int] = typer.Option(
        None, help=_default("split_seed").replace("(default: None)", "(default: --seed)")
    ),
    strategy: Optional[str] = typer.Option(
        None, help="default | mirrored | multi-worker (tf.distribute) (default: default)"
    ),
    strict: bool = typer.Option(False, "--strict", help="Corrupt image files are an error instead of a warning."),
    init: Optional[Path] = typer.Option(
        None,
        "--init",
        help="Start from this classifier artifact (finetune/adapt/fuse/distill output) instead of ImageNet: "
        "same classes keep its head, other classes get a new one.",
    ),
    class_map: Optional[str] = typer.Option(
        None, "--class-map", help="With --init: rename the folder's classes to the model's, 'seven=7,...' or a file."
    ),
    per_class: Optional[int] = typer.Option(
        None,
        "--per-class",
        help="Train on a seeded N labelled images per class of the train/val splits; the test split is held out "
        "for the test accuracy. N above a class's count is an error.",
    ),
    unlabelled: Optional[Path] = typer.Option(
        None,
        "--unlabelled",
        help="Other target images (labels, if any, unread) for self-training on confident pseudo-labels.",
    ),
    pseudo_threshold: Optional[float] = typer.Option(None, help=_default("pseudo_threshold")),
    pseudo_rounds: Optional[int] = typer.Option(None, help=_default("pseudo_rounds")),
    pseudo_epochs: Optional[int] = typer.Option(None, help=_default("pseudo_epochs")),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/TOML file of these options; flags override it."),
) -> None:
    """Fine-tune a pretrained backbone (or your own model, --init) on an image folder (head on cached
    features, then the top layers)."""
    from edgexfer import api

    flags = dict(
        backbone=backbone,
        weights=weights,
        width=width,
        img_size=img_size,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        unfreeze_layers=unfreeze_layers,
        batch_size=batch_size,
        learning_rate=learning_rate,
        fine_tune_learning_rate=fine_tune_learning_rate,
        warmup_fraction=warmup_fraction,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        early_stopping_patience=early_stopping,
        feature_cache=feature_cache,
        image_cache=image_cache,
        max_train_images=max_train_images,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        split_seed=split_seed,
        strategy=strategy,
        strict=strict or None,
        init=str(init) if init else None,
        per_class=per_class,
        unlabelled=str(unlabelled) if unlabelled else None,
        pseudo_threshold=pseudo_threshold,
        pseudo_rounds=pseudo_rounds,
        pseudo_epochs=pseudo_epochs,
    )
    values = options.merge_config(
        config,
        flags,
        augment={
            "flip": flip,
            "crop_zoom": crop_zoom,
            "brightness": brightness,
            "contrast": contrast,
            "scale": scale,
            "low_res": low_res,
        },
        head={"dropout": dropout},
    )
    if class_map is not None or "class_map" in values:
        from edgexfer.data.class_map import parse_class_map

        values["class_map"] = parse_class_map(class_map if class_map is not None else values["class_map"])
    artifact = api.finetune(
        data, out, progress=sys.stdout.isatty(), log=console.print, config=FinetuneConfig.build(**values)
    )
    if artifact is None:  # a multi-worker run's non-chief worker
        console.print("this worker's share of the training is done; the chief (worker 0) writes the artifact")
        return
    _render_training_summary(artifact)


@app.command()
def evaluate(
    artifact: Path = typer.Argument(..., help="An artifact directory with a Keras model."),
    data: Optional[Path] = typer.Argument(
        None,
        help="Image folder whose classes match the artifact's labels "
        "(or use --data NAME=DIR, repeatable, for several domains).",
    ),
    domains: Optional[list[str]] = typer.Option(
        None,
        "--data",
        help="NAME=DIR, repeatable: evaluate on several "
        "domains; the table shows each accuracy and "
        "the gap to the first domain.",
    ),
    class_map: Optional[str] = typer.Option(
        None, "--class-map", help="With --data: rename folder classes to the model's, 'seven=7,eight=8' or a file."
    ),
    split: str = typer.Option(
        "all",
        help="all | train | val | test: the part of each folder, carved as the "
        "model's training data was (test: the run's held-out images)",
    ),
    top_k: int = typer.Option(5, help="k of the top-k accuracy."),
    batch_size: int = typer.Option(64),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON to FILE."),
    confusion_png: Optional[Path] = typer.Option(
        None,
        "--confusion-png",
        help="Where to save the confusion matrix PNG (default: next to --json, or ./confusion.png)",
    ),
    strict: bool = typer.Option(False, "--strict", help="Corrupt image files are an error."),
) -> None:
    """Accuracy, top-k, per-class metrics and confusion matrix of an artifact on an image folder,
    or on several domains at once (--data NAME=DIR ...): each domain's accuracy and the gap."""
    from edgexfer import api
    from edgexfer.evaluate.evaluator import check_output_file, write_json

    if json_out:
        check_output_file(json_out, "--json")
    if domains:
        if data is not None:
            raise ConfigError("pass either DATA or --data NAME=DIR (repeatable), not both")
        from edgexfer.evaluate.domains import parse_domains

        result = api.evaluate_domains(
            artifact,
            parse_domains(domains),
            class_map=class_map,
            split=split,
            top_k=top_k,
            batch_size=batch_size,
            strict=strict,
        )
        _render_domains(result)
        if json_out:
            write_json(result, json_out)
            console.print(f"results: {json_out}")
        return
    if data is None:
        raise ConfigError("pass the image folder DATA, or --data NAME=DIR (repeatable) for several domains")
    if class_map:
        raise ConfigError("--class-map goes with --data NAME=DIR")
    png = confusion_png or (json_out.with_suffix(".confusion.png") if json_out else Path("confusion.png"))
    check_output_file(png, "--confusion-png")
    result = api.evaluate(
        artifact, data, confusion_png=png, split=split, top_k=top_k, batch_size=batch_size, strict=strict
    )
    _render_evaluation(result)
    if json_out:
        write_json(result, json_out)
        console.print(f"results: {json_out}")
    console.print(f"confusion matrix: {png}")


def _render_domains(result: dict) -> None:
    from edgexfer.evaluate import formatting as fmt

    table = Table(
        title=f"{result['artifact']} ({result['stage']}) on {len(result['domains'])} domains; "
        f"gap = {result['reference']} accuracy − this domain's"
    )
    for column in ("domain", "data", "n", "accuracy", "macro_f1", "gap"):
        table.add_column(column, justify="left" if column in ("domain", "data") else "right")
    for name, row in result["domains"].items():
        gap = "—" if name == result["reference"] else fmt.points(row["gap"])
        table.add_row(
            name,
            row["data"],
            f"{fmt.count(row['n'])} ({row.get('split', 'all')})",
            fmt.percent(row["accuracy"]),
            fmt.percent(row["macro_f1"]),
            gap,
        )
    console.print(table)


@app.command()
def info(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and metrics as JSON."),
) -> None:
    """Show an artifact's manifest (stage, lineage, preprocessing, dataset, versions) and metrics."""
    from edgexfer import api

    data = api.info(artifact)
    if as_json:
        console.print_json(json.dumps(data))
        return
    table = Table(title=f"artifact {artifact}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    manifest = data["manifest"]
    for key in ("stage", "backbone", "weights", "model_file", "seed", "created_at", "schema_version"):
        table.add_row(key, str(manifest.get(key)))
    table.add_row("labels", f"{len(manifest['label_names'])}: {', '.join(manifest['label_names'])}")
    table.add_row("preprocessing", json.dumps(manifest["preprocessing"]))
    if manifest.get("parent"):
        table.add_row("parent", f"{manifest['parent']['path']} (sha256 {manifest['parent']['sha256'][:12]}…)")
    if manifest.get("dataset"):
        table.add_row("dataset", json.dumps(manifest["dataset"]))
    if manifest.get("quantization"):
        table.add_row("quantization", json.dumps(manifest["quantization"]))
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()))
    for key, value in data["metrics"].items():
        if isinstance(value, (int, float, str)) or value is None:
            table.add_row(f"metrics.{key}", str(value))
    console.print(table)


@app.command()
def backbones(
    img_size: Optional[int] = typer.Option(
        None, "--img-size", min=1, help="Count MACs at this input size (default: each backbone's own)."
    ),
) -> None:
    """List the registered backbones: parameters, MACs per image, input size, weights' source."""
    from edgexfer import api
    from edgexfer.evaluate.formatting import macs

    table = Table(title="backbones (headless: no classifier head)")
    for column in ("name", "params", "MACs", "input", "min", "widths", "weights"):
        table.add_column(column, no_wrap=column not in ("widths", "weights"))
    for spec in api.list_backbones():
        size = img_size or spec.default_input_size
        fits = size >= spec.min_input_size
        table.add_row(
            spec.name,
            f"{spec.count_parameters():,}",
            macs(api.backbone_macs(spec.name, size)) if fits else "too small",
            f"{size}px",
            f"{spec.min_input_size}px",
            ", ".join(str(w) for w in spec.widths) or "—",
            spec.weights_source,
        )
    console.print(table)


@data_app.command("list")
def data_list() -> None:
    """The bundled real datasets: images, classes, size, license and source."""
    from edgexfer import api

    table = Table(title="bundled datasets")
    for column in ("name", "images", "classes", "size", "license", "install"):
        table.add_column(column, no_wrap=column == "name")
    for item in api.list_datasets():
        table.add_row(
            item.name, f"{item.images:,}", str(item.classes), f"{item.image_size}px", item.license, item.install
        )
    console.print(table)


@data_app.command("prepare")
def data_prepare(
    name: str = typer.Argument(..., help="mnist-5k | uci-digits | uci-digits-color | fashion-mnist"),
    out: Path = typer.Argument(..., help="Directory to write the image folder to."),
    source: Optional[Path] = typer.Option(None, help="Directory with the source files, where not installed."),
    limit: Optional[int] = typer.Option(None, help="Stratified subset of the training images."),
    seed: int = typer.Option(0),
) -> None:
    """Write a bundled real dataset as an image folder."""
    from edgexfer import api

    summary = api.prepare_data(name, out, source=source, limit=limit, seed=seed)
    state = "already prepared" if summary.get("reused") else "written"
    console.print(
        f"[green]{name}[/green]: {summary.get('images')} images {state} at {out} "
        f"({summary.get('layout')} layout; source {summary.get('source')})"
    )


@app.command("run")
def run_pipeline(
    pipeline: Optional[str] = typer.Argument(
        None, help="Pipeline YAML file, or the name of a shipped recipe (see --list)."
    ),
    list_recipes: bool = typer.Option(False, "--list", help="List the shipped recipes and exit."),
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", help="Where the stages' artifacts go (default: the file's run_dir, or runs/<name>)."
    ),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run this stage and every later one."),
    only: Optional[str] = typer.Option(None, "--only", help="Run only this stage (its inputs must exist)."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="KEY=VALUE override, e.g. finetune.epochs=3 (repeatable)."
    ),
    tensorboard: Optional[Path] = typer.Option(
        None, "--tensorboard", help="Write TensorBoard logs of every training stage under DIR."
    ),
) -> None:
    """Run a pipeline of stages from a YAML file or a shipped recipe; resumes where it stopped, re-running only
    what changed."""
    from edgexfer import api

    if list_recipes:
        _render_recipes()
        return
    if pipeline is None:
        raise ConfigError("pass a pipeline YAML file or a shipped recipe name; edgexfer run --list shows the recipes")
    path = api.resolve_recipe(pipeline)
    _require_train_extra("run pipeline")
    summary = api.run_pipeline(
        path,
        overrides=overrides or [],
        run_dir=run_dir,
        from_stage=from_stage,
        only=only,
        progress=sys.stdout.isatty(),
        log=console.print,
        tensorboard=tensorboard,
    )
    _render_run(summary)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory of `edgexfer run`.")) -> None:
    """(Re)build report.md and report.html of a run from the files its stages wrote."""
    from edgexfer import api

    paths = api.rebuild_report(run_dir)
    console.print(f"report: {paths['report']}\nhtml:   {paths['report_html']}")


def _render_recipes() -> None:
    from edgexfer import api

    table = Table(title="shipped recipes (edgexfer run NAME; copy one to change it)")
    for column in ("name", "description", "file"):
        table.add_column(column, overflow="fold", no_wrap=column == "name")
    for recipe in api.recipes():
        table.add_row(recipe["name"], recipe["description"], str(recipe["file"]))
    console.print(table)


def _render_run(summary: dict) -> None:
    table = Table(title=f"pipeline {summary['pipeline']} ({summary['wall_seconds']:.0f} s) → {summary['run_dir']}")
    for column in ("stage", "status", "seconds"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for name, result in summary["stages"].items():
        seconds = result.get("seconds")
        table.add_row(name, result["status"], f"{seconds:.1f}" if seconds is not None else "—")
    console.print(table)
    if summary.get("report"):
        console.print(f"report: {summary['report']} (and {summary.get('report_html')})")


@app.command()
def demo(
    run_dir: Path = typer.Option(Path("runs/demo"), "--run-dir", help="Where data, artifacts and the report go."),
    full: bool = typer.Option(False, "--full", help="Larger input and longer training (slower, more accurate)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="KEY=VALUE override of models/digits.yaml."),
    seeds: int = typer.Option(
        1,
        "--seeds",
        min=1,
        help="Run over seeds 0..N-1 (seed s>0 in RUN_DIR/seeds/seed-s) and "
        "write mean ± std of each headline figure to RUN_DIR/seeds.json.",
    ),
) -> None:
    """The main job on bundled real data: MNIST → UCI digits, Lite0 → adapted → int8 student → checked."""
    from edgexfer import api

    result = api.demo(
        run_dir, seeds=seeds, full=full, progress=sys.stdout.isatty(), log=console.print, overrides=overrides
    )
    spread = result if seeds > 1 else None
    summary = result["summary"] if seeds > 1 else result
    _render_run(summary)
    from edgexfer.evaluate import formatting as fmt

    names = summary.get("domains", {})
    source, target = names.get("source", "source"), names.get("target", "target")
    table = Table(title=f"headline: accuracy ({source}: held-out test split; {target}: all), size, latency, MACs")
    for column in ("model", "role", f"{source} acc", f"{target} acc", "size", "latency, batch 1", "MACs"):
        table.add_column(column, justify="left" if column in ("model", "role") else "right")
    for row in summary["headline"]:
        table.add_row(
            row["model"],
            row["role"],
            fmt.percent(row["source_accuracy"]),
            fmt.percent(row["target_accuracy"]),
            fmt.size(row["bytes"]),
            fmt.milliseconds(row["latency_ms"]),
            fmt.macs(row["macs"]),
        )
    console.print(table)
    if spread is not None:
        table = Table(title=f"over seeds {', '.join(map(str, spread['seeds']))}: mean ± std (sample)")
        for column in ("figure", "mean ± std", "per seed"):
            table.add_column(column, justify="left" if column == "figure" else "right")
        for name, figure in spread["metrics"].items():
            table.add_row(
                name, f"{figure['mean']:.4f} ± {figure['std']:.4f}", " ".join(f"{v:.4f}" for v in figure["values"])
            )
        console.print(table)
        console.print(f"spread: {spread['file']}")
    console.print(f"report: {summary.get('report')}")


def _render_training_summary(artifact) -> None:
    metrics = artifact.metrics
    table = Table(title=f"{artifact.manifest.stage}: {artifact.manifest.backbone} → {artifact.path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    # With --per-class the "val" split is the labelled training images: say so.
    names = {"val_accuracy": "accuracy on the labelled images"} if metrics.get("few_labels") else {}
    for key in ("val_accuracy", "test_accuracy", "params", "model_bytes", "train_images_per_second", "peak_rss_mb"):
        value = metrics.get(key)
        if value is not None:
            shown = f"{value:.4f}" if isinstance(value, float) and value <= 1 else f"{value:,}"
            table.add_row(names.get(key, key), shown)
    for key, value in metrics.get("timings_seconds", {}).items():
        table.add_row(key, f"{value:.1f}")
    if metrics.get("data_cache"):
        cache = metrics["data_cache"]
        table.add_row("image cache / features", f"{cache['images']} / {cache['features']} ({cache['mode']})")
    console.print(table)
    if metrics.get("test"):
        _render_per_class(metrics["test"], "test split, per class")


def _render_evaluation(result: dict) -> None:
    table = Table(title=f"{result['artifact']} on {result['data']} ({result['split']}, n={result['n']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key.endswith("accuracy") or key == "macro_f1":
            table.add_row(key, f"{value:.4f}")
    console.print(table)
    _render_per_class(result, "per class")


def _render_per_class(result: dict, title: str) -> None:
    table = Table(title=title)
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="right" if column != "class" else "left")
    for name, row in result["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    console.print(table)


# Modules that add stage commands with ``register(app)``; each keeps its commands thin too.
_COMMAND_MODULES: tuple[str, ...] = (
    "edgexfer.cli.compress",
    "edgexfer.cli.deploy",
    "edgexfer.cli.crossdomain",
    "edgexfer.cli.repro",
    "edgexfer.cli.scale",
)


def _register_command_modules() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_command_modules()


def main() -> None:
    """Console entry point: runs the app and maps errors to one line and an exit code.

    Typer's standalone mode already handles usage errors (exit 2) and Ctrl-C; stages write
    artifacts atomically, so an interrupted run leaves nothing half-written. SIGTERM (what
    ``timeout``, ``docker stop`` and CI cancellation send) is handled like Ctrl-C, so the same
    clean-up runs (temporary artifact folders and cache files removed); the exit code is 143.
    """
    from edgexfer.interrupts import terminate_like_interrupt

    try:
        with terminate_like_interrupt():
            app()
    except EdgexferError as exc:
        from rich.markup import escape  # a message may hold brackets, e.g. "edgexfer[train]"

        err_console.print(
            f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True, markup=True
        )
        sys.exit(exc.exit_code)
    except ImportError as exc:  # a training command on the runtime-only install (no [train] extra)
        from edgexfer.tf_env import missing_train_extra

        error = missing_train_extra(exc)
        if error is None:
            raise
        from rich.markup import escape

        err_console.print(
            f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True, markup=True
        )
        sys.exit(error.exit_code)
