"""What a stage call records for ``edgexfer reproduce``, without TensorFlow."""

from __future__ import annotations

from edgexfer.config import FinetuneConfig
from edgexfer.provenance import decode, describe_input, encode, environment, folder_digest, recorded
from edgexfer.reproduce import accuracies, compare_metrics, explain


def test_arguments_round_trip_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "coral").mkdir()  # a folder named like an option value
    config = FinetuneConfig.build(epochs=3, seed=7)
    encoded = encode({"config": config, "method": "coral", "calibration": "./data", "alphas": (0.0, 0.5)})
    assert encoded["method"] == "coral"
    assert encoded["calibration"] == {"$path": str(tmp_path / "data")}
    decoded = decode(encoded)
    assert decoded["config"] == config and decoded["alphas"] == [0.0, 0.5]
    assert encode("data", path_parameter=True) == {"$path": str(tmp_path / "data")}
    assert encode("data") == "data"


def test_recorded_stage_keeps_its_call_only_while_it_runs(tmp_path):
    from edgexfer.provenance import current_invocation

    seen = {}

    @recorded
    def stage(data_dir, out, *, epochs: int = 2, log=print):
        seen["record"] = current_invocation()
        return "done"

    (tmp_path / "d").mkdir()
    assert stage(str(tmp_path / "d"), tmp_path / "out", log=None) == "done"
    record = seen["record"]
    assert record["arguments"] == {"data_dir": {"$path": str(tmp_path / "d")}, "epochs": 2}
    assert record["out"] == str(tmp_path / "out") and record["inputs"][0]["kind"] == "folder"
    assert current_invocation() is None


def test_folder_digest_changes_with_a_file_s_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    image = tmp_path / "a" / "x.png"
    image.write_bytes(b"one")
    before = folder_digest(tmp_path)
    image.write_bytes(b"two")  # same size, same name
    assert folder_digest(tmp_path)["sha256"] != before["sha256"]
    assert describe_input("data", str(tmp_path / "gone"))["kind"] == "missing"


def test_explain_names_versions_cpu_and_threads():
    then = {"cpu_model": "A", "isa": ["avx2", "avx512f"], "cpus_available": 2, "env": {}}
    now = {"cpu_model": "B", "isa": ["avx2"], "cpus_available": 1, "env": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
    lines = explain(then, now, {"tensorflow": "2.20.0"}, {"tensorflow": "2.21.0"})
    assert lines == [
        "tensorflow 2.20.0 then, 2.21.0 now",
        "CPU: A then, B now",
        "CPUs available to the process: 2 then, 1 now",
        "environment switches: {} then, {'TF_ENABLE_ONEDNN_OPTS': '0'} now",
        "CPU instruction sets: avx512f only then, none only now",
    ]
    assert environment()["cpu_count"] >= 1


def test_metrics_comparison_reads_every_accuracy_and_no_timing():
    first = {
        "test_accuracy": 0.9,
        "val": {"accuracy": 0.8},
        "timings_seconds": {"x": 1.0},
        "history": [{"val_accuracy": 0.5}],
    }
    second = {**first, "test_accuracy": 0.85, "timings_seconds": {"x": 2.0}}
    assert set(accuracies(first)) == {"test_accuracy", "val.accuracy", "history[0].val_accuracy"}
    result = compare_metrics(first, second)
    assert result["differing"] == {"test_accuracy": [0.9, 0.85]} and abs(result["max_abs_diff"] - 0.05) < 1e-12


def test_a_child_never_keeps_its_parent_s_recorded_call(tmp_path):
    """Stages copy their parent's ``extra``; the record must be the child's own call (or none)."""
    from edgexfer.artifact import Artifact, Manifest, Preprocessing, writing_artifact

    def manifest(extra):
        return Manifest(
            stage="adapt",
            label_names=["a"],
            preprocessing=Preprocessing(input_size=8),
            backbone="cnn_tiny",
            weights="none",
            extra=extra,
        )

    parents_call = {
        "function": "edgexfer.train.finetune:finetune",
        "out": str(tmp_path / "finetune"),
        "stage": "finetune",
    }

    @recorded
    def stage(data_dir, out):
        with writing_artifact(out) as writer:
            return writer.commit(manifest({"invocation": parents_call, "kept": 1}))

    (tmp_path / "d").mkdir()
    child = stage(tmp_path / "d", tmp_path / "child")
    assert child.manifest.extra["invocation"]["out"] == str(tmp_path / "child")
    assert child.manifest.extra["invocation"]["stage"] == "adapt" and child.manifest.extra["kept"] == 1
    with writing_artifact(tmp_path / "unrecorded") as writer:
        plain = writer.commit(manifest({"invocation": parents_call}))
    assert "invocation" not in Artifact(plain.path).manifest.extra
