"""Classify image files and folders with an exported model: what ``edgexfer predict`` runs.

Imports no TensorFlow (``edgexfer predict`` must start fast and run where TensorFlow is not
installed): numpy, Pillow, LiteRT/onnxruntime and TF-free edgexfer modules only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError, DataError, EdgexferError
from edgexfer.runtime.images import list_image_files, load_image
from edgexfer.runtime.metadata import first_line
from edgexfer.runtime.model import EdgeModel, Prediction, load_model


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Image paths from files and folders (folders are searched recursively for images, in
    sorted order); a missing path is a ``DataError``."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += list_image_files(path)
        elif path.exists():
            paths.append(path)
        else:
            raise DataError(f"{str(path)!r} does not exist; pass image files or folders of images")
    if not paths:
        raise DataError("no images given; pass image files or folders of images")
    return paths


@dataclass(frozen=True)
class PredictionRun:
    """What ``predict_paths`` returns, typed for a renderer (the dict is what ``--json`` prints)."""

    model: str
    backend: str
    labels: tuple[str, ...]
    predictions: tuple[Prediction, ...]

    @classmethod
    def of(cls, result: dict[str, Any]) -> PredictionRun:
        return cls(
            model=result["model"],
            backend=result["backend"],
            labels=tuple(result["labels"]),
            predictions=tuple(
                Prediction(p["path"], p["label"], p["score"], [(k["label"], k["score"]) for k in p["top_k"]])
                for p in result["predictions"]
            ),
        )


def predict_paths(
    model: EdgeModel | str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    num_threads: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Top-``k`` predictions for image files and folders.

    ``model``: an ``EdgeModel`` or a ``.tflite``/``.onnx`` file or export artifact directory.
    ``on_batch(done, total)`` is called after each batch (for a progress bar). Returns
    ``model``, ``backend``, ``labels``, ``count`` and ``predictions`` (``Prediction.to_dict()``
    rows). An unreadable image raises ``DataError`` naming the file.
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    edge = model if isinstance(model, EdgeModel) else load_model(model, num_threads=num_threads)
    paths = expand_inputs(inputs)
    k = min(top_k, len(edge.label_names))
    predictions: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        probs = edge.predict_proba(np.stack([_decode(p, edge) for p in chunk]), batch_size)
        for path, row in zip(chunk, probs):
            order = np.argsort(-row, kind="stable")[:k]
            ranked = [(edge.label_names[i], float(row[i])) for i in order]
            predictions.append(Prediction(str(path), ranked[0][0], ranked[0][1], ranked))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(paths)), len(paths))
    return {
        "model": str(edge.path),
        "backend": edge.backend,
        "labels": list(edge.label_names),
        "count": len(predictions),
        "predictions": [p.to_dict() for p in predictions],
    }


def _decode(path: Path, model: EdgeModel) -> np.ndarray:
    """One image at the model's input size; anything Pillow raises becomes a ``DataError``."""
    try:
        return load_image(path, model.preprocessing)
    except EdgexferError:
        raise
    except Exception as exc:  # noqa: BLE001 - an image mode or codec Pillow cannot convert
        raise DataError(
            f"cannot read image {str(path)!r}: unsupported image ({type(exc).__name__}: "
            f"{first_line(exc)}); convert it to an RGB PNG or JPEG"
        ) from None
