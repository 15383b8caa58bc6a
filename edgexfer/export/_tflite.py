"""Keras → TFLite with ``tf.lite.TFLiteConverter`` (none | fp16 | dynamic | int8)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError, ExportError
from edgexfer.export.tflite_io import (
    DEFAULT_INT8_IO_TYPE,
    check_io_type,
    not_integer_error,
    pixel_quantization,
    set_pixel_input,
)
from edgexfer.runtime.metadata import EmbeddedInfo, embed_tflite_metadata
from edgexfer.runtime.tflite_metadata import ModelDescription, embed_standard_metadata
from edgexfer.stdio import quiet_native_stderr


def convert_tflite(
    keras_model,
    dest: Path,
    quant: str,
    info: EmbeddedInfo,
    *,
    calibration: np.ndarray | None = None,
    opset: int | None = None,
    is_qat: bool = False,
    io_type: str | None = None,
) -> dict[str, Any]:
    """Write ``dest`` (a ``.tflite`` file with edgexfer metadata and standard TFLite Metadata);
    return quantization details.

    int8 is full-integer; its input and output are ``io_type`` (``tflite_io``: uint8 by
    default, what MediaPipe Tasks and the Task Library accept; int8; float32). A QAT model
    takes its ranges from its fake-quant layers; calibration images, when given, still pin
    every op to int8 kernels (without them a partly-QAT model silently keeps fp32 ops, so
    fp32 tensors are counted).
    """
    check_io_type(io_type)
    warnings_out = []
    if quant != "int8":
        content = tflite_bytes(keras_model, quant, calibration)
        details = describe_tflite(content)
        if io_type in ("uint8", "int8"):
            raise not_integer_error(io_type, quant, details)
        io = "float32"
    else:
        io = io_type or DEFAULT_INT8_IO_TYPE
        if io_type == "uint8":
            pixel_quantization(info.preprocessing)  # per-channel mean/std: fail before converting
        elif io_type is None:
            try:
                pixel_quantization(info.preprocessing)
            except ConfigError as exc:
                io = "int8"
                warnings_out.append(f"int8 I/O kept: {exc}".replace("; use --io-type float32 or int8", ""))
        content = tflite_bytes(keras_model, quant, calibration, io_type=io)
        details = describe_tflite(content, exclude_io=io == "float32")
        if io != "float32" and details["input"]["dtype"] != io:
            raise ExportError(
                f"TFLite int8 conversion produced {details['input']['dtype']} input; "
                "pass calibration images (a representative dataset) so every op is int8"
            )
        if details["fp32_tensor_count"] and io == "uint8":
            if io_type == "uint8":
                raise not_integer_error(io, quant, details)
            io = "int8"  # the default falls back to the int8 I/O a partly-int8 model always had
            content = tflite_bytes(keras_model, quant, calibration, io_type=io)
            details = describe_tflite(content)
        if details["fp32_tensor_count"]:
            warnings_out.append(
                f"int8 model keeps {details['fp32_tensor_count']} float32 tensors "
                f"(e.g. {details['fp32_tensors'][0]!r}); those ops run in float"
            )
        if io == "uint8":
            content, bias = set_pixel_input(content, info.preprocessing)
            details = describe_tflite(content)
            if bias:
                warnings_out.append(
                    f"uint8 input: mean {info.preprocessing.mean[0]} is not an integer; its "
                    f"zero point is rounded, a bias of {bias:.4f} in model-input units"
                )

    io_record = {"io_type": io, "input": details["input"], "output": details["output"]}
    info = EmbeddedInfo(info.label_names, info.preprocessing, {**info.manifest, **io_record})
    content = embed_tflite_metadata(content, info)
    dest.write_bytes(embed_standard_metadata(content, info, model_description(info, quant, io)))
    quantization = {"mode": quant, "from_qat": bool(is_qat), "io_type": io, **details}
    if quant == "int8":
        quantization["calibration_images"] = 0 if calibration is None else int(len(calibration))
    return {"quantization": quantization, "warnings": warnings_out}


def model_description(info: EmbeddedInfo, quant: str, io: str) -> ModelDescription:
    """Name, description and version of the standard metadata's ``ModelMetadata``."""
    from edgexfer import __version__

    manifest = info.manifest
    backbone = manifest.get("backbone") or "image"
    names = ", ".join(info.label_names[:10]) + (" …" if len(info.label_names) > 10 else "")
    return ModelDescription(
        name=f"{backbone} classifier",
        description=(
            f"Classifies an image into one of {len(info.label_names)} classes ({names}). "
            f"Exported by edgexfer from its {manifest.get('source_stage', '?')} stage; "
            f"quantization {quant}, {io} input and output."
        ),
        version=f"edgexfer {__version__}",
    )


def tflite_bytes(
    keras_model, quant: str, calibration: np.ndarray | None = None, int8_io: bool = True, io_type: str | None = None
) -> bytes:
    """Run ``TFLiteConverter`` for one quantization mode. For int8, ``io_type`` (uint8 | int8 |
    float32) sets the input/output type; without it ``int8_io`` says int8 (True) or float32
    (False: float input/output around an int8 graph, what tf2onnx's ``from_tflite`` is given)."""
    from edgexfer.tf_env import import_tf

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
        io_type = io_type or ("int8" if int8_io else "float32")
        if io_type != "float32":
            converter.inference_input_type = getattr(tf, io_type)
            converter.inference_output_type = getattr(tf, io_type)
    try:
        # The converter's C++ prints "fully_quantize: 0, inference_type: 6 …" on fd 2: hidden unless --verbose.
        with warnings.catch_warnings(), quiet_native_stderr():
            # "Statistics for quantized inputs were expected": harmless, the
            # representative dataset or the QAT ranges provide them.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as exc:
        raise ExportError(f"TFLite conversion (--quant {quant}) failed: {_converter_error_line(exc)}") from exc


def describe_tflite(content: bytes, max_names: int = 10, exclude_io: bool = False) -> dict[str, Any]:
    """Input/output dtype and quantization, and the float32 tensors, of a TFLite model
    (``exclude_io``: not counting the input and output tensors, for float I/O around int8)."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_native_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
        interpreter = Interpreter(model_content=content)
    tensors = interpreter.get_tensor_details()
    io_indices = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    fp32 = [
        t["name"]
        for t in tensors
        if np.dtype(t["dtype"]) == np.float32 and not (exclude_io and t["index"] in io_indices)
    ]
    return {
        "input": _io(interpreter.get_input_details()[0]),
        "output": _io(interpreter.get_output_details()[0]),
        "tensor_count": len(tensors),
        "fp32_tensor_count": len(fp32),
        "fp32_tensors": fp32[:max_names],
    }


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
            yield [images[i : i + 1]]

    return generate


def _converter_error_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # converter errors start with a long location prefix; the useful part is the 'error:' line
    for line in lines:
        if "error:" in line:
            return line[line.index("error:") :]
    return lines[0] if lines else type(exc).__name__
