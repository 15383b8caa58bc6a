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


def evaluate(artifact: str | Path, data: str | Path, *, confusion_png: str | Path | None = None,
             **options: Any) -> dict[str, Any]:
    """Accuracy, top-k, per-class metrics and confusion matrix of an artifact on an image folder."""
    from edgexfer.evaluate.evaluator import evaluate_artifact

    return evaluate_artifact(artifact, data, EvaluateConfig.build(**options), confusion_png=confusion_png)


def info(artifact: str | Path) -> dict[str, Any]:
    """The manifest and metrics of an artifact."""
    loaded = Artifact(artifact)
    return {"manifest": loaded.manifest.to_dict(), "metrics": loaded.metrics}


def prepare_data(name: str, out: str | Path, *, source: str | Path | None = None, limit: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Write a bundled real dataset (mnist-5k, uci-digits, fashion-mnist) as an image folder."""
    from edgexfer.data.bundled import prepare_dataset

    return prepare_dataset(name, out, source=source, limit=limit, seed=seed)


def list_datasets():
    from edgexfer.data.bundled import list_datasets as listing

    return listing()


def list_backbones():
    from edgexfer.backbones.registry import list_backbones as listing

    return listing()
