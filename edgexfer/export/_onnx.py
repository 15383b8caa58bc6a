"""Keras → ONNX with tf2onnx; int8/dynamic with onnxruntime's quantization tools."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ExportError
from edgexfer.export.onnx_keys import embed_common_onnx_metadata
from edgexfer.runtime.metadata import EmbeddedInfo, embed_onnx_metadata, first_line
from edgexfer.stdio import quiet_native_stderr

INPUT_NAME = "input"
OPSET_RANGE = (13, 17)  # what tf2onnx 1.17 converts reliably (DESIGN.md); 21 fails
CALIBRATION_BATCH = 8


def convert_onnx(
    keras_model,
    dest: Path,
    quant: str,
    info: EmbeddedInfo,
    *,
    calibration: np.ndarray | None = None,
    opset: int | None = 15,
    is_qat: bool = False,
) -> dict[str, Any]:
    """Write ``dest`` (an ``.onnx`` file with edgexfer ``metadata_props``, and the keys and
    doc strings other consumers read: ``onnx_keys``).

    none: the float graph; dynamic: ``quantize_dynamic`` (int8 weights, activations
    quantized on the fly); int8: ``quant_pre_process`` then ``quantize_static`` (QDQ,
    per-channel, QInt8 activations and weights, MinMax over the calibration images).
    int8 from a QAT model instead goes Keras → int8 TFLite (float input/output) → tf2onnx
    ``from_tflite``, which keeps the ranges QAT learned (re-calibrating would stack a second
    QDQ layer on the fake-quant one) and is bit-exact with LiteRT.
    """
    import onnx

    opset = opset or 15
    with tempfile.TemporaryDirectory(prefix="edgexfer-onnx-") as tmp:
        if quant == "int8" and is_qat:
            model_proto = _from_qat_tflite(keras_model, Path(tmp) / "int8.tflite", opset, calibration)
        else:
            float_path = Path(tmp) / "float.onnx"
            onnx.save(_from_keras(keras_model, opset), str(float_path))
            model_path = float_path
            if quant != "none":
                model_path = Path(tmp) / "quant.onnx"
                _quantize(float_path, Path(tmp) / "pre.onnx", model_path, quant, calibration)
            model_proto = onnx.load(str(model_path))
    embed_onnx_metadata(model_proto, info)
    embed_common_onnx_metadata(model_proto, info)
    onnx.save(model_proto, str(dest))

    quantization: dict[str, Any] = {
        "mode": quant,
        "from_qat": bool(is_qat),
        "opset": opset,
        "input": {"dtype": "float32"},
        "output": {"dtype": "float32"},
        **describe_onnx(model_proto),
    }
    if quant == "int8" and is_qat:
        quantization.update(
            scheme="QAT ranges via int8 TFLite and tf2onnx from_tflite (QDQ)",
            calibration_images=0 if calibration is None else int(len(calibration)),
        )
    elif quant == "int8":
        quantization.update(
            scheme="QDQ per-channel, QInt8 activations and weights, MinMax", calibration_images=int(len(calibration))
        )
    elif quant == "dynamic":
        quantization.update(scheme="dynamic: QInt8 weights, activations quantized at run time")
    warnings_out = []
    if quant == "dynamic":
        warnings_out.append(
            "onnxruntime runs dynamically quantized convolutions (ConvInteger) on "
            "the CPU far slower than fp32 (MobileNetV2 96 px: 9.1 vs 0.8 ms); "
            "export --quant int8 for speed"
        )
    if is_qat and quant == "none":
        warnings_out.append(
            "ONNX from a QAT model keeps fp32 weights behind Quantize/DequantizeLinear "
            "and runs slower than fp32 in onnxruntime; export tflite int8 for speed"
        )
    return {"quantization": quantization, "warnings": warnings_out}


def describe_onnx(model_proto) -> dict[str, Any]:
    """What tells whether quantization took: the number of (Dynamic)QuantizeLinear nodes and
    the float weight tensors (initializers of rank ≥ 2 still stored as float32)."""
    from onnx import TensorProto

    ops: dict[str, int] = {}
    for node in model_proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    float_weights = [
        t.name for t in model_proto.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2
    ]
    return {
        "node_count": len(model_proto.graph.node),
        "quantize_linear_count": ops.get("QuantizeLinear", 0) + ops.get("DynamicQuantizeLinear", 0),
        "fp32_weight_count": len(float_weights),
        "fp32_weights": float_weights[:10],
    }


def _from_keras(keras_model, opset: int):
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    import tf2onnx

    shape = [None, *keras_model.input_shape[1:]]
    signature = [tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)]
    try:
        model_proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=signature, opset=opset)
    except Exception as exc:
        raise ExportError(f"ONNX conversion (tf2onnx, opset {opset}) failed: {first_line(exc)}") from exc
    return model_proto


def _from_qat_tflite(keras_model, tflite_path: Path, opset: int, calibration: np.ndarray | None):
    from edgexfer.tf_env import import_tf

    import_tf()  # tf2onnx imports TensorFlow: edgexfer's settings first
    import tf2onnx

    from edgexfer.export._tflite import tflite_bytes

    tflite_path.write_bytes(tflite_bytes(keras_model, "int8", calibration, int8_io=False))
    try:
        with warnings.catch_warnings(), quiet_native_stderr():
            # tf2onnx reads the file with tf.lite.Interpreter, which warns it is deprecated and
            # prints its XNNPACK line on fd 2
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            model_proto, _ = tf2onnx.convert.from_tflite(str(tflite_path), opset=opset)
    except Exception as exc:
        raise ExportError(
            f"ONNX conversion of the QAT model (tf2onnx from_tflite, opset {opset}) failed: {first_line(exc)}"
        ) from exc
    return model_proto


def _quantize(float_path: Path, pre_path: Path, out_path: Path, quant: str, calibration: np.ndarray | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    try:
        # symbolic shape inference fails on tf2onnx graphs; ONNX shape inference suffices
        quant_pre_process(str(float_path), str(pre_path), skip_symbolic_shape=True)
        if quant == "dynamic":
            quantize_dynamic(str(pre_path), str(out_path), weight_type=QuantType.QInt8)
        else:
            quantize_static(
                str(pre_path),
                str(out_path),
                _calibration_reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )
    except Exception as exc:
        raise ExportError(f"ONNX {quant} quantization (onnxruntime) failed: {first_line(exc)}") from exc


def _calibration_reader(images: np.ndarray):
    """An onnxruntime ``CalibrationDataReader`` over the images, in small batches (defined
    here so importing this module does not import onnxruntime.quantization)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self, data: np.ndarray):
            self.data = np.asarray(data, dtype=np.float32)
            self.position = 0

        def get_next(self):
            if self.position >= len(self.data):
                return None
            batch = self.data[self.position : self.position + CALIBRATION_BATCH]
            self.position += CALIBRATION_BATCH
            return {INPUT_NAME: batch}

        def rewind(self):
            self.position = 0

    return Reader(images)
