"""What every adapt method (``adapt``'s source-based methods and source-free ``shot``) writes
about itself into its artifact: the manifest of the adapted model and the metrics of the run
they share. Each method's own fields (its settings, accuracies, which data it read) stay with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact, Manifest
from edgexfer.keras_io import MODEL_FILE, count_params
from edgexfer.train import common
from edgexfer.train.batchnorm import ModelSplit


def adapted_manifest(
    parent: Artifact, config, dataset: dict[str, Any], record: dict[str, Any], **extra: Any
) -> Manifest:
    """The manifest of a model adapted from ``parent`` with ``config`` (an ``AdaptConfig``): the
    parent's classes, preprocessing, backbone and weights, the lineage, the config and its seed;
    ``dataset`` (its ``path`` is the target domain: the one the model is deployed on, and export
    calibrates int8 on); the parent's extras, then ``extra``, then ``record`` as ``"adapt"``."""
    return parent.child_manifest(
        "adapt",
        config.model_dump(),
        MODEL_FILE,
        seed=config.seed,
        dataset=dataset,
        extra={**parent.manifest.extra, **extra, "adapt": record},
    )


def adapted_metrics(
    method_metrics: dict[str, Any],
    *,
    target_had_labels: bool,
    images: dict[str, int],
    split: ModelSplit,
    history: dict[str, Any],
    resumed: bool,
    model,
    model_file: Path,
    timings: dict[str, float],
    frozen_head: list[str] | None = None,
) -> dict[str, Any]:
    """``method_metrics`` (the method's own), then what every adapt method records of its run:
    the images it read, the trained layers (and shot's ``frozen_head``) and the cut, the
    training history, whether it resumed, the written ``model``'s size, the timings and the
    peak memory."""
    return {
        **method_metrics,
        "target_had_labels": target_had_labels,
        "images": images,
        "trained_layers": split.trained_layer_names,
        **({"frozen_head": frozen_head} if frozen_head is not None else {}),
        "cut": split.cut_name,
        "history": history,
        "resumed": resumed,
        "params": count_params(model),
        "model_bytes": model_file.stat().st_size,
        "timings_seconds": timings,
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
    }
