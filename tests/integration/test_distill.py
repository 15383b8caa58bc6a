"""Distillation end to end on generated images with tiny CNNs (seconds, not minutes)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from edgexfer.artifact import Artifact
from edgexfer.compress import api as capi
from edgexfer.errors import DataError
from edgexfer.keras_io import load_keras_model
from kit import make_color_folder, shared_teacher

pytestmark = pytest.mark.integration

STUDENT = dict(student="cnn_tiny", epochs=8, batch_size=16, learning_rate=0.01, early_stopping_patience=0, seed=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return shared_teacher(tmp_path_factory)


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    artifact, data = teacher
    return capi.distill(artifact.path, data, tmp_path_factory.mktemp("distill") / "student", baseline=True, **STUDENT)


def test_distilled_student_is_smaller_accurate_and_measured_against_a_baseline(distilled, teacher):
    metrics = distilled.metrics
    assert metrics["teacher_accuracy"] >= 0.8
    assert metrics["student_accuracy"] >= 0.8
    assert metrics["params_ratio"] >= 5 and metrics["params_teacher"] > 5 * metrics["params"]
    assert metrics["macs_teacher"] > metrics["macs"] > 0  # per image, counted on the Keras models
    assert metrics["teacher_logits"] == "cached" and metrics["teacher_logits_source"] == "head_dense pre-activation"
    assert {"baseline_accuracy", "baseline_val_accuracy", "distillation_gain", "baseline_history"} <= set(metrics)
    assert metrics["distillation_gain"] == pytest.approx(metrics["student_accuracy"] - metrics["baseline_accuracy"])
    assert {"soft_loss", "hard_loss", "val_accuracy"} <= set(metrics["history"])
    for key in (
        "accuracy_before",
        "accuracy_after",
        "params_before",
        "params_after",
        "size_bytes_before",
        "size_bytes_after",
        "sparsity_before",
        "sparsity_after",
    ):
        assert key in metrics
    manifest = distilled.manifest
    assert manifest.stage == "distill" and manifest.backbone == "cnn_tiny" and manifest.weights == "none"
    assert manifest.label_names == teacher[0].manifest.label_names
    assert manifest.parent["path"] == str(teacher[0].path.resolve())
    assert manifest.extra["teacher"]["backbone"] == "cnn_small"
    assert manifest.extra["split"] == {"seed": 1, "val_fraction": 0.1, "test_fraction": 0.1}
    model = load_keras_model(distilled.model_path)
    assert model.output_shape == (None, 3)
    assert model.get_layer("head_dense").activation.__name__ == "softmax"


def test_teacher_logits_are_the_pre_softmax_output(teacher):
    from edgexfer.compress.distill import teacher_logits_model
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    model = load_keras_model(teacher[0].model_path)
    logits_model, source = teacher_logits_model(model)
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(tf.nn.softmax(logits_model(x)).numpy(), model(x).numpy(), atol=1e-5)
    assert source == "head_dense pre-activation"


def test_augmented_distillation_runs_the_teacher_online_at_its_own_input_size(teacher, tmp_path):
    artifact, data = teacher
    student = capi.distill(
        artifact.path,
        data,
        tmp_path / "online",
        **{**STUDENT, "epochs": 3, "student_img_size": 24, "augment": {"crop_zoom": 0.1, "brightness": 0.05}},
    )
    assert student.metrics["teacher_logits"] == "online"
    assert student.manifest.preprocessing.input_size == 24
    assert artifact.manifest.preprocessing.input_size == 16
    assert load_keras_model(student.model_path).input_shape == (None, 24, 24, 3)
    assert 0.0 <= student.metrics["student_accuracy"] <= 1.0


def test_clean_teacher_view_caches_the_logits_while_the_student_sees_augmented_images(teacher, tmp_path):
    artifact, data = teacher
    options = {**STUDENT, "epochs": 2, "student_img_size": 24}
    augmented = {"augment": {"scale": 0.3, "low_res": 0.5}, "teacher_view": "clean"}
    clean = capi.distill(artifact.path, data, tmp_path / "clean", **options, **augmented)
    plain = capi.distill(artifact.path, data, tmp_path / "plain", **options)
    assert clean.metrics["teacher_logits"] == "cached" and "teacher_logits_seconds" in clean.metrics["timings_seconds"]
    trained = [load_keras_model(a.model_path).get_weights() for a in (clean, plain)]
    assert not all(np.array_equal(a, b) for a, b in zip(*trained, strict=True))  # the augmentation reached the student


def test_distill_refuses_data_whose_classes_differ_from_the_teacher(teacher, tmp_path):
    other = make_color_folder(tmp_path / "other", per_class=4, size=8)
    (other / "green").rename(other / "yellow")
    with pytest.raises(DataError, match="teacher's classes.*yellow"):
        capi.distill(teacher[0].path, other, tmp_path / "out", **STUDENT)


def test_cli_distill_renders_the_comparison(teacher, tmp_path):
    from edgexfer.cli import app

    artifact, data = teacher
    result = CliRunner().invoke(
        app,
        [
            "distill",
            str(artifact.path),
            str(data),
            "--student",
            "cnn_tiny",
            "--out",
            str(tmp_path / "cli"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--learning-rate",
            "0.01",
            "--baseline",
            "--early-stopping",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "params ratio" in result.output and "gain from distillation" in result.output
    assert Artifact(tmp_path / "cli").manifest.config["baseline"] is True


def test_unlabelled_images_teach_the_student_the_teachers_answers_there(teacher, tmp_path):
    """Images with no labels used (another domain) are learned from the teacher's soft targets
    alone: on them the student then agrees with the teacher more than a student that never saw them."""
    from PIL import Image

    from edgexfer.data import Sample, load_arrays

    artifact, data = teacher
    other_domain = tmp_path / "other_domain"
    other_domain.mkdir()
    rng = np.random.default_rng(3)
    for index in range(90):  # another domain: random colours, each image one flat colour plus noise
        pixels = rng.integers(0, 256, 3) + rng.normal(0, 20, (20, 20, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(other_domain / f"{index}.png")
    options = {**STUDENT, "epochs": 12, "alpha": 0.9}
    seen = capi.distill(artifact.path, data, tmp_path / "seen", unlabelled=str(other_domain), **options)
    unseen = capi.distill(artifact.path, data, tmp_path / "unseen", **options)
    assert seen.metrics["unlabelled_images"] == 90 and unseen.metrics["unlabelled_images"] == 0
    assert seen.metrics["splits"]["train"] == unseen.metrics["splits"]["train"]  # the labelled set is the same

    paths = sorted(other_domain.iterdir())
    teacher_pred = (
        load_keras_model(artifact.model_path)
        .predict(
            _normalised(load_arrays([Sample(p, -1) for p in paths], artifact.manifest.preprocessing)[0], artifact),
            verbose=0,
        )
        .argmax(1)
    )

    def agreement(student):
        x = load_arrays([Sample(p, -1) for p in paths], student.manifest.preprocessing)[0]
        return float(
            (
                load_keras_model(student.model_path).predict(_normalised(x, student), verbose=0).argmax(1)
                == teacher_pred
            ).mean()
        )

    assert agreement(seen) >= 0.85 and agreement(seen) >= agreement(unseen) + 0.15  # measured: 0.91 vs 0.60
    assert seen.metrics["student_accuracy"] >= 0.8  # still right on the labelled domain


def _normalised(uint8_images, artifact):
    from edgexfer.data.preprocess import normalisation_constants

    mean, std = normalisation_constants(artifact.manifest.preprocessing)
    return (uint8_images.astype("float32") - np.asarray(mean, "float32")) / np.asarray(std, "float32")


def test_unlabelled_folder_with_other_classes_is_refused(teacher, tmp_path):
    other = make_color_folder(tmp_path / "other", per_class=2, size=8)
    (other / "green").rename(other / "yellow")
    with pytest.raises(DataError, match="yellow"):
        capi.distill(teacher[0].path, teacher[1], tmp_path / "out", unlabelled=str(other), **STUDENT)


def test_unlabelled_cap_is_a_seeded_subset(tmp_path):
    from PIL import Image

    from edgexfer.compress.config import DistillConfig
    from edgexfer.compress.distill import _unlabelled

    for index in range(10):
        Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(tmp_path / f"{index}.png")
    config = DistillConfig.build(student="cnn_tiny", unlabelled=str(tmp_path), max_unlabelled_images=4)
    first, images = _unlabelled(config, ["a", "b"], log=lambda *_: None)
    again, _ = _unlabelled(config, ["a", "b"], log=lambda *_: None)
    assert len(images.paths) == 4 and images.fingerprint()["files"] == 4
    assert len(first) == 4 and first == again and {s.label for s in first} == {-1}


def test_without_data_the_student_learns_the_teachers_answers_and_reads_no_label(teacher, tmp_path):
    """Source-free distillation: no DATA, only an unlabelled folder. Its class folders are swapped
    (red ↔ green), so a student that read them would be wrong on two classes in three; it must
    instead agree with the teacher and be right on the true labels."""
    artifact, data = teacher
    swapped = make_color_folder(
        tmp_path / "swapped", per_class=30, size=20, seed=4, names={"red": "green", "green": "red"}
    )
    logged = []
    student = capi.distill(
        artifact.path, None, tmp_path / "student", unlabelled=str(swapped), log=logged.append, **STUDENT
    )
    metrics, manifest = student.metrics, student.manifest
    assert metrics["labels_read"] is False and metrics["alpha"] == 1.0  # the soft targets are the whole loss
    assert metrics["student_accuracy"] is None and metrics["teacher_accuracy"] is None
    assert metrics["splits"] == {"train": 0, "unlabelled": 90, "agreement": 90}  # at least 100, or all
    assert metrics["teacher_agreement"] >= 0.9
    assert manifest.dataset["labels_used"] is False and manifest.dataset["path"] == str(swapped.resolve())
    assert "split" not in manifest.extra  # later stages take the teacher's split
    assert any("no label" in line for line in logged)

    from edgexfer.data import load_arrays, scan_image_folder

    truth = scan_image_folder(data, class_names=artifact.manifest.label_names, val_fraction=0, test_fraction=0)
    x, y = load_arrays(truth.all_samples(), student.manifest.preprocessing)
    predicted = load_keras_model(student.model_path).predict(_normalised(x, student), verbose=0).argmax(1)
    assert (predicted == y).mean() >= 0.9  # the true labels, never shown to it


def test_a_distillation_without_data_reproduces_bit_for_bit(teacher, tmp_path):
    from edgexfer import api

    student = capi.distill(
        teacher[0].path, None, tmp_path / "student", unlabelled=str(teacher[1]), **{**STUDENT, "epochs": 2}
    )
    result = api.reproduce(student.path)
    (stage,) = result["stages"]
    assert result["identical"] and stage["comparison"]["model"]["identical"], stage


def test_without_data_options_that_need_labels_are_refused(teacher, tmp_path):
    from edgexfer.errors import ConfigError

    with pytest.raises(ConfigError, match="needs labelled images .* or unlabelled ones alone"):
        capi.distill(teacher[0].path, None, tmp_path / "a", **STUDENT)
    with pytest.raises(ConfigError, match="--baseline .* without DATA there are none"):
        capi.distill(teacher[0].path, None, tmp_path / "b", unlabelled=str(teacher[1]), baseline=True, **STUDENT)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_distill_without_data_shows_agreement_not_accuracy(teacher, tmp_path):
    from edgexfer.cli import app

    artifact, data = teacher
    result = CliRunner().invoke(
        app,
        ["distill", str(artifact.path), "--unlabelled", str(data), "--student", "cnn_tiny", "--epochs", "1"]
        + ["--out", str(tmp_path / "cli"), "--early-stopping", "0"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "agreement with the teacher" in result.output and "no label read" in result.output
    assert "test accuracy" not in result.output and "gap to teacher" not in result.output


@pytest.fixture(scope="module")
def hinted(teacher, tmp_path_factory):
    """The same distillation with the option left out, at feature_weight 0 and at 1."""
    artifact, data = teacher
    root = tmp_path_factory.mktemp("hint")
    options = {**STUDENT, "epochs": 4}
    return {
        "omitted": capi.distill(artifact.path, data, root / "omitted", **options),
        0.0: capi.distill(artifact.path, data, root / "zero", feature_weight=0.0, **options),
        1.0: capi.distill(artifact.path, data, root / "one", feature_weight=1.0, **options),
    }


def test_feature_hint_trains_and_leaves_no_projection_in_the_saved_student(hinted):
    with_hint, without = hinted[1.0].metrics, hinted[0.0].metrics
    assert with_hint["feature_weight"] == 1.0 and without["feature_weight"] == 0.0
    assert with_hint["teacher_features"] == "cached (72 × 128, float32)" and with_hint["teacher_feature_width"] == 128
    losses = with_hint["history"]["feature_loss"]
    assert with_hint["feature_loss"] == losses[-1] and 0.0 <= losses[-1] < 0.7 * losses[0]  # the embeddings align
    assert "feature_loss" not in without and "feature_loss" not in without["history"]
    assert with_hint["student_accuracy"] >= 0.5  # 3 classes: chance is 0.33
    hint_model, plain_model = (load_keras_model(hinted[w].model_path) for w in (1.0, 0.0))
    assert [layer.name for layer in hint_model.layers] == [layer.name for layer in plain_model.layers]
    assert hint_model.count_params() == plain_model.count_params() == with_hint["params"] == without["params"]
    assert not any("projection" in layer.name for layer in hint_model.layers)


def test_feature_weight_zero_is_the_distillation_without_the_option(hinted):
    omitted, zero, one = (load_keras_model(hinted[k].model_path).get_weights() for k in ("omitted", 0.0, 1.0))
    assert all(np.array_equal(a, b) for a, b in zip(omitted, zero, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(zero, one, strict=True))  # the hint does change training


def test_feature_hint_runs_online_with_augmentation(teacher, tmp_path):
    artifact, data = teacher
    options = {**STUDENT, "epochs": 2, "student_img_size": 24, "augment": {"crop_zoom": 0.1}}
    student = capi.distill(artifact.path, data, tmp_path / "online", feature_weight=0.5, alpha=0.0, **options)
    assert student.metrics["teacher_features"] == "online" and student.metrics["feature_weight"] == 0.5
    assert len(student.metrics["history"]["feature_loss"]) == 2 and student.metrics["feature_loss"] > 0.0


def test_teacher_features_are_the_head_dense_input_and_cached_in_float16_when_large(teacher, monkeypatch):
    from edgexfer.compress import distill
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    model = load_keras_model(teacher[0].model_path)
    targets, _ = distill.teacher_logits_model(model, with_features=True)
    x = np.random.default_rng(0).normal(size=(10, 16, 16, 3)).astype("float32")
    expected = keras.Model(model.input, model.get_layer("head_dense").input)(x).numpy()
    images = tf.data.Dataset.from_tensor_slices(x).batch(4)
    logits, features = distill._cached_teacher_features(targets, images, 10)
    assert features.dtype == np.float32 and features.shape == expected.shape
    np.testing.assert_allclose(features, expected, atol=1e-5)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), model(x).numpy(), atol=1e-5)
    monkeypatch.setattr(distill, "_FEATURE_CACHE_FLOAT32_BYTES", 1000)  # 10 × 128 × 4 bytes is over it
    _, small = distill._cached_teacher_features(targets, images, 10)
    assert small.dtype == np.float16
    np.testing.assert_allclose(small.astype(np.float32), expected, rtol=2e-3, atol=1e-3)


def test_feature_hint_needs_a_head_dense_teacher():
    from edgexfer.compress.distill import teacher_logits_model
    from edgexfer.errors import ConfigError
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classifier")(inputs))
    with pytest.raises(ConfigError, match="--feature-weight needs a teacher whose classifier is .*head_dense"):
        teacher_logits_model(other, with_features=True)
    assert teacher_logits_model(other)[1] == "log-probabilities"


def test_correct_teacher_makes_the_soft_targets_agree_with_the_labels(teacher, tmp_path):
    """Knowledge Adjustment: on data whose labels the teacher gets wrong (two classes' folders swapped),
    the corrected soft targets teach the labels; uncorrected, a soft-target-heavy student learns the
    teacher's mistakes."""
    artifact, _ = teacher
    swapped = make_color_folder(tmp_path / "swapped", per_class=30, size=20, names={"red": "green", "green": "red"})
    options = {**STUDENT, "alpha": 0.9, "epochs": 6}
    plain = capi.distill(artifact.path, swapped, tmp_path / "plain", **options)
    corrected = capi.distill(artifact.path, swapped, tmp_path / "corrected", **options, correct_teacher=True)
    labelled = corrected.metrics["splits"]["train"]
    assert corrected.metrics["correct_teacher"] and not plain.metrics["correct_teacher"]
    assert corrected.metrics["teacher_errors_on_labelled"] == plain.metrics["teacher_errors_on_labelled"]
    assert corrected.metrics["teacher_errors_on_labelled"] >= 0.5 * labelled  # two of three classes swapped
    assert corrected.metrics["teacher_accuracy"] <= 0.5  # the teacher is wrong on this data
    assert corrected.metrics["student_accuracy"] >= 0.8
    assert corrected.metrics["student_accuracy"] >= plain.metrics["student_accuracy"] + 0.3


def test_knowledge_adjustment_swaps_the_predicted_and_true_logits_of_wrong_labelled_images():
    from edgexfer.compress.distill_losses import knowledge_adjustment

    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0]], np.float32)
    labels = np.array([1, 1, -1])  # wrong, right, unlabelled
    adjusted = knowledge_adjustment(logits, labels).numpy()
    np.testing.assert_array_equal(adjusted, [[1.0, 2.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0]])
