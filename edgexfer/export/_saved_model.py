"""Keras → TensorFlow SavedModel directory with a ``serving_default`` signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ExportError
from edgexfer.runtime.metadata import EmbeddedInfo, first_line

INPUT_NAME = "input"


def convert_saved_model(
    keras_model,
    dest: Path,
    quant: str,
    info: EmbeddedInfo,
    *,
    calibration: np.ndarray | None = None,
    opset: int | None = None,
    is_qat: bool = False,
) -> dict[str, Any]:
    """Write the SavedModel directory ``dest``; labels and preprocessing go to
    ``assets.extra/`` (the SavedModel convention for files the graph does not use)."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    shape = [None, *keras_model.input_shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
    def serve(x):
        return {"probabilities": keras_model(x, training=False)}

    try:
        tf.saved_model.save(keras_model, str(dest), signatures={"serving_default": serve})
    except Exception as exc:
        raise ExportError(f"SavedModel export failed: {first_line(exc)}") from exc
    extra = dest / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "edgexfer.json").write_text(info.to_json() + "\n")
    (extra / "labels.txt").write_text("\n".join(info.label_names) + "\n")
    return {
        "quantization": {
            "mode": quant,
            "from_qat": bool(is_qat),
            "input": {"dtype": "float32"},
            "output": {"dtype": "float32"},
        },
        "warnings": [],
    }
