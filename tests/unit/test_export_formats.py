"""The export FORMATS table and its validation messages (no TensorFlow needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgexfer.errors import ConfigError
from edgexfer.export import FORMATS, QUANT_MODES, check_format_quant
from edgexfer.export.formats import format_for_model_file

ROOT = Path(__file__).resolve().parents[2]


def test_table_rows():
    assert set(FORMATS) == {"tflite", "onnx", "tflite-micro", "saved_model"}
    assert FORMATS["tflite"].quant_modes == ("none", "fp16", "dynamic", "int8")
    assert FORMATS["onnx"].quant_modes == ("none", "dynamic", "int8")
    assert FORMATS["saved_model"].quant_modes == ("none",)
    assert FORMATS["tflite-micro"].quant_modes == ("int8",)
    for row in FORMATS.values():
        assert set(row.quant_modes) <= set(QUANT_MODES)
        assert callable(row.converter) and row.description
    assert [FORMATS[n].model_file for n in FORMATS] == ["model.tflite", "model.onnx", "model.tflite", "saved_model"]
    assert not FORMATS["saved_model"].runtime


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_allowed_combination_passes(fmt):
    for quant in FORMATS[fmt].quant_modes:
        assert check_format_quant(fmt, quant) is FORMATS[fmt]


def test_quant_not_available_for_format_says_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        check_format_quant("onnx", "fp16")
    assert str(err.value) == "--quant fp16 is not available for onnx; onnx allows: none, dynamic, int8"
    with pytest.raises(ConfigError, match="saved_model allows: none$"):
        check_format_quant("saved_model", "int8")


def test_unknown_format_and_quant():
    with pytest.raises(
        ConfigError, match=r"--format 'coreml' is not supported; allowed: tflite, onnx, tflite-micro, saved_model"
    ):
        check_format_quant("coreml", "none")
    with pytest.raises(
        ConfigError,
        match=r"--quant 'int4' is not a quantization mode \(did you mean 'int8'\?\); "
        r"allowed: none, fp16, dynamic, int8",
    ):
        check_format_quant("tflite", "int4")
    with pytest.raises(ConfigError, match=r"--format 'tflit' is not supported \(did you mean 'tflite'\?\)"):
        check_format_quant("tflit", "none")


def test_model_file_lookup():
    assert format_for_model_file("model.onnx") is FORMATS["onnx"]
    assert format_for_model_file("model.tflite") is FORMATS["tflite"]  # tflite-micro writes one too: tflite first
    assert format_for_model_file("model.h5") is None


def test_importing_export_does_not_import_tensorflow():
    code = (
        "import sys, edgexfer.export; print(sorted(m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == "[]"
