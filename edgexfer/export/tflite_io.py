"""Input/output types of an exported TFLite model (``export --io-type uint8|int8|float32``).

- ``uint8`` (the default for a fully-int8 model): what MediaPipe Tasks' ``ImageClassifier`` and
  the TFLite Task Library accept for a quantized model. They feed raw pixels 0..255, so the
  uint8 input tensor is given the quantization ``scale = 1/std``, ``zero_point = mean``: its
  real value is then ``(pixel - mean) / std``, edgexfer's preprocessing, and the converter's
  QUANTIZE op (uint8 → int8) requantizes it to the calibrated int8 range the graph was built
  for. The output is uint8 probabilities (scale 1/256, zero point 0).
- ``int8``: int8 input and output with the calibrated quantization (edgexfer's runtime and
  TFLite Micro quantize ``(x - mean) / std`` themselves).
- ``float32``: float input and output around the int8 graph (QUANTIZE / DEQUANTIZE ops at the
  edges); the only type for non-int8 exports.

Imports no TensorFlow (the conversion itself happens in ``_tflite``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgexfer.artifact import Preprocessing
from edgexfer.errors import ConfigError, ExportError

IO_TYPES = ("uint8", "int8", "float32")
DEFAULT_INT8_IO_TYPE = "uint8"
_QUANTIZE_OPCODE_NAME = "QUANTIZE"


def check_io_type(io_type: str | None) -> None:
    if io_type is not None and io_type not in IO_TYPES:
        raise ConfigError(f"--io-type {io_type!r} is not an I/O type; allowed: {', '.join(IO_TYPES)}")


def pixel_quantization(preprocessing: Preprocessing) -> tuple[float, int, float]:
    """``(scale, zero_point, bias)`` that make a uint8 input's real value ``(pixel - mean) / std``.

    ``bias`` is the error in model-input units when ``mean`` is not an integer (the zero point
    is). ``ConfigError`` when the channels have different mean/std: one per-tensor
    quantization cannot express that (nor can MediaPipe Tasks, which uses one mean/std).
    """
    mean, std = tuple(preprocessing.mean), tuple(preprocessing.std)
    if len(set(mean)) != 1 or len(set(std)) != 1:
        raise ConfigError(
            f"--io-type uint8 needs one mean/std for all channels, but the preprocessing has "
            f"mean {list(mean)} and std {list(std)}; use --io-type float32 or int8"
        )
    zero_point = int(round(mean[0]))
    if not 0 <= zero_point <= 255 or not std[0] > 0:
        raise ConfigError(f"--io-type uint8 needs 0 ≤ mean ≤ 255 and std > 0, got mean {mean[0]} std {std[0]}")
    return 1.0 / std[0], zero_point, abs(mean[0] - zero_point) / std[0]


def set_pixel_input(content: bytes, preprocessing: Preprocessing) -> tuple[bytes, float]:
    """Give the uint8 input of a converted model the pixel quantization (see the module
    docstring); return the new flatbuffer and the zero-point rounding bias.

    The input must feed exactly one QUANTIZE op (what the converter writes for
    ``inference_input_type=tf.uint8``), which then requantizes to the graph's int8 range.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    scale, zero_point, bias = pixel_quantization(preprocessing)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    index = int(graph.inputs[0])
    tensor = graph.tensors[index]
    if tensor.type != schema.TensorType.UINT8:
        raise ExportError(f"uint8 I/O conversion produced a {tensor.type} input tensor, not uint8")
    consumers = [op for op in graph.operators if index in list(op.inputs)]
    codes = [_opcode_name(model, op) for op in consumers]
    if codes != [_QUANTIZE_OPCODE_NAME]:
        raise ExportError(
            f"the uint8 input feeds {codes or 'no op'}, not one QUANTIZE op; cannot give it "
            "the pixel quantization; use --io-type int8 or float32"
        )
    tensor.quantization.scale = np.array([scale], dtype=np.float32)
    tensor.quantization.zeroPoint = np.array([zero_point], dtype=np.int64)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), bias


def not_integer_error(io_type: str, quant: str, details: dict[str, Any]) -> ExportError:
    """The one-line error for an integer I/O type asked of a model that keeps float tensors."""
    names = details.get("fp32_tensors") or []
    shown = ", ".join(repr(n) for n in names[:3]) + (" …" if details["fp32_tensor_count"] > 3 else "")
    return ExportError(
        f"--io-type {io_type} needs a fully integer model, but this --quant {quant} export keeps "
        f"{details['fp32_tensor_count']} float32 tensors ({shown}); export with --quant int8 "
        "(calibration images make every op int8) or use --io-type float32"
    )


def _opcode_name(model, op) -> str:
    from ai_edge_litert import schema_py_generated as schema

    code = model.operatorCodes[op.opcodeIndex]
    value = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(value, str(value))
