"""Standard TFLite Metadata, ``--io-type`` and the ONNX keys other consumers read.

A real (tiny) fine-tune on generated colour squares is exported to TFLite float, int8 with each
I/O type, and ONNX; the files are read back with edgexfer's runtime, with and without
edgexfer's own metadata entry, and damaged the ways a file from outside can be.
"""

from __future__ import annotations

import ast
import io
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgexfer.errors import ArtifactError, ConfigError, ExportError
from edgexfer.export import export_artifact
from edgexfer.runtime import load_model
from edgexfer.runtime.images import list_image_files, load_images
from edgexfer.runtime.metadata import TFLITE_METADATA_NAME, read_tflite_metadata
from edgexfer.runtime.tflite_metadata import (
    LABELS_FILE,
    STANDARD_METADATA_NAME,
    pack_files,
    read_standard_metadata,
    remove_metadata_entry,
    split_packed_files,
)
from kit import TINY_FINETUNE

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

COLORS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}
LABELS = sorted(COLORS)  # class folders in sorted order


def make_color_folder(root: Path, per_class=16, size=20, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 60, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgexfer import api

    root = tmp_path_factory.mktemp("tflite-metadata")
    data = make_color_folder(root / "data")
    artifact = api.finetune(
        data,
        root / "ft",
        **TINY_FINETUNE,
    )
    files = list_image_files(data)
    exports = {
        key: export_artifact(
            artifact.path,
            root / f"{key[0]}-{key[1]}-{key[2]}",
            key[0],
            key[1],
            calibration_images=data if key[1] == "int8" else None,
            io_type=key[2],
        )
        for key in [
            ("tflite", "none", None),
            ("tflite", "int8", None),
            ("tflite", "int8", "int8"),
            ("tflite", "int8", "float32"),
            ("onnx", "none", None),
        ]
    }
    pixels = load_images(files, artifact.manifest.preprocessing)
    return SimpleNamespace(root=root, data=data, artifact=artifact, files=files, pixels=pixels, exports=exports)


def model_file(tiny, *key) -> Path:
    return tiny.exports[key].model_path


def test_default_int8_io_is_uint8_fed_raw_pixels(tiny):
    artifact = tiny.exports["tflite", "int8", None]
    quantization = artifact.manifest.quantization
    pre = tiny.artifact.manifest.preprocessing
    assert quantization["io_type"] == "uint8" and artifact.manifest.config["io_type"] == "uint8"
    assert quantization["fp32_tensor_count"] == 0
    # the input's real value is (pixel - mean) / std: a client feeds raw pixels
    assert quantization["input"] == {
        "dtype": "uint8",
        "scale": pytest.approx(1 / pre.std[0]),
        "zero_point": round(pre.mean[0]),
    }
    assert quantization["output"]["dtype"] == "uint8"
    model = load_model(artifact.path)
    assert model.input_dtype == np.uint8


def test_io_types_do_not_change_int8_predictions(tiny):
    """The int8 graph is the same whichever I/O type wraps it (at most 1 output step apart)."""
    probs = {
        io_type: load_model(tiny.exports["tflite", "int8", io_type].path).predict_proba(tiny.pixels)
        for io_type in (None, "int8", "float32")
    }
    for io_type in ("int8", "float32"):
        assert (probs[io_type].argmax(1) == probs[None].argmax(1)).mean() == 1.0
        assert np.abs(probs[io_type] - probs[None]).max() <= 2 / 256
    float_probs = load_model(tiny.exports["tflite", "none", None].path).predict_proba(tiny.pixels)
    assert (float_probs.argmax(1) == probs[None].argmax(1)).mean() >= 0.95


def test_standard_metadata_describes_the_classifier(tiny):
    pre = tiny.artifact.manifest.preprocessing
    for key in [("tflite", "none", None), ("tflite", "int8", None)]:
        path = model_file(tiny, *key)
        content = path.read_bytes()
        standard = read_standard_metadata(content, str(path))
        assert standard.label_names == LABELS
        assert standard.mean == tuple(pre.mean) and standard.std == tuple(pre.std)
        assert standard.color == "RGB" and standard.name
        # associated files are packed as a zip after the flatbuffer, as the schema's populator does
        assert zipfile.is_zipfile(path)
        assert zipfile.ZipFile(path).read(LABELS_FILE).decode().split() == LABELS


@pytest.mark.parametrize("key", [("tflite", "none", None), ("tflite", "int8", None), ("tflite", "int8", "float32")])
def test_standard_metadata_alone_gives_the_same_predictions(tiny, tmp_path, key):
    path = model_file(tiny, *key)
    stripped = tmp_path / "model.tflite"
    stripped.write_bytes(remove_metadata_entry(path.read_bytes(), TFLITE_METADATA_NAME))
    assert read_tflite_metadata(stripped.read_bytes()) is None
    original, alone = load_model(path), load_model(stripped)
    assert alone.manifest.get("source") == "standard TFLite metadata"
    assert alone.label_names == original.label_names
    files = tiny.files[::4]
    assert [p.label for p in alone.predict_files(files)] == [p.label for p in original.predict_files(files)]
    assert np.abs(alone.predict_proba(tiny.pixels) - original.predict_proba(tiny.pixels)).max() <= 1e-6


def _error_of(path: Path) -> str:
    with pytest.raises(ArtifactError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_truncated_archive_is_one_line_naming_the_file(tiny, tmp_path):
    content = model_file(tiny, "tflite", "int8", None).read_bytes()
    broken = tmp_path / "truncated.tflite"
    broken.write_bytes(content[:-30])
    assert "labels file 'labels.txt'" in _error_of(broken)
    damaged = tmp_path / "damaged.tflite"
    flat, files = split_packed_files(content, "x")
    packed = bytearray(pack_files(flat, files))
    packed[len(flat) + 2] ^= 0xFF  # corrupt the local file header of labels.txt
    damaged.write_bytes(bytes(packed))
    assert "cannot be read" in _error_of(damaged) or "labels file" in _error_of(damaged)


def test_labels_count_unlike_the_classes_is_an_error(tiny, tmp_path):
    flat, _ = split_packed_files(model_file(tiny, "tflite", "none", None).read_bytes(), "x")
    wrong = tmp_path / "wrong.tflite"
    wrong.write_bytes(pack_files(flat, {LABELS_FILE: b"red\ngreen\n"}))
    assert "has 2 labels but the model has 3 output classes" in _error_of(wrong)


def test_labels_that_disagree_with_edgexfers_entry_are_an_error(tiny, tmp_path):
    flat, _ = split_packed_files(model_file(tiny, "tflite", "none", None).read_bytes(), "x")
    swapped = tmp_path / "swapped.tflite"
    swapped.write_bytes(pack_files(flat, {LABELS_FILE: b"green\nred\nblue\n"}))
    assert "name different labels" in _error_of(swapped)
    alone = tmp_path / "alone.tflite"
    alone.write_bytes(remove_metadata_entry(swapped.read_bytes(), TFLITE_METADATA_NAME))
    assert load_model(alone).label_names == ["green", "red", "blue"]  # the standard entry is all it has


def test_predict_cli_on_malformed_metadata_is_one_line(tiny, tmp_path, capsys):
    from edgexfer import cli

    broken = tmp_path / "broken.tflite"
    broken.write_bytes(model_file(tiny, "tflite", "int8", None).read_bytes()[:-30])
    saved = sys.argv
    sys.argv = ["edgexfer", "predict", str(broken), str(tiny.files[0])]
    try:
        with pytest.raises(SystemExit) as info:
            cli.main()
    finally:
        sys.argv = saved
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2 and "Traceback" not in err
    assert len(lines) == 1 and "broken.tflite" in lines[0] and "labels.txt" in lines[0]


def test_io_type_uint8_on_a_float_model_names_the_float_tensors(tiny):
    out = tiny.root / "float-uint8"
    with pytest.raises(ExportError) as info:
        export_artifact(tiny.artifact.path, out, "tflite", "none", io_type="uint8")
    message = str(info.value)
    assert "\n" not in message and "--io-type uint8 needs a fully integer model" in message
    assert "float32 tensors ('" in message and "--io-type float32" in message
    assert not out.exists()


def test_io_type_is_checked_before_anything_is_loaded(tiny):
    with pytest.raises(ConfigError, match="--io-type is not available for onnx"):
        export_artifact(tiny.artifact.path, tiny.root / "x", "onnx", "int8", io_type="uint8")
    with pytest.raises(ConfigError, match="allowed: uint8, int8, float32"):
        export_artifact(tiny.artifact.path, tiny.root / "x", "tflite", "int8", io_type="int16")


def test_onnx_carries_the_keys_other_consumers_read(tiny):
    import onnxruntime as ort

    path = model_file(tiny, "onnx", "none", None)
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    props = meta.custom_metadata_map
    # Ultralytics' AutoBackend reads these with ast.literal_eval
    assert ast.literal_eval(props["names"]) == dict(enumerate(LABELS))
    assert ast.literal_eval(props["imgsz"]) == [16, 16] and props["task"] == "classify"
    pre = tiny.artifact.manifest.preprocessing
    assert f"mean {list(pre.mean)}" in meta.description and "(pixel - mean) / std" in meta.description
    assert "edgexfer.labels" in props  # edgexfer's own keys stay
    assert load_model(path).label_names == LABELS


def test_file_packed_with_mediapipe_style_zip_round_trips(tiny):
    """pack_files writes what Python's zipfile (the reference populator's tool) reads back."""
    flat, files = split_packed_files(model_file(tiny, "tflite", "none", None).read_bytes(), "x")
    assert set(files) == {LABELS_FILE}
    archive = zipfile.ZipFile(io.BytesIO(pack_files(flat, files)))
    assert archive.namelist() == [LABELS_FILE] and archive.getinfo(LABELS_FILE).compress_type == zipfile.ZIP_STORED
    assert STANDARD_METADATA_NAME.encode() in flat


def test_check_covers_every_io_type(tiny, tmp_path):
    """Parity with the Keras parent and latency are measured through the chosen I/O type."""
    from edgexfer.evaluate.check import check_artifacts
    from edgexfer.evaluate.latency import LatencySettings

    keys = [("tflite", "int8", None), ("tflite", "int8", "int8"), ("tflite", "int8", "float32")]
    result = check_artifacts(
        [tiny.exports[key].path for key in keys],
        tiny.data,
        out=tmp_path,
        latency=LatencySettings(warmup=1, runs=3, batch_size=4, threads=(1,)),
    )
    assert [row["io_type"] for row in result["candidates"]] == ["uint8", "int8", "float32"]
    accuracies = set()
    for row in result["candidates"]:
        assert row["parity"]["agreement"] >= 0.9 and row["latency"], row
        accuracies.add(row["parity"]["accuracy"])
    # the same int8 graph behind each I/O type: at most one image of 48 apart (the uint8 input's
    # zero point rounds cnn_tiny's mean 127.5, half an int8 step)
    assert max(accuracies) - min(accuracies) <= 1 / 48 + 1e-9


def test_packed_files_carry_a_fixed_time_so_the_same_export_is_the_same_bytes(monkeypatch):
    """The zip of associated files used to carry the time of writing: the same export made a minute
    later differed in four bytes, and ``edgexfer reproduce`` found the file bytes unequal."""
    import time

    first = pack_files(b"flat", {LABELS_FILE: b"red\ngreen\n"})
    later = time.time() + 3600 * 24 * 400
    monkeypatch.setattr(time, "localtime", lambda seconds=None: time.gmtime(later))
    assert pack_files(b"flat", {LABELS_FILE: b"red\ngreen\n"}) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        (entry,) = archive.infolist()
        assert entry.date_time == (1980, 1, 1, 0, 0, 0) and archive.read(entry) == b"red\ngreen\n"
