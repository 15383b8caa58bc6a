"""Compression configs and the bad inputs caught before any TensorFlow runs (fast)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
from edgexfer.compress.config import DistillConfig, PruneConfig, QuantizeConfig
from edgexfer.errors import ArtifactError, ConfigError, DataError
from kit import call_cli, the_error


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sparsity": 1.0}, "sparsity=1.0 is invalid: .*\\[0, 1\\)"),
        ({"sparsity": -0.1}, "sparsity=-0.1 is invalid"),
        ({"sparsity": 1.5}, "sparsity=1.5"),
        ({}, "needs a target sparsity"),
        ({"structure": "2:4", "sparsity": 0.75}, "2 of every 4 weights"),
        ({"structure": "4:8", "sparsity": 0.5}, "structure='4:8'"),
        ({"sparsity": 0.5, "schedule": "cubic"}, "schedule='cubic'"),
        ({"sparsity": 0.3, "initial_sparsity": 0.5}, "initial_sparsity 0.5 is above"),
        ({"sparsity": 0.5, "epocs": 3}, "did you mean 'epochs'"),
    ],
)
def test_prune_config_errors_are_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        PruneConfig.build(**values)
    assert "\n" not in str(info.value)


def test_prune_config_targets():
    assert PruneConfig.build(sparsity=0.0).target_sparsity == 0.0
    assert PruneConfig.build(structure="2:4").target_sparsity == 0.5
    assert PruneConfig.build(sparsity=0.75, schedule="constant").target_sparsity == 0.75


@pytest.mark.parametrize(
    "values, message",
    [
        ({"calibration_images": 5}, "calibration set of 5 images is too small.*at least 10"),
        ({"mode": "qat", "type": "fp16"}, "QAT trains for int8"),
        ({"mode": "int4"}, "mode='int4'"),
        ({"mode": "ptq", "type": "int4"}, "type='int4'"),
        ({"epochs": 0}, "epochs=0"),
    ],
)
def test_quantize_config_errors(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        QuantizeConfig.build(**values)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "student is required \\(--student\\)"),
        ({"student": "cnn_tiny", "temperature": 0}, "temperature=0"),
        ({"student": "cnn_tiny", "alpha": 1.5}, "alpha=1.5"),
        (
            {"student": "cnn_tiny", "feature_weight": -0.5},
            "feature_weight=-0.5 is invalid: .*greater than or equal to 0",
        ),
        ({"student": "cnn_tiny", "feature_weight": float("inf")}, "feature_weight=inf is invalid"),
        ({"student": "cnn_tiny", "temprature": 2}, "did you mean 'temperature'"),
        ({"student": "cnn_tiny", "augment": {"crop_zoom": 0.9}}, "augment.crop_zoom=0.9"),
    ],
)
def test_distill_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig.build(**values)


def test_configs_and_package_import_no_tensorflow():
    code = (
        "import sys, edgexfer.compress, edgexfer.compress.api, edgexfer.compress.prune, "
        "edgexfer.compress.quantize, edgexfer.compress.qat, edgexfer.compress.quantize_check, "
        "edgexfer.compress.distill, edgexfer.cli.compress; "
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_two_four_pattern_check():
    from edgexfer.compress.prune import is_m_by_n

    kernel = np.ones((3, 3, 8, 4), np.float32)  # H W Cin Cout
    assert not is_m_by_n(kernel)
    kernel[:, :, 0::4, :] = 0
    kernel[:, :, 1::4, :] = 0
    assert is_m_by_n(kernel)
    dense = np.ones((8, 3), np.float32)
    dense[2::4] = dense[3::4] = 0
    assert is_m_by_n(dense)
    assert not is_m_by_n(np.zeros((3, 3, 6, 2), np.float32))  # 6 input channels: no groups of 4


def _fake_artifact(path, labels=("blue", "green", "red"), size=16, model_name="model.h5"):
    """A manifest with a placeholder model file: enough for the checks that run before TF."""
    with writing_artifact(path) as writer:
        writer.file(model_name).write_bytes(b"placeholder")
        return writer.commit(
            Manifest(
                stage="finetune",
                label_names=list(labels),
                preprocessing=Preprocessing(input_size=size),
                backbone="cnn_small",
                weights="none",
                model_file=model_name,
                config={"val_fraction": 0.1, "test_fraction": 0.1},
                seed=0,
            )
        )


def _folder(root, classes=("blue", "green", "red"), per_class=4):
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(root / name / f"{index}.png")
    return root


def test_student_input_size_the_teacher_cannot_give_is_an_error(tmp_path):
    from edgexfer.compress.distill import student_settings

    teacher = Preprocessing(input_size=16)
    with pytest.raises(
        ConfigError, match="16 px, the teacher's input size.*too small for mobilenet_v2.*--student-img-size 32"
    ):
        student_settings(DistillConfig.build(student="mobilenet_v2"), teacher)
    with pytest.raises(ConfigError, match="--student-img-size 4\\) is too small for cnn_small"):
        student_settings(DistillConfig.build(student="cnn_small", student_img_size=4), teacher)
    with pytest.raises(ConfigError, match="--student-width 0.3 is not available for mobilenet_v2; allowed: 0.35"):
        student_settings(DistillConfig.build(student="mobilenet_v2", student_width=0.3, student_img_size=32), teacher)
    spec, size, weights, pre = student_settings(
        DistillConfig.build(student="mobilenet_v2", student_width=0.35, student_img_size=96), teacher
    )
    assert (size, weights, pre.input_size, pre.mean) == (96, "imagenet", 96, (127.5, 127.5, 127.5))
    assert student_settings(DistillConfig.build(student="cnn_tiny"), teacher)[2] == "none"


def test_distill_data_with_other_classes_names_the_teacher(tmp_path):
    from edgexfer.compress import api

    teacher = _fake_artifact(tmp_path / "teacher")
    data = _folder(tmp_path / "data", classes=("blue", "green", "yellow"))
    with pytest.raises(DataError, match="teacher's classes .* differ.*missing red; extra yellow"):
        api.distill(teacher.path, data, tmp_path / "out", student="cnn_tiny")
    assert not (tmp_path / "out").exists()


def test_calibration_set_larger_than_the_data_can_give(tmp_path):
    from edgexfer.compress import api

    model = _fake_artifact(tmp_path / "model")
    data = _folder(tmp_path / "data", per_class=3)  # 9 images: fewer than 10 training images
    with pytest.raises(DataError, match="training split has .* images; a calibration set needs at least 10"):
        api.quantize(model.path, data, tmp_path / "out", mode="ptq", type="int8")


def test_export_artifact_and_same_out_are_refused(tmp_path):
    from edgexfer.compress import api

    exported = _fake_artifact(tmp_path / "exported", model_name="model.tflite")
    data = _folder(tmp_path / "data")
    with pytest.raises(ArtifactError, match="holds model.tflite, not a Keras model"):
        api.prune(exported.path, data, tmp_path / "out", sparsity=0.5)
    model = _fake_artifact(tmp_path / "model")
    with pytest.raises(ConfigError, match="is the input artifact"):
        api.prune(model.path, data, model.path, sparsity=0.5)


def test_cli_bad_inputs_are_one_red_line(tmp_path):
    model = _fake_artifact(tmp_path / "model")
    cases = [
        (["prune", str(model.path), str(tmp_path), "--out", str(tmp_path / "o"), "--sparsity", "1.2"], "sparsity=1.2"),
        (["quantize", str(model.path)], "quantize needs DATA and --out"),
        (
            ["quantize", str(model.path), str(tmp_path), "--out", str(tmp_path / "o"), "--calibration-images", "3"],
            "too small",
        ),
        (["distill", str(model.path), str(tmp_path), "--out", str(tmp_path / "o")], "student is required"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "edgexfer", *args], capture_output=True, text=True)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and message in result.stderr, (args, result.stderr)
        assert json.dumps(result.stderr).count("error:") == 1


def test_cli_negative_feature_weight_is_one_line_and_writes_nothing(capsys, tmp_path):

    model = _fake_artifact(tmp_path / "model")
    args = ["distill", model.path, tmp_path, "--out", tmp_path / "o", "--student", "cnn_tiny", "--feature-weight", "-1"]
    result = call_cli(capsys, *args)
    assert result.code == 2
    assert "feature_weight=-1.0 is invalid" in the_error(result.err) and "greater than or equal to 0" in result.err
    assert not (tmp_path / "o").exists()
