"""The deploy commands with the API patched: what each renders from its typed result, and that
--json prints the API's result unchanged, without converting or running a model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import edgexfer.api
from kit import call_cli

PREDICTIONS = {
    "model": "/runs/export/model.tflite",
    "backend": "tflite",
    "labels": ["cat", "dog", "owl"],
    "count": 2,
    "predictions": [
        {
            "path": "a.png",
            "label": "dog",
            "score": 0.91,
            "top_k": [{"label": "dog", "score": 0.91}, {"label": "cat", "score": 0.06}],
        },
        {
            "path": "b.png",
            "label": "owl",
            "score": 0.55,
            "top_k": [{"label": "owl", "score": 0.55}, {"label": "dog", "score": 0.4}],
        },
    ],
}


def test_predict_renders_each_image_and_json_is_the_api_result(capsys, monkeypatch):
    seen = {}

    def fake(model, inputs, **options):
        seen.update(options)
        return PREDICTIONS

    monkeypatch.setattr(edgexfer.api, "predict", fake)
    shown = call_cli(capsys, "predict", "m.tflite", "a.png", "b.png", "--top-k", "2", "--threads", "0")
    assert shown.code == 0, shown.err
    assert seen["top_k"] == 2 and seen["num_threads"] == 0
    assert "tflite, 2 images" in shown.out and "dog 0.910, cat 0.060" in shown.out and "0.5500" in shown.out
    printed = call_cli(capsys, "predict", "m.tflite", "a.png", "--json")
    assert printed.code == 0 and json.loads(printed.out) == PREDICTIONS


def test_export_renders_its_typed_result(capsys, monkeypatch, tmp_path):
    exported = SimpleNamespace(
        path=tmp_path / "export",
        model_path=tmp_path / "export" / "model.tflite",
        metrics={
            "size_bytes": 123_456,
            "gzip_bytes": 100_000,
            "size_ratio": 0.25,
            "conversion_seconds": 3.2,
            "macs": 2_430_000,
        },
        manifest=SimpleNamespace(
            config={"format": "tflite", "quant": "int8", "calibration_images": 300, "calibration_source": "data"},
            quantization={"input": {"dtype": "uint8", "scale": 1.0, "zero_point": 0}},
            extra={"warnings": ["2 float tensors remain"]},
        ),
    )
    seen = {}

    def fake(artifact, out, fmt, quant=None, **options):
        seen.update(fmt=fmt, quant=quant, **options)
        return exported

    monkeypatch.setattr(edgexfer.api, "export", fake)
    shown = call_cli(capsys, "export", "A", "--format", "tflite", "--quant", "int8", "--out", tmp_path / "export")
    assert shown.code == 0, shown.err
    assert (seen["fmt"], seen["quant"], seen["calibration_images"], seen["opset"]) == ("tflite", "int8", 300, 15)
    assert "123,456 bytes (gzip 100,000)" in shown.out and "0.250×" in shown.out
    assert "300 images from data" in shown.out and '"uint8"' in shown.out
    assert "warning: 2 float tensors remain" in shown.out
    assert "MACs per image" in shown.out and "2.43 M (2,430,000 multiply-accumulates)" in shown.out
    assert seen["calibration_data"] is None and seen["io_type"] is None
    assert seen["gray_input"] is False
    folded = call_cli(capsys, "export", "A", "--format", "tflite", "--out", tmp_path / "export", "--gray-input")
    assert folded.code == 0 and seen["gray_input"] is True
