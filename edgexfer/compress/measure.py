"""What a compression stage changed, measured: accuracy on the test split, weight sparsity,
sizes (raw and gzip), and the converted TFLite model run on LiteRT.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Manifest, Preprocessing

# Weight variables that hold a layer's kernel (what pruning zeroes and sparsity is measured on).
KERNEL_SUFFIXES = ("/kernel:0", "/depthwise_kernel:0", "/pointwise_kernel:0")
_EVAL_CHUNK = 1024


def keras_probs(model, images_uint8: np.ndarray, preprocessing: Preprocessing, batch_size: int = 256) -> np.ndarray:
    """Probabilities of a Keras model on uint8 pixels, preprocessed in chunks (bounded memory)."""
    from edgexfer.runtime.images import normalize

    outputs = []
    for start in range(0, len(images_uint8), _EVAL_CHUNK):
        x = normalize(images_uint8[start : start + _EVAL_CHUNK], preprocessing)
        outputs.append(model.predict(x, batch_size=batch_size, verbose=0))
    return np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean()) if len(labels) else float("nan")


def kernel_variables(model) -> list[tuple[str, Any]]:
    """``(layer name, variable)`` of every kernel (Conv/Dense/DepthwiseConv …), wrappers included."""
    found = []
    for variable in model.weights:
        name = variable.name
        if name.endswith(KERNEL_SUFFIXES):
            found.append((name.split("/")[0], variable))
    return found


def weight_stats(model) -> dict[str, Any]:
    """Parameter count, non-zero parameters and the zero fraction of every kernel."""
    from edgexfer.keras_io import count_params

    layers: dict[str, dict[str, Any]] = {}
    zeros = total = 0
    for layer, variable in kernel_variables(model):
        values = variable.numpy()
        n_zero = int(values.size - np.count_nonzero(values))
        entry = layers.setdefault(layer, {"params": 0, "zeros": 0})
        entry["params"] += int(values.size)
        entry["zeros"] += n_zero
        zeros += n_zero
        total += int(values.size)
    for entry in layers.values():
        entry["sparsity"] = round(entry["zeros"] / entry["params"], 4) if entry["params"] else 0.0
    params = count_params(model)
    all_zeros = 0
    for weight in model.weights:
        values = weight.numpy()
        all_zeros += int(values.size - np.count_nonzero(values))
    return {
        "params": params,
        "params_nonzero": params - all_zeros,
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "kernel_params": total,
        "layers": layers,
    }


def bytes_sizes(content: bytes) -> dict[str, int]:
    """Raw and gzip size: gzip shows what pruning's zeros save once a file is compressed."""
    return {"size_bytes": len(content), "gzip_bytes": len(gzip.compress(content, compresslevel=9))}


def file_sizes(path: Path) -> dict[str, int]:
    return bytes_sizes(Path(path).read_bytes())


def quiet_native_logs():
    """Hide the converter's and LiteRT's C++ lines on fd 2 ("fully_quantize: 0 …") unless verbose."""
    from edgexfer.stdio import quiet_native_stderr

    return quiet_native_stderr()


def converted_tflite(
    keras_model,
    manifest: Manifest,
    quant: str,
    *,
    calibration: np.ndarray | None,
    is_qat: bool,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Convert ``keras_model`` to TFLite with edgexfer's exporter, run it with LiteRT on the
    evaluation images and describe it: accuracy, size, gzip size, float32 tensors, sparsity."""
    from edgexfer.compress.tflite_stats import tflite_weight_sparsity
    from edgexfer.export import export_model
    from edgexfer.runtime import load_model

    with tempfile.TemporaryDirectory(prefix="edgexfer-measure-") as tmp:
        with quiet_native_logs():
            info = export_model(
                keras_model,
                manifest,
                tmp,
                "tflite",
                quant,
                calibration=calibration if quant == "int8" else None,
                is_qat=is_qat,
            )
        path = Path(tmp) / info["model_file"]
        with quiet_native_logs():
            model = load_model(path, label_names=manifest.label_names, preprocessing=manifest.preprocessing)
            probs = model.predict_proba(images_uint8, batch_size=64)
        content = path.read_bytes()
        if keep is not None:
            keep.write_bytes(content)
    quantization = info["quantization"]
    sparsity = tflite_weight_sparsity(content)
    return {
        "quant": quant,
        "accuracy": accuracy(probs, labels),
        "size_bytes": info["size_bytes"],
        "gzip_bytes": info["gzip_bytes"],
        "fp32_tensor_count": quantization.get("fp32_tensor_count"),
        "input_dtype": quantization.get("input", {}).get("dtype"),
        "warnings": info["warnings"],
        "weight_sparsity": sparsity["sparsity"],
        "weight_layers": sparsity["layers"],
    }
