"""Export a tiny trained CNN to every format and run it with the on-device runtime.

The model is real (two conv layers, trained two epochs on generated images whose class
shows in colour and position), so parity and int8 agreement are measured, not assumed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgexfer.artifact import Artifact, Manifest, Preprocessing, sha256_path, writing_artifact
from edgexfer.errors import ArtifactError, ConfigError, DataError
from edgexfer.export import export_artifact
from edgexfer.runtime import load_model, normalize

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

LABELS = ["red", "green", "blue"]
PRE = Preprocessing(input_size=16, mean=(120.0, 120.0, 120.0), std=(64.0, 64.0, 64.0))
RUNTIME_EXPORTS = [
    ("tflite", "none"),
    ("tflite", "fp16"),
    ("tflite", "dynamic"),
    ("tflite", "int8"),
    ("onnx", "none"),
    ("onnx", "dynamic"),
    ("onnx", "int8"),
]


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 16×16 images; class c has a brighter channel c and a brighter band of rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    x = rng.normal(110, 45, (n, 16, 16, 3))
    for i, c in enumerate(y):
        x[i, ..., c] += 25
        x[i, 5 * c : 5 * c + 6] += 20
    return np.clip(x, 0, 255).astype(np.uint8), y


def tiny_cnn(keras):
    inputs = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax")(h))


def write_keras_artifact(out: Path, model, stage: str, quantization=None) -> Path:
    manifest = Manifest(
        stage=stage,
        label_names=LABELS,
        preprocessing=PRE,
        backbone="tiny_cnn",
        weights="random",
        model_file="model.h5",
        seed=0,
        quantization=quantization,
    )
    with writing_artifact(out) as writer:
        model.save(writer.file("model.h5"), include_optimizer=False, save_format="h5")
        writer.commit(manifest, {"accuracy": None})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    tf.random.set_seed(0)
    root = tmp_path_factory.mktemp("export")
    x_train, y_train = make_images(600, seed=0)
    model = tiny_cnn(keras)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(normalize(x_train, PRE), y_train, epochs=2, batch_size=32, verbose=0)
    x_test, y_test = make_images(300, seed=1)
    probs = model.predict(normalize(x_test, PRE), verbose=0)
    src = write_keras_artifact(root / "finetune", model, "finetune")
    return SimpleNamespace(
        root=root, src=src, model=model, keras=keras, x=x_test, y=y_test, probs=probs, calibration=x_train[:100]
    )


@pytest.fixture(scope="module")
def exported(tiny):
    arts = {}
    for fmt, quant in RUNTIME_EXPORTS + [("saved_model", "none")]:
        calibration = tiny.calibration if quant == "int8" else None
        arts[fmt, quant] = export_artifact(
            tiny.src, tiny.root / f"{fmt}-{quant}", fmt, quant, calibration_images=calibration
        )
    return arts


def test_keras_model_is_not_trivial(tiny):
    # unsaturated probabilities, so parity below compares real numbers
    assert 0.4 < tiny.probs.max(axis=1).mean() < 0.99
    assert (tiny.probs.argmax(1) == tiny.y).mean() > 0.8


@pytest.mark.parametrize("fmt,tolerance", [("tflite", 1e-5), ("onnx", 1e-4)])
def test_float_export_matches_keras(tiny, exported, fmt, tolerance):
    probs = load_model(exported[fmt, "none"].path).predict_proba(tiny.x)
    assert probs.dtype == np.float32 and probs.shape == tiny.probs.shape
    assert np.abs(probs - tiny.probs).max() <= tolerance


@pytest.mark.parametrize(
    "fmt,quant,max_dp",
    [
        ("tflite", "fp16", 1e-2),
        ("tflite", "dynamic", 0.05),
        ("onnx", "dynamic", 0.05),
        ("tflite", "int8", 0.1),
        ("onnx", "int8", 0.1),
    ],
)
def test_quantized_export_agrees_with_keras(tiny, exported, fmt, quant, max_dp):
    probs = load_model(exported[fmt, quant].path).predict_proba(tiny.x)
    agreement = (probs.argmax(1) == tiny.probs.argmax(1)).mean()
    assert agreement >= 0.9
    assert np.abs(probs - tiny.probs).max() <= max_dp


def test_int8_tflite_is_full_integer(exported):
    artifact = exported["tflite", "int8"]
    quantization = artifact.manifest.quantization
    assert quantization["mode"] == "int8"
    # uint8 I/O by default: what MediaPipe Tasks and the Task Library accept (test_tflite_metadata.py)
    assert quantization["input"]["dtype"] == "uint8" and quantization["output"]["dtype"] == "uint8"
    assert quantization["fp32_tensor_count"] == 0
    assert artifact.metrics["fp32_tensor_count"] == 0
    model = load_model(artifact.path)
    assert model.input_dtype == np.uint8
    assert model.input_quantization == (quantization["input"]["scale"], quantization["input"]["zero_point"])
    assert model.output_quantization == (quantization["output"]["scale"], quantization["output"]["zero_point"])


def test_int8_onnx_has_no_float_weights(exported):
    quantization = exported["onnx", "int8"].manifest.quantization
    assert quantization["fp32_weight_count"] == 0 and quantization["quantize_linear_count"] > 0
    assert exported["onnx", "none"].manifest.quantization["fp32_weight_count"] == 3


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_is_smaller_than_float(exported, fmt):
    int8, float32 = exported[fmt, "int8"], exported[fmt, "none"]
    assert int8.model_path.stat().st_size < float32.model_path.stat().st_size
    assert int8.metrics["size_bytes"] == int8.model_path.stat().st_size


def test_export_manifest_and_metrics(tiny, exported):
    source = Artifact(tiny.src)
    for (fmt, quant), artifact in exported.items():
        manifest = artifact.manifest
        assert manifest.stage == "export"
        assert (
            manifest.model_file == {"tflite": "model.tflite", "onnx": "model.onnx", "saved_model": "saved_model"}[fmt]
        )
        assert manifest.parent["sha256"] == sha256_path(source.model_path)
        assert manifest.parent["stage"] == "finetune"
        assert manifest.label_names == LABELS and manifest.preprocessing == PRE
        assert manifest.config["format"] == fmt and manifest.config["quant"] == quant
        assert manifest.quantization["mode"] == quant
        assert (artifact.path / "labels.txt").read_text().split() == LABELS
        metrics = artifact.metrics
        assert metrics["size_bytes"] > 0 and 0 < metrics["gzip_bytes"] <= metrics["size_bytes"] * 1.1
        assert metrics["conversion_seconds"] >= 0
    assert exported["onnx", "none"].manifest.config["opset"] == 15
    assert "slower" in exported["onnx", "dynamic"].manifest.extra["warnings"][0]


@pytest.mark.parametrize("fmt,quant", RUNTIME_EXPORTS)
def test_model_file_alone_carries_labels_and_preprocessing(tiny, exported, tmp_path, fmt, quant):
    artifact = exported[fmt, quant]
    alone = tmp_path / f"copied{artifact.model_path.suffix}"
    shutil.copy(artifact.model_path, alone)
    model = load_model(alone, num_threads=1)
    assert model.label_names == LABELS
    assert model.preprocessing == PRE
    assert model.manifest["format"] == fmt and model.manifest["quant"] == quant
    np.testing.assert_array_equal(
        model.predict_proba(tiny.x[:20]), load_model(artifact.path).predict_proba(tiny.x[:20])
    )


def test_batching_does_not_change_results(tiny, exported):
    for key in [("tflite", "int8"), ("onnx", "none")]:
        model = load_model(exported[key].path)
        full = model.predict_proba(tiny.x[:37], batch_size=64)
        np.testing.assert_allclose(model.predict_proba(tiny.x[:37], batch_size=5), full, atol=1e-6)
        np.testing.assert_allclose(model.predict_proba(tiny.x[:1]), full[:1], atol=1e-6)


def test_predict_files(tiny, exported, tmp_path):
    from PIL import Image

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"rgb{i}.png")
        Image.fromarray(tiny.x[i]).save(paths[-1])
    # other modes and sizes are converted and resized
    Image.fromarray(tiny.x[4]).resize((40, 40)).save(tmp_path / "big.jpg")
    Image.fromarray(tiny.x[5]).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(tiny.x[6]).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(tiny.x[7]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(tiny.x[8, ..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    paths += [tmp_path / n for n in ("big.jpg", "rgba.png", "gray.png", "cmyk.jpg", "gray16.png")]
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")

    model = load_model(exported["tflite", "none"].path)
    results = model.predict_files(paths, top_k=2)
    assert [r.path for r in results] == [str(p) for p in paths]
    expected = model.predict_proba(tiny.x[:4])
    for result, row in zip(results[:4], expected):
        assert result.label == LABELS[int(row.argmax())]
        assert result.score == pytest.approx(float(row.max()), abs=1e-6)
    for result in results:
        assert len(result.top_k) == 2 and result.top_k[0] == (result.label, result.score)
        assert result.top_k[0][1] >= result.top_k[1][1]
    assert json.dumps([r.to_dict() for r in results])
    assert len(model.predict_files(paths[:1], top_k=10)[0].top_k) == len(LABELS)


def test_corrupt_and_missing_images_name_the_file(exported, tmp_path):
    model = load_model(exported["onnx", "int8"].path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match="corrupt.jpg"):
        model.predict_files([corrupt])
    truncated = tmp_path / "truncated.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "ok.png")
    truncated.write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    with pytest.raises(DataError, match="truncated.png"):
        model.predict_files([truncated])
    with pytest.raises(DataError, match="missing.png"):
        model.predict_files([tmp_path / "missing.png"])


def test_predict_proba_rejects_wrong_input(tiny, exported):
    model = load_model(exported["tflite", "int8"].path)
    with pytest.raises(DataError, match="uint8"):
        model.predict_proba(tiny.x.astype(np.float32))
    with pytest.raises(DataError, match="shape"):
        model.predict_proba(tiny.x[:, :8])
    with pytest.raises(ConfigError, match="top_k"):
        model.predict_files([], top_k=0)


@pytest.mark.parametrize(
    "name,match",
    [
        ("fake.tflite", "is not a TFLite model"),
        ("fake.onnx", "is not an ONNX model"),
        ("fake.txt", "is not a TFLite/ONNX model"),
    ],
)
def test_not_a_model_file(tmp_path, name, match):
    path = tmp_path / name
    path.write_text("this is a text file, not a model\n" * 10)
    with pytest.raises(ArtifactError, match=match):
        load_model(path)


def test_plain_tflite_needs_labels_and_preprocessing(tiny, tmp_path):
    from edgexfer.export._tflite import tflite_bytes

    plain = tmp_path / "plain.tflite"
    plain.write_bytes(tflite_bytes(tiny.model, "none"))
    with pytest.raises(ArtifactError, match="carries no edgexfer labels"):
        load_model(plain)
    model = load_model(plain, label_names=LABELS, preprocessing=PRE)
    assert np.abs(model.predict_proba(tiny.x) - tiny.probs).max() <= 1e-5
    with pytest.raises(ArtifactError, match="2 label names"):
        load_model(plain, label_names=LABELS[:2], preprocessing=PRE)


def test_runtime_refuses_keras_and_saved_model_artifacts(tiny, exported, tmp_path):
    with pytest.raises(ArtifactError, match="export it to tflite or onnx"):
        load_model(tiny.src)
    with pytest.raises(ArtifactError, match="export it to tflite or onnx"):
        load_model(exported["saved_model", "none"].path)
    with pytest.raises(ArtifactError, match="not an export artifact"):
        load_model(tmp_path)


def test_saved_model_export(tiny, exported):
    saved = exported["saved_model", "none"].model_path
    assert (saved / "saved_model.pb").is_file()
    embedded = json.loads((saved / "assets.extra" / "edgexfer.json").read_text())
    assert embedded["label_names"] == LABELS
    import tensorflow as tf

    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    probs = serve(input=tf.constant(normalize(tiny.x[:8], PRE)))["probabilities"].numpy()
    assert np.abs(probs - tiny.probs[:8]).max() < 1e-5


def test_bad_format_quant_combination_fails_before_writing(tiny):
    out = tiny.root / "bad-combo"
    with pytest.raises(ConfigError, match="--quant fp16 is not available for onnx; onnx allows: none, dynamic, int8"):
        export_artifact(tiny.src, out, "onnx", "fp16")
    assert not out.exists()


def test_int8_needs_enough_calibration_images(tiny):
    out = tiny.root / "no-calibration"
    with pytest.raises(ConfigError, match="needs calibration images"):
        export_artifact(tiny.src, out, "tflite", "int8")
    with pytest.raises(ConfigError, match="has 5 images; int8 needs at least 10"):
        export_artifact(tiny.src, out, "onnx", "int8", calibration_images=tiny.calibration[:5])
    assert not out.exists()
    assert not [p for p in tiny.root.iterdir() if p.name.startswith(".no-calibration")]  # tmp cleaned


def test_calibration_from_an_image_folder(tiny, tmp_path):
    from PIL import Image

    for i, image in enumerate(tiny.calibration[:24]):
        (tmp_path / f"class{i % 3}").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / f"class{i % 3}" / f"{i}.png")
    artifact = export_artifact(
        tiny.src, tiny.root / "from-folder", "tflite", "int8", calibration_images=tmp_path, max_calibration_images=12
    )
    assert artifact.manifest.config["calibration_images"] == 12
    probs = load_model(artifact.path).predict_proba(tiny.x)
    assert (probs.argmax(1) == tiny.probs.argmax(1)).mean() >= 0.9


def test_other_bad_inputs(tiny, exported, tmp_path):
    with pytest.raises(ConfigError, match="--opset 21"):
        export_artifact(tiny.src, tmp_path / "opset", "onnx", "none", opset=21)
    with pytest.raises(ConfigError, match="is the input artifact"):
        export_artifact(tiny.src, tiny.src, "tflite", "none")
    with pytest.raises(ArtifactError, match="not a Keras model"):
        export_artifact(exported["tflite", "none"].path, tmp_path / "again", "onnx", "none")
    empty = tmp_path / "no-model"
    with writing_artifact(empty) as writer:
        writer.commit(
            Manifest(stage="finetune", label_names=LABELS, preprocessing=PRE, backbone="tiny_cnn", weights="random")
        )
    with pytest.raises(ArtifactError, match="has no model file"):
        export_artifact(empty, tmp_path / "out", "tflite", "none")


def test_qat_model_exports_to_int8_without_calibration(tiny):
    import tensorflow_model_optimization as tfmot

    x_train, y_train = make_images(300, seed=2)
    clone = tiny.keras.models.clone_model(tiny.model)  # quantize_model must not touch tiny.model
    clone.set_weights(tiny.model.get_weights())
    qat = tfmot.quantization.keras.quantize_model(clone)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(normalize(x_train, PRE), y_train, epochs=2, verbose=0)
    expected = qat.predict(normalize(tiny.x, PRE), verbose=0)
    src = write_keras_artifact(tiny.root / "qat", qat, "qat", quantization={"mode": "qat"})
    for fmt in ("tflite", "onnx"):
        artifact = export_artifact(src, tiny.root / f"qat-{fmt}", fmt, "int8")
        quantization = artifact.manifest.quantization
        assert quantization["from_qat"] is True and quantization["calibration_images"] == 0
        assert quantization["source"] == {"mode": "qat"}
        model = load_model(artifact.path)
        probs = model.predict_proba(tiny.x)
        assert (probs.argmax(1) == expected.argmax(1)).mean() >= 0.9
        if fmt == "tflite":
            assert model.input_dtype == np.uint8 and quantization["fp32_tensor_count"] == 0  # uint8 I/O default
        else:
            assert quantization["fp32_weight_count"] == 0


def test_macs_are_the_same_counted_on_tflite_and_onnx_float_and_int8(tiny, exported):
    from edgexfer.evaluate.macs import keras_macs, onnx_macs, tflite_macs

    # conv 14×14 × 3·3·3·16, conv (stride 2) 6×6 × 3·3·16·32, dense 32·3
    expected = 14 * 14 * 27 * 16 + 6 * 6 * 144 * 32 + 32 * 3
    for quant in ("none", "int8"):
        assert tflite_macs(exported["tflite", quant].model_path) == expected
        assert onnx_macs(exported["onnx", quant].model_path) == expected
    assert keras_macs(tiny.model) == expected
    # every export artifact's metrics.json carries the count (a SavedModel's from its Keras model)
    assert {key: artifact.metrics["macs"] for key, artifact in exported.items()} == dict.fromkeys(exported, expected)
