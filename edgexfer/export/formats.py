"""The one table of export formats: what each writes and which quantization modes it allows.

CLI help, validation and tests all read ``FORMATS``; adding a format is adding a row.
Importing this module imports no TensorFlow (converters import it when called).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgexfer.errors import ConfigError
from edgexfer.export._onnx import convert_onnx
from edgexfer.export._saved_model import convert_saved_model
from edgexfer.export._tflite import convert_tflite
from edgexfer.export.tflite_micro import convert_tflite_micro

QUANT_MODES = ("none", "fp16", "dynamic", "int8")


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    ``converter(keras_model, dest, quant, info, *, calibration, opset, is_qat) -> dict``
    writes ``dest`` (the model file, or directory for ``saved_model``) and returns what it
    measured (``quantization`` details, warnings …); ``info`` is the ``EmbeddedInfo`` to embed.
    """

    name: str
    suffix: str  # "" for a directory
    quant_modes: tuple[str, ...]
    converter: Callable[..., dict]
    description: str
    runtime: bool = True  # whether edgexfer.runtime can run it
    io_types: tuple[str, ...] = ()  # --io-type values the converter takes (tflite_io.IO_TYPES)

    @property
    def model_file(self) -> str:
        return "saved_model" if not self.suffix else f"model{self.suffix}"


FORMATS: dict[str, ExportFormat] = {
    row.name: row
    for row in (
        ExportFormat(
            "tflite",
            ".tflite",
            ("none", "fp16", "dynamic", "int8"),
            convert_tflite,
            "TensorFlow Lite flatbuffer for LiteRT (Android, iOS, microcontrollers) with standard "
            "TFLite Metadata (MediaPipe Tasks, Task Library); int8 is full-integer with uint8 "
            "input/output by default (--io-type uint8|int8|float32)",
            io_types=("uint8", "int8", "float32"),
        ),
        ExportFormat(
            "onnx",
            ".onnx",
            ("none", "dynamic", "int8"),
            convert_onnx,
            "ONNX via tf2onnx for onnxruntime; int8 is static QDQ per-channel; dynamic "
            "quantizes weights only (smaller, but slower than fp32 in onnxruntime)",
        ),
        ExportFormat(
            "tflite-micro",
            ".tflite",
            ("int8",),
            convert_tflite_micro,
            "fully int8 TFLite plus model.c/model.h for TensorFlow Lite Micro (microcontrollers): "
            "the model bytes, labels, input quantisation and preprocessing, tensor-arena estimate; "
            "also from a .tflite export artifact",
        ),
        ExportFormat(
            "saved_model",
            "",
            ("none",),
            convert_saved_model,
            "TensorFlow SavedModel directory (TF Serving, further conversion); needs TensorFlow to run",
            runtime=False,
        ),
    )
}


def check_format_quant(fmt: str, quant: str) -> ExportFormat:
    """The ``FORMATS`` row for ``fmt`` after checking ``quant`` is allowed; else ``ConfigError``."""
    row = FORMATS.get(fmt)
    if row is None:
        raise ConfigError(
            f"--format {fmt!r} is not supported{_did_you_mean(fmt, FORMATS)}; allowed: {', '.join(FORMATS)}"
        )
    if quant not in QUANT_MODES:
        raise ConfigError(
            f"--quant {quant!r} is not a quantization mode{_did_you_mean(quant, QUANT_MODES)}; "
            f"allowed: {', '.join(QUANT_MODES)}"
        )
    if quant not in row.quant_modes:
        raise ConfigError(f"--quant {quant} is not available for {fmt}; {fmt} allows: {', '.join(row.quant_modes)}")
    return row


def _did_you_mean(value: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_for_model_file(name: str) -> ExportFormat | None:
    """The format whose model file is called ``name`` (``model.tflite`` → tflite), if any."""
    return next((row for row in FORMATS.values() if row.model_file == name), None)
