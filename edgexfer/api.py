"""The Python API. The CLI mirrors it one to one; every function returns plain data or an
``Artifact`` and raises ``EdgexferError`` subclasses for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact
from edgexfer.config import EvaluateConfig, FinetuneConfig


def finetune(data: str | Path, out: str | Path, *, progress: bool = False, log=None, **options: Any) -> Artifact:
    """Fine-tune a pretrained backbone on an image folder. ``options`` are ``FinetuneConfig`` fields."""
    from edgexfer.train.finetune import finetune as run

    config = options.pop("config", None) or FinetuneConfig.build(**options)
    return run(data, out, config, progress=progress, log=log or (lambda *_: None))


def evaluate(
    artifact: str | Path, data: str | Path, *, confusion_png: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Accuracy, top-k, per-class metrics and confusion matrix of an artifact on an image folder."""
    from edgexfer.evaluate.evaluator import evaluate_artifact

    return evaluate_artifact(artifact, data, EvaluateConfig.build(**options), confusion_png=confusion_png)


def info(artifact: str | Path) -> dict[str, Any]:
    """The manifest and metrics of an artifact."""
    loaded = Artifact(artifact)
    return {"manifest": loaded.manifest.to_dict(), "metrics": loaded.metrics}


def prepare_data(
    name: str, out: str | Path, *, source: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Write a bundled real dataset (mnist-5k, uci-digits, fashion-mnist) as an image folder."""
    from edgexfer.data.bundled import prepare_dataset

    return prepare_dataset(name, out, source=source, limit=limit, seed=seed)


def list_datasets():
    from edgexfer.data.bundled import list_datasets as listing

    return listing()


def list_backbones():
    from edgexfer.backbones.registry import list_backbones as listing

    return listing()


def backbone_macs(name: str, input_size: int | None = None, width: float | None = None) -> int:
    """Multiply-accumulates per image of a registered backbone (headless) at ``input_size``."""
    from edgexfer.evaluate.macs import backbone_macs as count

    return count(name, input_size, width)


# The other stages live next to their implementation; the API names them in one place.
def distill(teacher, data, out, **options):
    """Knowledge distillation of a teacher artifact into a student (``DistillConfig`` options)."""
    from edgexfer.compress.api import distill as run

    return run(teacher, data, out, **options)


def prune(model, data, out, **options):
    """Magnitude pruning while fine-tuning (``PruneConfig`` options)."""
    from edgexfer.compress.api import prune as run

    return run(model, data, out, **options)


def quantize(model, data, out, **options):
    """QAT (pruning-preserving on a pruned input) or PTQ settings (``QuantizeConfig`` options)."""
    from edgexfer.compress.api import quantize as run

    return run(model, data, out, **options)


def quantize_check(model, **options):
    """QAT preflight before any training: per layer, what will be quantized and what stays float; on a
    student name (``img_size``, ``width``) also the float tensors its int8 TFLite keeps."""
    from edgexfer.compress.api import quantize_check as run

    return run(model, **options)


def adapt(model, source, target, out, method=None, **options):
    """Unsupervised domain adaptation: adabn | coral | dann | pseudo-label | auto, or the source-free
    shot (``source=None``) (``AdaptConfig`` options)."""
    from edgexfer.train.adapt import adapt as run

    return run(model, source, target, out, method, **options)


def fuse(source, finetuned, out, alpha=None, **options):
    """θ = α·θ_source + (1−α)·θ_finetuned; ``alpha="auto"`` sweeps it on ``val_data``."""
    from edgexfer.train.fuse import fuse as run

    return run(source, finetuned, out, alpha, **options)


def evaluate_domains(artifact, domains, **options):
    """Accuracy on several domains ({name: folder}) and the gap to the first."""
    from edgexfer.evaluate.domains import evaluate_domains as run

    return run(artifact, domains, **options)


def export(artifact, out, fmt, quant=None, **options):
    """Export to tflite | onnx | saved_model with labels and preprocessing embedded."""
    from edgexfer.export.stage import export_stage

    return export_stage(artifact, out, fmt, quant, **options)


def check(artifacts, data, **options):
    """Parity with the Keras parent, size and latency of exported artifacts; a gate."""
    from edgexfer.evaluate.check import check_artifacts

    return check_artifacts(artifacts, data, **options)


def benchmark(models, **options):
    """Latency, throughput and size across formats and thread counts."""
    from edgexfer.evaluate.benchmark import benchmark_models

    return benchmark_models(models, **options)


def bundle(artifact, dest):
    """A deploy bundle of an export artifact: model, labels, README with the preprocessing, example program."""
    from edgexfer.export.bundle import write_bundle

    return write_bundle(artifact, dest)


def predict(model, inputs, **options):
    """On-device inference (no TensorFlow) on image files or folders; top-k per image."""
    from edgexfer.runtime.predict import predict_paths

    return predict_paths(model, inputs, **options)


def run_pipeline(pipeline, **options):
    """Run or resume a YAML pipeline (``edgexfer run``): a file, or a shipped recipe's name."""
    from edgexfer.pipeline import run_pipeline as run

    return run(resolve_recipe(pipeline), **options)


def resolve_recipe(pipeline) -> Path:
    """The pipeline file ``pipeline`` names: a path, or a shipped recipe's name."""
    from edgexfer.recipes_index import resolve_pipeline

    return resolve_pipeline(pipeline)


def recipes() -> list[dict[str, Any]]:
    """The shipped recipes: name, one-line description, file."""
    from edgexfer.recipes_index import list_recipes, recipe_description

    return [
        {"name": name, "description": recipe_description(path), "file": path} for name, path in list_recipes().items()
    ]


def rebuild_report(run_dir) -> dict[str, str]:
    """(Re)build report.md and report.html of a run directory from the files its stages wrote."""
    from edgexfer.pipeline import rebuild_report as run

    return run(run_dir)


def demo(run_dir="runs/demo", *, seeds: int = 1, **options) -> dict[str, Any]:
    """The README's main job (``models/digits.yaml``) with its headline rows; with ``seeds`` > 1,
    over seeds 0..N-1: ``{"summary", "seeds", "metrics", "file"}`` (mean ± std per figure)."""
    if seeds > 1:
        from edgexfer.demo.seeds import run_demo_seeds

        return run_demo_seeds(run_dir, seeds=seeds, **options)
    from edgexfer.demo import run_demo

    return run_demo(run_dir, **options)


def reproduce(target, **options):
    """Re-run the stage that made an artifact (or each stage of a run directory) and compare."""
    from edgexfer.reproduce import reproduce as run

    return run(target, **options)


def checkpoints(out: str | Path | None = None) -> dict[str, Any]:
    """The checkpoints interrupted training runs left (``edgexfer clean``): ``{"root": DIR,
    "entries": [...]}``; with ``out``, only that of the stage writing that artifact directory."""
    from edgexfer.train.resume import checkpoint_dir, checkpoints_root, list_checkpoints

    entries = list_checkpoints()
    if out is not None:
        entries = [entry for entry in entries if Path(entry["dir"]) == checkpoint_dir(out)]
    return {"root": checkpoints_root(), "entries": entries}


def remove_checkpoints(out: str | Path | None = None) -> list[dict[str, Any]]:
    """Remove the checkpoints of interrupted runs (those not running), or only that of ``out``."""
    from edgexfer.train.resume import remove_checkpoints as remove

    return remove(str(out) if out else None)
