"""Finding the Keras parent of an exported model through the lineage, calibration helpers and
report rendering — on hand-made artifacts with placeholder model files (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from edgexfer.artifact import Artifact, Manifest, Preprocessing, writing_artifact
from edgexfer.data.subset import stratified_subset
from edgexfer.errors import ArtifactError, ConfigError
from edgexfer.evaluate.check import _candidate, keras_ancestor
from edgexfer.evaluate.check_tables import render_check_markdown
from edgexfer.export.stage import default_quant, load_stored_calibration

PRE = Preprocessing(input_size=8)


def _artifact(
    path,
    model_file: str,
    parent: Artifact | None = None,
    stage="finetune",
    quantization=None,
    content: bytes = b"placeholder",
) -> Artifact:
    manifest = Manifest(
        stage=stage,
        label_names=["a", "b"],
        preprocessing=PRE,
        backbone="tiny",
        weights="none",
        model_file=model_file,
        parent=parent.parent_ref() if parent else None,
        quantization=quantization,
    )
    with writing_artifact(path) as writer:
        writer.file(model_file).write_bytes(content)
        return writer.commit(manifest)


def test_nearest_keras_model_is_found_through_non_keras_artifacts(tmp_path):
    keras = _artifact(tmp_path / "ft", "model.h5")
    exported = _artifact(tmp_path / "exp", "model.tflite", keras, stage="export")
    again = _artifact(tmp_path / "again", "model.onnx", exported, stage="export")
    parent, warnings = keras_ancestor(again)
    assert parent.path == keras.path and warnings == []
    assert keras_ancestor(exported)[0].path == keras.path


def test_a_changed_parent_is_reported(tmp_path):
    keras = _artifact(tmp_path / "ft", "model.h5")
    exported = _artifact(tmp_path / "exp", "model.tflite", keras, stage="export")
    (keras.path / "model.h5").write_bytes(b"retrained since")
    parent, warnings = keras_ancestor(exported)
    assert parent.path == keras.path
    assert len(warnings) == 1 and "changed since exp was made from it" in warnings[0]


def test_missing_or_absent_parent_is_an_artifact_error(tmp_path):
    keras = _artifact(tmp_path / "ft", "model.h5")
    exported = _artifact(tmp_path / "exp", "model.tflite", keras, stage="export")
    orphan = _artifact(tmp_path / "orphan", "model.tflite", stage="export")
    with pytest.raises(ArtifactError, match="records no parent"):
        keras_ancestor(orphan)
    import shutil

    shutil.rmtree(keras.path)
    with pytest.raises(ArtifactError, match="no longer exists"):
        keras_ancestor(Artifact(exported.path))


def test_check_refuses_keras_artifacts_and_bare_files(tmp_path):
    keras = _artifact(tmp_path / "ft", "model.h5")
    with pytest.raises(ArtifactError, match="holds a Keras model"):
        _candidate(keras.path)
    bare = tmp_path / "alone.tflite"
    bare.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="bare model file"):
        _candidate(bare)
    exported = _artifact(tmp_path / "exp", "model.tflite", keras, stage="export")
    assert _candidate(exported.model_path).artifact.path == exported.path  # a file inside an artifact


def test_default_quant_follows_the_quantize_stage(tmp_path):
    plain = _artifact(tmp_path / "plain", "model.h5").manifest
    assert default_quant(plain, "onnx") == "none"
    ptq = _artifact(tmp_path / "ptq", "model.h5", quantization={"mode": "ptq", "type": "fp16"}).manifest
    assert default_quant(ptq, "tflite") == "fp16"
    with pytest.raises(ConfigError, match="onnx allows: none, dynamic, int8"):
        default_quant(ptq, "onnx")
    qat = _artifact(tmp_path / "qat", "model.h5", quantization={"mode": "qat"}).manifest
    assert default_quant(qat, "onnx") == "int8"


def test_stored_calibration_is_validated(tmp_path):
    manifest = _artifact(tmp_path / "ptq", "model.h5").manifest
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((12, 8, 8, 3), np.uint8))
    assert load_stored_calibration(good, manifest).shape == (12, 8, 8, 3)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((12, 16, 16, 3), np.uint8))
    with pytest.raises(ArtifactError, match="expected uint8 N×8×8×3"):
        load_stored_calibration(wrong, manifest)
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not numpy")
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_stored_calibration(broken, manifest)


def test_stratified_subset_keeps_classes_in_proportion():
    from pathlib import Path

    from edgexfer.data.folder import Sample

    samples = [Sample(Path(f"a{i:02d}"), 0) for i in range(30)] + [Sample(Path(f"b{i:02d}"), 1) for i in range(10)]
    subset = stratified_subset(samples, 8, seed=0)
    labels = [s.label for s in subset]
    assert len(subset) == 8 and labels.count(1) >= 3
    assert subset == sorted(subset, key=lambda s: str(s.path))
    assert stratified_subset(samples, 8, seed=0) == subset  # seeded
    assert len(stratified_subset(samples, 100)) == 40


def test_markdown_report_shows_the_failing_model():
    parity = {
        "accuracy": 0.9,
        "reference_accuracy": 0.95,
        "accuracy_drop": 0.05,
        "agreement": 0.9,
        "max_abs_diff": 0.2,
        "mean_abs_diff": 0.01,
        "per_class": {"a": {"n": 5, "agreement": 1.0}, "b": {"n": 5, "agreement": 0.8}},
    }
    result = {
        "passed": False,
        "gated": True,
        "failed": ["m-int8"],
        "data": "test",
        "split": "all",
        "n": 10,
        "thresholds": {"min_agreement": 0.95, "max_acc_drop": None},
        "label_names": ["a", "b"],
        "parents": [{"name": "ft", "accuracy": 0.95, "size_bytes": 2000, "latency": []}],
        "candidates": [
            {
                "name": "m-int8",
                "format": "tflite",
                "quant": "int8",
                "parity": parity,
                "size_bytes": 500,
                "size_ratio": 0.25,
                "passed": False,
                "failures": ["agreement 0.9000 < --min-agreement 0.95"],
                "warnings": [],
                "latency": [],
                "artifact": "x",
                "parent": {"path": "ft", "stage": "finetune"},
            }
        ],
        "latency_settings": None,
    }
    text = render_check_markdown(result)
    assert text.startswith("# edgexfer check — FAILED (m-int8)")
    assert (
        "| m-int8 | tflite/int8 | 0.9000 | -0.0500 | 0.9000 | 2.0e-01 | 1.0e-02 | 500 B (0.25×) | "
        "FAIL: agreement 0.9000 < --min-agreement 0.95 |" in text
    )
    assert "| b | 5 | 0.8000 |" in text
