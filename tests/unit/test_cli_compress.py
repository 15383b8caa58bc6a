"""The compression commands with the API patched: option parsing (flags over --config, shared
options) and the rendering of each stage's typed result, without training a model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import edgexfer.api
from kit import call_cli, the_error


def _artifact(metrics: dict, **manifest) -> SimpleNamespace:
    manifest = {"extra": {}, "backbone": "cnn_tiny", "quantization": None, **manifest}
    manifest["preprocessing"] = SimpleNamespace(input_size=manifest.pop("input_size", 16))
    return SimpleNamespace(path=Path("/runs/out"), metrics=metrics, manifest=SimpleNamespace(**manifest))


@pytest.fixture
def calls(monkeypatch):
    seen: dict = {}

    def fake(name, result):
        def stage(*args, **kwargs):
            seen[name] = (args, kwargs)
            return result

        monkeypatch.setattr(edgexfer.api, name, stage)

    seen["patch"] = fake
    return seen


def test_distill_merges_config_file_and_flags_and_renders_its_result(capsys, calls, tmp_path):
    metrics = {
        "eval_split": "test",
        "accuracy_before": 0.98,
        "accuracy_after": 0.95,
        "params_before": 3_400_000,
        "params_after": 20_000,
        "size_bytes_before": 14_000_000,
        "size_bytes_after": 100_000,
        "params_ratio": 170.0,
        "accuracy_gap_to_teacher": 0.03,
        "baseline_accuracy": 0.93,
        "distillation_gain": 0.02,
        "teacher_logits": "head_dense pre-activation",
        "feature_weight": 0.5,
        "feature_loss": 0.27,
    }
    extra = {"teacher": {"backbone": "efficientnet_lite0", "input_size": 64}}
    calls["patch"]("distill", _artifact(metrics, extra=extra, input_size=32))
    config = tmp_path / "distill.yaml"
    config.write_text("student: cnn_small\nepochs: 3\naugment: {brightness: 0.1}\n")
    args = ["distill", "T", "D", "--out", tmp_path / "o", "--config", config, "--alpha", "0.5", "--flip", "--seed", "4"]
    result = call_cli(
        capsys, *args, "--feature-weight", "0.5", "--scale", "0.3", "--low-res", "0.25", "--correct-teacher"
    )
    assert result.code == 0, result.err
    built = calls["distill"][1]["config"]
    assert built.correct_teacher
    assert (built.student, built.epochs, built.alpha, built.seed, built.feature_weight) == ("cnn_small", 3, 0.5, 4, 0.5)
    assert built.augment.flip and built.augment.brightness == 0.1  # a flag overrides one key of its group
    assert (built.augment.scale, built.augment.low_res) == (0.3, 0.25)
    assert "efficientnet_lite0 → cnn_tiny" in result.out and "170.0×" in result.out
    assert "gain from distillation (points)" in result.out and "+2.00" in result.out
    assert "feature hint (β 0.5): last loss" in result.out and "0.2700" in result.out


def test_prune_renders_per_layer_sparsity_and_the_dense_layers(capsys, calls, tmp_path):
    metrics = {
        "eval_split": "val",
        **{f"{k}_{w}": v for k, v in (("accuracy", 0.9), ("sparsity", 0.5)) for w in ("before", "after")},
        **{f"{k}_{w}": 1000 for k in ("params_nonzero", "size_bytes", "gzip_bytes") for w in ("before", "after")},
        "structure": "2:4",
        "target_sparsity": 0.5,
        "layers": {"conv1": {"params": 432, "sparsity": 0.5, "pattern_2_4": True}},
        "pruned_layers_sparsity": 0.5,
        "gzip_ratio": 1.7,
        "dense_layers": [{"layer": "stem", "class": "Conv2D", "params": 27, "reason": "3 input channels"}],
        "macs_before": 995_328,
        "macs": 995_328,
    }
    calls["patch"]("prune", _artifact(metrics))
    result = call_cli(capsys, "prune", "M", "D", "--out", tmp_path / "o", "--structure", "2:4", "--no-flip")
    assert result.code == 0, result.err
    assert calls["prune"][1]["config"].structure == "2:4"
    assert "prune (2:4)" in result.out and "conv1" in result.out and "yes" in result.out
    assert "1 layers with weights stay dense" in result.out and "3 input channels" in result.out
    assert "gzip ratio 1.70×" in result.out
    assert "MACs per image (zeros count)" in result.out and result.out.count("995,328") == 2


def test_quantize_check_renders_the_preflight(capsys, calls):
    report = {
        "artifact": "/runs/student",
        "backbone": "mobilenet_v3_small",
        "pqat": False,
        "counts": {"int8": 40, "float": 3},
        "float_layers": [
            {"layer": f"hard_swish_{i}", "class": "TFOpLambda", "reason": "not in tfmot's registry"} for i in range(3)
        ],
        "quantizable": 40,
        "whole_model": False,
    }
    calls["patch"]("quantize_check", report)
    result = call_cli(capsys, "quantize", "M", "--check")
    assert result.code == 0, result.err
    assert calls["quantize_check"] == ((Path("M"),), {"preserve_sparsity": None, "img_size": None, "width": None})
    assert "mobilenet_v3_small" in result.out and "3 layers stay float under QAT" in result.out
    assert "TFOpLambda" in result.out and "hard_swish_2" in result.out and "not in tfmot" in result.out
    assert "partial QAT: 40 layers with int8 weights, 3 float layers" in result.out


def _student_report(fp32: int, names=()) -> dict:
    return {
        "artifact": None,
        "backbone": "lite0_b3",
        "input_size": 32,
        "width": 0.5,
        "params": 29_216,
        "macs": 990_000,
        "pqat": False,
        "counts": {"int8": 40, "folded": 12},
        "float_layers": [],
        "quantizable": 40,
        "whole_model": True,
        "int8_tflite": {"fp32_tensor_count": fp32, "fp32_tensors": list(names), "from_qat": True, "error": None},
    }


def test_quantize_check_of_a_student_passes_when_fully_int8(capsys, calls):
    calls["patch"]("quantize_check", _student_report(0))
    result = call_cli(capsys, "quantize", "lite0_b3", "--check", "--img-size", "32", "--width", "0.5")
    assert result.code == 0, result.err
    assert calls["quantize_check"][1] == {"preserve_sparsity": None, "img_size": 32, "width": 0.5}
    text = " ".join(result.out.split())
    assert "student lite0_b3 at 32 px, width 0.5 (random weights): 29,216 params, 990 k MACs per image" in text
    assert "int8 TFLite: 0 float tensors (converted from the QAT model)" in text


def test_quantize_check_of_a_student_with_float_tensors_fails_in_one_line(capsys, calls):
    calls["patch"]("quantize_check", _student_report(4, ["block2a_se/mul", "tfl.dequantize", "a", "b"]))
    result = call_cli(capsys, "quantize", "lite0_b3", "--check")
    assert result.code == 2
    assert "int8 TFLite: 4 float tensors" in result.out and "'block2a_se/mul'" in result.out
    line = the_error(result.err)
    assert "student lite0_b3 at 32 px is not fully int8: the converter leaves 4 float32 tensors" in line
    assert "('block2a_se/mul', 'tfl.dequantize', 'a' …)" in line and "pick another student" in line


def test_quantize_img_size_without_check_is_one_line(capsys):
    result = call_cli(capsys, "quantize", "M", "D", "--out", "o", "--img-size", "32")
    assert result.code == 2 and "--img-size and --width go with --check STUDENT" in the_error(result.err)


def test_quantize_without_data_is_one_line(capsys):
    result = call_cli(capsys, "quantize", "M")
    assert result.code == 2
    assert "quantize needs DATA and --out" in result.err


def test_finetune_takes_the_size_and_resolution_augmentation_flags(capsys, monkeypatch, tmp_path):
    seen = {}

    def fake_finetune(data, out, **kwargs):
        seen.update(kwargs)
        return None  # as a non-chief worker returns: nothing to render, the config is all this test needs

    monkeypatch.setattr(edgexfer.api, "finetune", fake_finetune)
    flags = ["--scale", "0.5", "--low-res", "0.125", "--flip", "--crop-zoom", "0.1"]
    result = call_cli(capsys, "finetune", tmp_path, "--out", tmp_path / "o", *flags)
    assert result.code == 0, result.err
    augment = seen["config"].augment
    assert (augment.scale, augment.low_res, augment.flip, augment.crop_zoom) == (0.5, 0.125, True, 0.1)
    bad = call_cli(capsys, "finetune", tmp_path, "--out", tmp_path / "o", "--low-res", "1.5")
    assert bad.code == 2 and "low_res" in the_error(bad.err) and "Traceback" not in bad.err


def _capture_stage_config(monkeypatch, command: str) -> tuple[dict, list[str]]:
    """Replace ``api.<command>`` by a stand-in that keeps its keyword arguments (the config);
    also the flags the command cannot go without."""
    seen: dict = {}

    def fake_stage(model, data, out, **kwargs):
        seen.update(kwargs)
        return None  # as a non-chief worker returns: nothing to render

    monkeypatch.setattr(edgexfer.api, command, fake_stage)
    return seen, (["--sparsity", "0.5"] if command == "prune" else [])


@pytest.mark.parametrize("command", ["prune", "quantize"])
def test_prune_and_quantize_take_every_augmentation_flag(capsys, monkeypatch, tmp_path, command):
    """The student's road keeps the distillation's augmentation: the same six flags reach the config."""
    seen, required = _capture_stage_config(monkeypatch, command)
    flags = [*required, "--scale", "0.5", "--low-res", "0.125", "--flip", "--crop-zoom", "0.1", "--brightness", "0.2"]
    result = call_cli(capsys, command, tmp_path, tmp_path, "--out", tmp_path / "o", *flags, "--contrast", "0.3")
    assert result.code == 0, result.err
    augment = seen["config"].augment
    assert (augment.scale, augment.low_res, augment.flip, augment.crop_zoom) == (0.5, 0.125, True, 0.1)
    assert (augment.brightness, augment.contrast) == (0.2, 0.3)
    bad = call_cli(capsys, command, tmp_path, tmp_path, "--out", tmp_path / "o", *required, "--scale", "2")
    assert bad.code == 2 and "scale" in the_error(bad.err) and "Traceback" not in bad.err


@pytest.mark.parametrize("command", ["prune", "quantize"])
def test_prune_and_quantize_take_unlabelled_images(capsys, monkeypatch, tmp_path, command):
    """--unlabelled and its cap reach the config; PTQ, which trains nothing, refuses them in one line."""
    seen, required = _capture_stage_config(monkeypatch, command)
    flags = [*required, "--unlabelled", tmp_path / "target", "--max-unlabelled-images", "50"]
    result = call_cli(capsys, command, tmp_path, tmp_path, "--out", tmp_path / "o", *flags)
    assert result.code == 0, result.err
    assert (seen["config"].unlabelled, seen["config"].max_unlabelled_images) == (str(tmp_path / "target"), 50)
    if command == "quantize":
        bad = call_cli(capsys, command, tmp_path, tmp_path, "--out", tmp_path / "o", "--mode", "ptq", *flags)
        assert bad.code == 2 and "PTQ trains nothing" in the_error(bad.err) and "Traceback" not in bad.err
