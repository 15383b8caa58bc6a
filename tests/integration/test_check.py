"""``check_artifacts`` on a tiny trained CNN exported to every runtime format: parity numbers,
the gate, latency rows and the lineage walk to the Keras parent."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
from edgexfer.errors import DataError, ParityError
from edgexfer.evaluate.check import check_artifacts
from edgexfer.evaluate.latency import LatencySettings, ort_providers
from edgexfer.export.stage import export_stage

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

LABELS = ["a", "b", "c"]
PRE = Preprocessing(input_size=12, mean=(120.0, 120.0, 120.0), std=(64.0, 64.0, 64.0))
NO_LATENCY = dict(measure_latency=False)


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 12×12 images; class c has a brighter channel c and a brighter band of rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    x = rng.normal(110, 45, (n, 12, 12, 3))
    for i, c in enumerate(y):
        x[i, ..., c] += 25
        x[i, 4 * c : 4 * c + 4] += 20
    return np.clip(x, 0, 255).astype(np.uint8), y


def write_folder(root: Path, x: np.ndarray, y: np.ndarray, names=LABELS) -> Path:
    for index, (image, label) in enumerate(zip(x, y)):
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / names[label] / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgexfer.runtime import normalize
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("check")
    x_train, y_train = make_images(480, seed=0)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(normalize(x_train, PRE), y_train, epochs=3, batch_size=32, verbose=0)

    train_dir = write_folder(root / "train", x_train[:60], y_train[:60])
    test_dir = write_folder(root / "test", *make_images(90, seed=1))
    manifest = Manifest(
        stage="finetune",
        label_names=LABELS,
        preprocessing=PRE,
        backbone="tiny",
        weights="none",
        model_file="model.h5",
        seed=0,
        dataset={"path": str(train_dir)},
    )
    with writing_artifact(root / "ft") as writer:
        model.save(writer.file("model.h5"), include_optimizer=False, save_format="h5")
        writer.commit(manifest)
    exported = {
        (fmt, quant): export_stage(root / "ft", root / f"{fmt}-{quant}", fmt, quant, calibration_images=40)
        for fmt, quant in [
            ("tflite", "none"),
            ("tflite", "int8"),
            ("onnx", "none"),
            ("onnx", "int8"),
            ("saved_model", "none"),
        ]
    }
    return SimpleNamespace(root=root, test=test_dir, exported=exported)


def test_float_exports_match_keras(tiny, tmp_path):
    models = [tiny.exported[key].path for key in [("tflite", "none"), ("onnx", "none"), ("saved_model", "none")]]
    result = check_artifacts(models, tiny.test, out=tmp_path, min_agreement=1.0, max_acc_drop=0.0, **NO_LATENCY)
    assert result["passed"] and result["n"] == 90
    [parent] = result["parents"]
    assert parent["stage"] == "finetune" and 0.6 < parent["accuracy"] <= 1.0  # a model that learned something
    for row in result["candidates"]:
        parity = row["parity"]
        assert parity["agreement"] == 1.0 and parity["max_abs_diff"] <= 1e-4
        assert parity["accuracy"] == parity["reference_accuracy"] == parent["accuracy"]
        assert all(c["agreement"] == 1.0 for c in parity["per_class"].values())
        assert sum(c["n"] for c in parity["per_class"].values()) == 90
        assert row["size_bytes"] > 0 and row["parent"]["model_file"] == "model.h5"
    assert [r["format"] for r in result["candidates"]] == ["tflite", "onnx", "saved_model"]
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["candidates"][0]["parity"]["agreement"] == 1.0
    assert saved["report"]["json"] == str(tmp_path / "check.json")
    assert "## Parity with the Keras parent" in (tmp_path / "check.md").read_text()


def test_int8_gate_passes_loose_and_fails_impossible_after_writing(tiny, tmp_path):
    models = [tiny.exported["tflite", "int8"].path, tiny.exported["onnx", "int8"].path]
    result = check_artifacts(
        models, tiny.test, out=tmp_path / "loose", min_agreement=0.85, max_acc_drop=0.1, **NO_LATENCY
    )
    assert result["passed"] and result["failed"] == []
    for row in result["candidates"]:
        assert row["quant"] == "int8" and 0 < row["parity"]["max_abs_diff"] < 0.2
        assert row["size_ratio"] < 1

    with pytest.raises(ParityError) as err:
        check_artifacts(
            models, tiny.test, out=tmp_path / "strict", max_acc_drop=-1.0, raise_on_failure=True, **NO_LATENCY
        )
    assert err.value.exit_code == 3 and "tflite-int8" in str(err.value)
    saved = json.loads((tmp_path / "strict" / "check.json").read_text())
    assert saved["passed"] is False and saved["failed"] == ["tflite-int8", "onnx-int8"]
    assert saved["candidates"][0]["failures"][0].startswith("accuracy drop ")
    assert err.value.result["report"]["json"] == str(tmp_path / "strict" / "check.json")


def test_latency_rows_cover_runtimes_batches_and_the_keras_baseline(tiny, tmp_path):
    settings = LatencySettings(warmup=1, runs=3, batch_size=4, threads=(1, 2))
    result = check_artifacts(
        [tiny.exported["tflite", "int8"].path, tiny.exported["onnx", "none"].path],
        tiny.test,
        out=tmp_path,
        latency=settings,
        max_images=30,
    )
    assert result["n"] == 30
    tflite, onnx = result["candidates"]
    assert {(r["runtime"], r["threads"], r["batch"]) for r in tflite["latency"]} == {
        ("litert-xnnpack", t, b) for t in (1, 2) for b in (1, 4)
    }
    gpu = "CUDAExecutionProvider" in ort_providers()
    expected_onnx = {"onnxruntime-cpu"} | ({"onnxruntime-cuda"} if gpu else set())
    assert {r["runtime"] for r in onnx["latency"]} == expected_onnx
    for row in tflite["latency"] + onnx["latency"]:
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["runs"] == 3
        assert row["speedup_vs_keras"] > 0
    [keras] = result["parents"]
    assert [(r["runtime"], r["batch"]) for r in keras["latency"]] == [("keras-tensorflow", 1), ("keras-tensorflow", 4)]
    assert result["latency_settings"]["threads"] == [1, 2]
    assert "CPUExecutionProvider" in result["environment"]["onnxruntime_providers"]
    assert "## Latency" in (tmp_path / "check.md").read_text()
    # MACs (one count, whichever file) and the GMAC/s each CPU row ran at, next to the matmul peak
    assert tflite["macs"] == onnx["macs"] == keras["macs"] > 0
    for row in tflite["latency"] + keras["latency"]:
        assert row["gmacs"] == pytest.approx(row["macs"] * row["batch"] / row["p50_ms"] / 1e6, rel=1e-2)
        assert row["peak_gmacs"] > 0 and row["fraction_of_peak"] == pytest.approx(
            row["gmacs"] / row["peak_gmacs"], rel=1e-2
        )
    assert "## Compute" in (tmp_path / "check.md").read_text()


def test_parent_is_found_through_a_non_keras_artifact(tiny, tmp_path):
    import shutil

    middle = tiny.exported["tflite", "none"]
    manifest = Manifest(
        **{
            **middle.manifest.to_dict(),
            "preprocessing": PRE,
            "parent": middle.parent_ref(),
            "stage": "repack",
            "created_at": "",
        }
    )
    with writing_artifact(tmp_path / "repacked") as writer:
        shutil.copy(middle.model_path, writer.file("model.tflite"))
        writer.commit(manifest)
    result = check_artifacts([tmp_path / "repacked"], tiny.test, out=tmp_path / "check", **NO_LATENCY)
    [row] = result["candidates"]
    assert Path(row["parent"]["path"]) == (tiny.root / "ft").resolve()
    assert row["parity"]["agreement"] == 1.0


def test_test_data_with_other_classes_is_a_data_error(tiny, tmp_path):
    x, y = make_images(12, seed=3)
    other = write_folder(tmp_path / "other", x, y, names=["x", "y", "z"])
    with pytest.raises(DataError, match="do not match the model's classes"):
        check_artifacts([tiny.exported["tflite", "none"].path], other, out=tmp_path / "c", **NO_LATENCY)
