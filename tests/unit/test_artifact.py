import json

import pytest

from edgexfer.artifact import Artifact, Manifest, Preprocessing, sha256_path, writing_artifact
from edgexfer.errors import ArtifactError


def _manifest(**overrides):
    values = dict(
        stage="finetune",
        label_names=["cat", "dog"],
        preprocessing=Preprocessing(input_size=32),
        backbone="cnn_tiny",
        weights="none",
        model_file="model.h5",
        seed=3,
    )
    values.update(overrides)
    return Manifest(**values)


def _write(out, content=b"weights"):
    with writing_artifact(out) as writer:
        writer.file("model.h5").write_bytes(content)
        return writer.commit(_manifest(), {"test_accuracy": 0.9})


def test_commit_writes_manifest_metrics_labels(tmp_path):
    artifact = _write(tmp_path / "a")
    assert (tmp_path / "a" / "labels.txt").read_text() == "cat\ndog\n"
    assert artifact.metrics == {"test_accuracy": 0.9}
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["created_at"]
    assert manifest["versions"]["numpy"]
    assert Artifact(tmp_path / "a").manifest.preprocessing == Preprocessing(input_size=32)
    assert artifact.model_path.name == "model.h5"


def test_failure_inside_the_block_leaves_nothing_and_keeps_the_old_artifact(tmp_path):
    _write(tmp_path / "a", b"old")
    with pytest.raises(RuntimeError):
        with writing_artifact(tmp_path / "a") as writer:
            writer.file("model.h5").write_bytes(b"half")
            raise RuntimeError("crash mid-stage")
    assert (tmp_path / "a" / "model.h5").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary directory left


def test_replacing_an_artifact_swaps_it_whole(tmp_path):
    _write(tmp_path / "a", b"old")
    _write(tmp_path / "a", b"new")
    assert (tmp_path / "a" / "model.h5").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_refuses_to_overwrite_a_directory_that_is_not_an_artifact(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="not an edgexfer artifact"):
        _write(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_lineage_and_parent_sha(tmp_path):
    parent = _write(tmp_path / "parent", b"parent-weights")
    with writing_artifact(tmp_path / "child") as writer:
        writer.file("model.h5").write_bytes(b"child")
        child = writer.commit(_manifest(stage="prune", parent=parent.parent_ref()))
    assert child.manifest.parent["sha256"] == sha256_path(tmp_path / "parent" / "model.h5")
    assert [a.manifest.stage for a in child.lineage()] == ["prune", "finetune"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no manifest.json"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{not json")), "not valid JSON"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"schema_version": 99}')), "schema_version 99"),
    ],
)
def test_bad_artifacts_get_clear_errors(tmp_path, setup, message):
    setup(tmp_path / "x")
    with pytest.raises(ArtifactError, match=message):
        Artifact(tmp_path / "x")


def test_missing_model_file_is_named(tmp_path):
    artifact = _write(tmp_path / "a")
    (tmp_path / "a" / "model.h5").unlink()
    with pytest.raises(ArtifactError, match="has no model file"):
        _ = artifact.model_path
