"""Keras → TFLite with ``tf.lite.TFLiteConverter`` (none | fp16 | dynamic | int8)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ExportError
from edgexfer.runtime.metadata import EmbeddedInfo, embed_tflite_metadata


def convert_tflite(keras_model, dest: Path, quant: str, info: EmbeddedInfo, *,
                   calibration: np.ndarray | None = None, opset: int | None = None,
                   is_qat: bool = False) -> dict[str, Any]:
    """Write ``dest`` (a ``.tflite`` file with edgexfer metadata); return quantization details.

    int8 is full-integer with int8 input and output. A QAT model takes its ranges from its
    fake-quant layers; calibration images, when given, still pin every op to int8 kernels
    (without them a partly-QAT model silently keeps fp32 ops, so fp32 tensors are counted).
    """
    content = tflite_bytes(keras_model, quant, calibration)
    details = describe_tflite(content)
    warnings_out = []
    if quant == "int8":
        if details["input"]["dtype"] != "int8":
            raise ExportError(f"TFLite int8 conversion produced {details['input']['dtype']} input; "
                              "pass calibration images (a representative dataset) so every op is int8")
        if details["fp32_tensor_count"]:
            warnings_out.append(f"int8 model keeps {details['fp32_tensor_count']} float32 tensors "
                                f"(e.g. {details['fp32_tensors'][0]!r}); those ops run in float")

    dest.write_bytes(embed_tflite_metadata(content, info))
    quantization = {"mode": quant, "from_qat": bool(is_qat), **details}
    if quant == "int8":
        quantization["calibration_images"] = 0 if calibration is None else int(len(calibration))
    return {"quantization": quantization, "warnings": warnings_out}


def tflite_bytes(keras_model, quant: str, calibration: np.ndarray | None = None,
                 int8_io: bool = True) -> bytes:
    """Run ``TFLiteConverter`` for one quantization mode; ``int8_io=False`` keeps float32
    input/output around an int8 graph (what tf2onnx's ``from_tflite`` is given)."""
    from edgexfer._env import import_tf

    tf, _ = import_tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if quant != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if quant == "int8":
        if calibration is not None:
            converter.representative_dataset = _representative_dataset(calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        with warnings.catch_warnings():
            # "Statistics for quantized inputs were expected": harmless, the
            # representative dataset or the QAT ranges provide them.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as exc:
        raise ExportError(f"TFLite conversion (--quant {quant}) failed: {_converter_error_line(exc)}") from exc


def describe_tflite(content: bytes, max_names: int = 10) -> dict[str, Any]:
    """Input/output dtype and quantization, and the float32 tensors, of a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    tensors = interpreter.get_tensor_details()
    fp32 = [t["name"] for t in tensors if np.dtype(t["dtype"]) == np.float32]
    return {"input": _io(interpreter.get_input_details()[0]),
            "output": _io(interpreter.get_output_details()[0]),
            "tensor_count": len(tensors),
            "fp32_tensor_count": len(fp32),
            "fp32_tensors": fp32[:max_names]}


def _io(detail: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    out: dict[str, Any] = {"dtype": np.dtype(detail["dtype"]).name}
    if scale:
        out.update(scale=float(scale), zero_point=int(zero_point))
    return out


def _representative_dataset(calibration: np.ndarray):
    images = np.asarray(calibration, dtype=np.float32)

    def generate():
        for i in range(len(images)):
            yield [images[i:i + 1]]

    return generate


def _converter_error_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # converter errors start with a long location prefix; the useful part is the 'error:' line
    for line in lines:
        if "error:" in line:
            return line[line.index("error:"):]
    return lines[0] if lines else type(exc).__name__
