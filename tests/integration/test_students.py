"""Pretrained students (Lite0 truncated, narrowed) and the two-conv plain CNN: built from the
ImageNet weights, distilled, pruned, QAT-trained and exported to full-int8 TFLite and ONNX."""

import numpy as np
import pytest

from edgexfer.backbones import lite_students
from edgexfer.backbones.registry import create_backbone, get_backbone
from edgexfer.compress import api as capi
from edgexfer.errors import BackboneError, ConfigError
from kit import call_cli, shared_teacher, the_error

pytestmark = pytest.mark.integration

FAST = dict(batch_size=16, seed=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return shared_teacher(tmp_path_factory)


def test_a_full_width_cut_is_lite0_itself_up_to_the_cut():
    import tf_keras as keras

    from edgexfer.backbones import efficientnet_lite as E

    full = E.build_backbone("efficientnet_lite0", 32, weights="imagenet")
    student = create_backbone("lite0_b3", 32)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    upto = lambda m: keras.Model(m.input, m.get_layer("block3b_add").output)(x).numpy()  # noqa: E731
    np.testing.assert_array_equal(upto(student), upto(full))
    assert student.output_shape == (None, lite_students.top_filters(3))
    assert not any(layer.name.startswith(("block4", "head_")) for layer in student.layers)


def test_a_narrow_student_keeps_the_pretrained_filters_with_the_largest_bn_scale():
    from edgexfer.backbones import efficientnet_lite as E

    full = E.build_backbone("efficientnet_lite0", 32, weights="imagenet")
    narrow = create_backbone("lite0_b2", 32, width=0.5)
    kept = np.sort(np.argsort(-np.abs(full.get_layer("stem_bn").get_weights()[0]))[:16])
    np.testing.assert_array_equal(
        narrow.get_layer("stem_conv").kernel.numpy(), full.get_layer("stem_conv").kernel.numpy()[..., kept]
    )
    # block1a's depthwise conv reads the stem's stream: the same channels
    np.testing.assert_array_equal(
        narrow.get_layer("block1a_dwconv").depthwise_kernel.numpy(),
        full.get_layer("block1a_dwconv").depthwise_kernel.numpy()[:, :, kept, :],
    )
    assert narrow.get_layer("block2b_project_conv").kernel.shape[-1] == 16  # 24 × 0.5 → Lite's rounding
    assert narrow.count_params() < 0.5 * create_backbone("lite0_b2", 32, weights="none").count_params()


def test_cnn_small2_has_two_convolutions_per_stage():
    model = create_backbone("cnn_small2", 32, weights="none")
    convs = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert convs == [f"stage{i}_conv{s}" for i in range(4) for s in ("", "2")]
    assert model.output_shape == (None, 128)


def test_bad_truncation_points_widths_and_sizes_say_what_is_valid():
    with pytest.raises(BackboneError, match=r"unknown backbone 'lite0_b7'.*lite0_b2, lite0_b3, lite0_b4, lite0_b5"):
        get_backbone("lite0_b7")
    with pytest.raises(ConfigError, match=r"--width 0.3 is not available for lite0_b4; allowed: 0.5, 0.75, 1.0"):
        create_backbone("lite0_b4", 32, width=0.3)
    with pytest.raises(ConfigError, match="too small for lite0_b4: it needs at least 16 px"):
        create_backbone("lite0_b4", 8)
    assert [get_backbone(f"lite0_b{c}").min_input_size for c in (2, 3, 4, 5)] == [4, 8, 16, 16]


def test_distill_cli_refuses_a_missing_cut_and_a_too_small_student(teacher, tmp_path, capsys):
    artifact, data = teacher
    result = call_cli(capsys, "distill", artifact.path, data, "--student", "lite0_b6", "--out", tmp_path / "a")
    assert result.code == 2 and "lite0_b2, lite0_b3, lite0_b4, lite0_b5" in the_error(result.err)
    result = call_cli(
        capsys,
        "distill",
        artifact.path,
        data,
        "--student",
        "lite0_b4",
        "--student-img-size",
        "12",
        "--out",
        tmp_path / "b",
    )
    assert result.code == 2 and "needs at least 16 px" in the_error(result.err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow  # ~100 s of CPU: five stages of TensorFlow (distill, prune, QAT, two int8 exports)
def test_a_pretrained_student_distills_prunes_quantizes_and_exports_fully_int8(teacher, tmp_path):
    from edgexfer.evaluate.macs import keras_macs, onnx_macs, tflite_macs
    from edgexfer.export import export_artifact
    from edgexfer.keras_io import load_keras_model

    artifact, data = teacher
    student = capi.distill(
        artifact.path,
        data,
        tmp_path / "student",
        student="lite0_b3",
        student_width=0.5,
        student_img_size=16,
        epochs=5,
        learning_rate=1e-2,
        bn_momentum=0.9,  # 25 steps: the fresh top BN's moving statistics must settle
        **FAST,
    )
    assert student.manifest.backbone == "lite0_b3" and student.manifest.weights.startswith("imagenet: ImageNet")
    assert student.metrics["student_accuracy"] >= 0.8
    assert 0 < student.metrics["macs"] and student.metrics["macs_teacher"] > 0
    pruned = capi.prune(
        student.path,
        data,
        tmp_path / "pruned",
        sparsity=0.5,
        epochs=1,
        learning_rate=1e-4,
        measure_tflite=False,
        **FAST,
    )
    assert pruned.metrics["pruned_layers_sparsity"] >= 0.45
    qat = capi.quantize(
        pruned.path,
        data,
        tmp_path / "qat",
        mode="qat",
        epochs=1,
        learning_rate=1e-4,
        calibration_images=20,
        compare_ptq=False,
        **FAST,
    )
    assert qat.manifest.quantization["float_layers"] == []
    assert qat.metrics["tflite_qat_int8"]["fp32_tensor_count"] == 0
    calibration = np.load(qat.path / qat.manifest.quantization["calibration_file"])
    tflite = export_artifact(qat.path, tmp_path / "tflite", "tflite", "int8", calibration_images=calibration)
    onnx = export_artifact(qat.path, tmp_path / "onnx", "onnx", "int8", calibration_images=calibration)
    assert tflite.metrics["fp32_tensor_count"] == 0
    assert onnx.manifest.quantization["fp32_weight_count"] == 0
    # one MAC count whichever graph it is read from
    macs = keras_macs(load_keras_model(student.model_path))
    assert macs == student.metrics["macs"] and tflite_macs(tflite.model_path) == macs == onnx_macs(onnx.model_path)


def test_backbone_macs_are_counted_at_the_input_size_and_cached(tmp_path, monkeypatch):
    import json

    from edgexfer.evaluate.macs import backbone_macs

    monkeypatch.setenv("EDGEXFER_CACHE", str(tmp_path))
    # cnn_tiny at 16 px: 8×8 × 3·3·3·8 + 4×4 × 3·3·8·16 + 2×2 × 3·3·16·32
    assert backbone_macs("cnn_tiny", 16) == 13_824 + 18_432 + 18_432
    assert backbone_macs("cnn_tiny", 32) == 4 * backbone_macs("cnn_tiny", 16)
    assert json.loads((tmp_path / "macs.json").read_text())["cnn_tiny@16px@w1.0"] == 50_688
    with pytest.raises(ConfigError, match="needs at least 16 px"):
        backbone_macs("lite0_b5", 8)
