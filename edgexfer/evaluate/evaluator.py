"""Evaluating a Keras artifact on an image folder whose classes match its labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact
from edgexfer.config import EvaluateConfig
from edgexfer.keras_io import load_keras_model


def predict_samples(model, samples: list, preprocessing, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a Keras model over ``samples`` (streamed, not cached), and their labels."""
    from edgexfer.data import make_dataset

    images = make_dataset(samples, preprocessing, batch_size=batch_size, cache=False, return_labels=False)
    probs = model.predict(images, verbose=0)
    return probs, np.array([s.label for s in samples], dtype=int)


def evaluate_artifact(
    artifact_path: str | Path, data_dir: str | Path, config: EvaluateConfig, confusion_png: str | Path | None = None
) -> dict[str, Any]:
    """Accuracy, top-k, per-class metrics and the confusion matrix of a Keras artifact."""
    from edgexfer.evaluate.metrics import classification_metrics, save_confusion_png
    from edgexfer.evaluate.splits import samples_of, scan_domain

    artifact = Artifact(artifact_path)
    manifest = artifact.manifest
    # Carved as the run's training data was, so --split test is the run's held-out split.
    dataset = scan_domain(artifact, data_dir, strict=config.strict)
    samples = samples_of(dataset, config.split, where=str(data_dir))
    from edgexfer.data.pipeline import data_errors

    model = load_keras_model(artifact.model_path)
    with data_errors():
        probs, labels = predict_samples(model, samples, manifest.preprocessing, config.batch_size)
    result = classification_metrics(labels, probs, manifest.label_names, top_k=config.top_k)
    result.update(
        artifact=str(artifact.path),
        data=str(Path(data_dir)),
        split=config.split,
        skipped_files=[str(p) for p, _ in dataset.skipped],
    )
    if confusion_png:
        save_confusion_png(
            result["confusion_matrix"],
            manifest.label_names,
            confusion_png,
            title=f"{manifest.backbone} on {Path(data_dir).name} ({config.split})",
        )
        result["confusion_png"] = str(confusion_png)
    return result


def write_json(result: dict[str, Any], path: str | Path) -> None:
    from edgexfer.tempfiles import write_text_atomically

    write_text_atomically(path, json.dumps(result, indent=2) + "\n")


def check_output_file(path: str | Path, option: str) -> None:
    """``ConfigError`` when ``path`` cannot be written as a file: checked before the work, so an
    evaluation is not run only to fail at the end. Probes by creating a file beside it
    (``os.access`` says yes to root for read-only places)."""
    import tempfile

    from edgexfer.errors import ConfigError
    from edgexfer.tempfiles import tmp_prefix

    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'results.json')!r}"
            if option == "--json"
            else f"{option} {str(path)!r} is a folder; give a file name"
        )
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r}: the folder {str(parent)!r} does not exist; create it or choose another path"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=tmp_prefix(path.name)):
            pass
        if path.exists():
            with open(path, "ab"):
                pass
    except OSError as exc:
        raise ConfigError(
            f"{option} {str(path)!r} cannot be written ({exc.strerror or exc}); choose a writable location"
        ) from None
