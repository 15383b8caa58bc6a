"""``edgexfer export | check | predict | benchmark`` on a tiny fine-tuned artifact.

The artifact is a real fine-tune (cnn_tiny, 16 px, generated colour images). Most commands
run in-process through ``edgexfer.cli.main`` (TensorFlow is imported once); the ones whose
process matters (a clean export, one-line errors, predict without TensorFlow) run as
``python -m edgexfer`` subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Artifact, Manifest, writing_artifact
from edgexfer.export import FORMATS, QUANT_MODES
from kit import COLORS, TINY_FINETUNE, call_cli, make_color_folder, the_error

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = [(fmt, quant) for fmt, row in FORMATS.items() for quant in row.quant_modes]
DISALLOWED = [(fmt, quant) for fmt, row in FORMATS.items() for quant in QUANT_MODES if quant not in row.quant_modes]


def run_cli(*args: str) -> SimpleNamespace:
    """``edgexfer ARGS`` in a subprocess: exit code, stdout, stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "160"}
    done = subprocess.run(
        [sys.executable, "-m", "edgexfer", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )
    return SimpleNamespace(code=done.returncode, out=done.stdout, err=done.stderr)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgexfer import api

    root = tmp_path_factory.mktemp("deploy")
    data = make_color_folder(root / "data", per_class=16)
    artifact = api.finetune(
        data,
        root / "ft",
        **TINY_FINETUNE,
    )
    return SimpleNamespace(root=root, data=data, artifact=artifact)


@pytest.fixture(scope="module")
def exports(tiny):
    """Every combination the FORMATS table allows, exported in-process through the CLI."""
    capsys = _NoCapture()
    results = {}
    for fmt, quant in ALLOWED:
        out = tiny.root / f"{fmt}-{quant}"
        results[fmt, quant] = (
            call_cli(
                capsys,
                "export",
                tiny.artifact.path,
                "--format",
                fmt,
                "--quant",
                quant,
                "--out",
                out,
                "--calibration-images",
                "24",
            ),
            out,
        )
    return results


class _NoCapture:
    """Module fixtures cannot use capsys; the outputs are not needed there."""

    @staticmethod
    def readouterr():
        return "", ""


@pytest.mark.parametrize("fmt,quant", ALLOWED)
def test_export_every_allowed_combination(exports, fmt, quant):
    result, out = exports[fmt, quant]
    assert result.code == 0
    artifact = Artifact(out)
    assert artifact.manifest.config["format"] == fmt and artifact.manifest.config["quant"] == quant
    assert artifact.model_path.name == FORMATS[fmt].model_file
    assert artifact.metrics["size_bytes"] > 0
    if quant == "int8":
        assert artifact.manifest.config["calibration_images"] == 24
        assert artifact.manifest.config["calibration_source"].startswith("the artifact's dataset")


def test_export_as_a_subprocess_prints_a_table(tiny, tmp_path):
    done = run_cli("export", tiny.artifact.path, "--format", "tflite", "--out", tmp_path / "t")
    assert done.code == 0, done.err
    assert "export tflite none" in done.out and "model.tflite" in done.out
    assert Artifact(tmp_path / "t").manifest.config["quant"] == "none"  # default: the artifact is not quantized


def test_disallowed_combination_is_one_line_saying_what_is_allowed(tiny, tmp_path):
    done = run_cli("export", tiny.artifact.path, "--format", "onnx", "--quant", "fp16", "--out", tmp_path / "x")
    assert done.code == 2
    assert the_error(done.err) == "error: --quant fp16 is not available for onnx; onnx allows: none, dynamic, int8"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt,quant", DISALLOWED + [("bogus", "none"), ("tflite", "int4")])
def test_every_disallowed_combination_fails_before_loading(capsys, tiny, tmp_path, fmt, quant):
    result = call_cli(capsys, "export", tiny.artifact.path, "--format", fmt, "--quant", quant, "--out", tmp_path / "x")
    assert result.code == 2
    line = the_error(result.err)
    allowed = ", ".join(FORMATS[fmt].quant_modes) if fmt in FORMATS else ", ".join(FORMATS)
    assert line.startswith("error: ") and (allowed in line or ", ".join(QUANT_MODES) in line)
    assert not (tmp_path / "x").exists()


def test_export_of_an_artifact_without_model(capsys, tiny, tmp_path):
    empty = tmp_path / "empty"
    with writing_artifact(empty) as writer:
        writer.commit(
            Manifest(
                stage="finetune",
                label_names=list(COLORS),
                backbone="cnn_tiny",
                weights="none",
                preprocessing=tiny.artifact.manifest.preprocessing,
            )
        )
    result = call_cli(capsys, "export", empty, "--format", "tflite", "--out", tmp_path / "x")
    assert result.code == 2
    line = the_error(result.err)
    assert "has no model file" in line


def test_calibration_data_with_other_classes(capsys, tiny, tmp_path):
    other = make_color_folder(tmp_path / "other", classes={"cat": (90, 90, 90), "dog": (20, 20, 20)}, per_class=6)
    result = call_cli(
        capsys,
        "export",
        tiny.artifact.path,
        "--format",
        "tflite",
        "--quant",
        "int8",
        "--calibration-data",
        other,
        "--out",
        tmp_path / "x",
    )
    assert result.code == 2
    line = the_error(result.err)
    assert "calibration data (--calibration-data)" in line and "do not match the model's classes" in line
    assert "missing blue, green, red" in line and "extra cat, dog" in line
    assert not (tmp_path / "x").exists()


def test_explicit_calibration_data_and_loose_images(capsys, tiny, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for path in sorted(tiny.data.rglob("*.png"))[::3]:
        shutil.copy(path, loose / f"{path.parent.name}-{path.name}")
    result = call_cli(
        capsys,
        "export",
        tiny.artifact.path,
        "--format",
        "onnx",
        "--quant",
        "int8",
        "--calibration-data",
        loose,
        "--out",
        tmp_path / "onnx8",
    )
    assert result.code == 0, result.err
    config = Artifact(tmp_path / "onnx8").manifest.config
    assert config["calibration_images"] == 16 and config["calibration_source"].startswith("--calibration-data")


def _ptq_artifact(tiny, out: Path, calibration: np.ndarray | None, dataset_path: str) -> Path:
    """What the quantize stage writes for --mode ptq: the Keras model, manifest.quantization
    and (optionally) the calibration pixels it chose."""
    source = tiny.artifact
    quantization = {"mode": "ptq", "type": "int8"}
    if calibration is not None:
        quantization["calibration_file"] = "calibration.npy"
    manifest = Manifest(
        **{
            **source.manifest.to_dict(),
            "preprocessing": source.manifest.preprocessing,
            "stage": "quantize",
            "parent": source.parent_ref(),
            "created_at": "",
            "dataset": {**source.manifest.dataset, "path": dataset_path},
            "quantization": quantization,
        }
    )
    with writing_artifact(out) as writer:
        shutil.copy(source.model_path, writer.file(source.model_path.name))
        if calibration is not None:
            np.save(writer.file("calibration.npy"), calibration)
        writer.commit(manifest)
    return out


def test_ptq_artifact_exports_int8_with_its_stored_calibration_set(capsys, tiny, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    ptq = _ptq_artifact(tiny, tmp_path / "ptq", pixels, dataset_path=str(tmp_path / "gone"))
    result = call_cli(capsys, "export", ptq, "--format", "tflite", "--out", tmp_path / "t8")
    assert result.code == 0, result.err
    exported = Artifact(tmp_path / "t8")
    assert exported.manifest.config["quant"] == "int8"  # the quantize stage's choice
    assert exported.manifest.config["calibration_images"] == 20
    assert "stored in the artifact" in exported.manifest.config["calibration_source"]
    assert exported.manifest.quantization["source"]["mode"] == "ptq"


def test_int8_without_any_calibration_source_says_how_to_fix(capsys, tiny, tmp_path):
    ptq = _ptq_artifact(tiny, tmp_path / "ptq", None, dataset_path=str(tmp_path / "gone"))
    result = call_cli(capsys, "export", ptq, "--format", "tflite", "--quant", "int8", "--out", tmp_path / "x")
    assert result.code == 2
    line = the_error(result.err)
    assert "no longer exists" in line and "--calibration-data DIR" in line


def test_check_gate_passes_then_fails_with_exit_code_3(capsys, tiny, exports, tmp_path):
    models = [exports["tflite", "int8"][1], exports["onnx", "int8"][1]]
    out = tmp_path / "check"
    common = ["--data", tiny.data, "--out", out, "--runs", "3", "--warmup", "1", "--batch-size", "4"]
    passed = call_cli(capsys, "check", *models, *common, "--min-agreement", "0.8", "--max-acc-drop", "0.2")
    assert passed.code == 0, passed.err
    assert "PASSED" in passed.out and "litert" in passed.out and "ort-cpu" in passed.out
    assert json.loads((out / "check.json").read_text())["passed"] is True

    failed = call_cli(capsys, "check", *models, *common, "--max-acc-drop", "-1", "--no-latency")
    assert failed.code == 3
    line = the_error(failed.err)
    assert line.startswith("error: check failed for 2 of 2 model(s)") and "tflite-int8" in line
    assert "FAIL" in failed.out  # the table is printed before the error
    report = json.loads((out / "check.json").read_text())
    assert report["passed"] is False and report["failed"] == ["tflite-int8", "onnx-int8"]
    assert all(not row["passed"] and row["failures"] for row in report["candidates"])
    assert "FAILED (tflite-int8, onnx-int8)" in (out / "check.md").read_text()


def test_check_default_out_is_next_to_the_first_artifact(capsys, tiny, exports):
    model = exports["tflite", "none"][1]
    result = call_cli(capsys, "check", model, "--data", tiny.data, "--no-latency")
    assert result.code == 0, result.err
    assert (model.parent / "check" / "check.json").is_file() and (model.parent / "check" / "check.md").is_file()


PREDICT_NO_TF = textwrap.dedent("""
    import runpy, sys
    sys.argv = ["edgexfer", *sys.argv[1:]]
    code = 0
    try:
        runpy.run_module("edgexfer", run_name="__main__")
    except SystemExit as exc:
        code = exc.code or 0
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tf2onnx"))
    sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
    sys.exit(code)
""")


def test_predict_json_on_a_folder_without_tensorflow(tiny, exports):
    model = exports["tflite", "int8"][1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PREDICT_NO_TF,
            "predict",
            str(model),
            str(tiny.data),
            "--json",
            "--top-k",
            "2",
            "--batch-size",
            "10",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY=\n" in done.stderr  # neither TensorFlow nor Keras was imported
    result = json.loads(done.stdout)
    assert result["labels"] == sorted(COLORS) and result["backend"] == "tflite"
    assert result["count"] == 48 == len(result["predictions"])
    correct = 0
    for row in result["predictions"]:
        assert len(row["top_k"]) == 2 and row["top_k"][0] == {"label": row["label"], "score": row["score"]}
        assert row["top_k"][0]["score"] >= row["top_k"][1]["score"]
        correct += row["label"] == Path(row["path"]).parent.name
    assert correct / 48 >= 0.8


def test_predict_table_and_modes(capsys, tiny, exports, tmp_path):
    base = np.asarray(Image.open(tiny.data / "red" / "0.png"))
    Image.fromarray(base).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(base).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(base).convert("LA").save(tmp_path / "gray_alpha.png")
    Image.fromarray(base[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    result = call_cli(capsys, "predict", exports["onnx", "none"][1], tmp_path, "-k", "3")
    assert result.code == 0, result.err
    for name in ("cmyk.jpg", "palette.png", "gray_alpha.png", "gray16.png"):
        assert name in result.out
    assert "onnx, 4 images" in result.out


@pytest.mark.parametrize("kind", ["corrupt", "pdf", "missing", "not-a-model", "keras-artifact"])
def test_predict_errors_are_one_line(capsys, tiny, exports, tmp_path, kind):
    model, image = exports["tflite", "int8"][1], tiny.data / "red" / "0.png"
    if kind == "corrupt":
        image = tmp_path / "corrupt.png"
        image.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
        expected = "cannot read image"
    elif kind == "pdf":
        image = tmp_path / "page.pdf"
        Image.new("RGB", (8, 8)).save(image)  # PIL can write a PDF but not read it back as an image
        expected = "not an image PIL can read"
    elif kind == "missing":
        image = tmp_path / "missing.png"
        expected = "does not exist"
    elif kind == "not-a-model":
        model = tmp_path / "model.tflite"
        model.write_text("hello, not a flatbuffer\n" * 4)
        expected = "is not a TFLite model"
    else:
        model = tiny.artifact.path
        expected = "export it to tflite or onnx first"
    result = call_cli(capsys, "predict", model, image)
    assert result.code == 2
    line = the_error(result.err)
    assert line.startswith("error: ") and expected in line


def test_benchmark_json_fields(capsys, tiny, exports, tmp_path):
    alone = tmp_path / "alone.onnx"  # a model file on its own: format and quant from its embedded metadata
    shutil.copy(exports["onnx", "int8"][1] / "model.onnx", alone)
    models = [exports["tflite", "none"][1], alone, tiny.artifact.path]
    result = call_cli(
        capsys,
        "benchmark",
        *models,
        "--threads",
        "1,0",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--batch-size",
        "4",
        "--out",
        tmp_path / "bench",
        "--json",
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    rows = data["rows"]
    runtimes = {(row["model"], row["runtime"]) for row in rows}
    assert runtimes == {
        ("tflite-none", "litert-xnnpack"),
        ("alone.onnx", "onnxruntime-cpu"),
        ("ft", "keras-tensorflow"),
    }
    assert len([r for r in rows if r["runtime"] != "keras-tensorflow"]) == 2 * 2 * 2  # models × threads × batches
    for row in rows:
        assert row["batch"] in (1, 4) and row["runs"] == 3
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_second"] > 0 and row["size_bytes"] > 0
        assert (row["format"], row["quant"]) in {("tflite", "none"), ("onnx", "int8"), ("keras", "none")}
    assert {r["threads"] for r in rows if r["runtime"] == "litert-xnnpack"} == {1, 0}
    assert {s["model"] for s in data["sizes"]} == {"tflite-none", "alone.onnx", "ft"}
    assert (tmp_path / "bench" / "benchmark.json").is_file()
    # one model in three files: one MAC count, and the GMAC/s of every row beside the matmul peak
    assert len({s["macs"] for s in data["sizes"]}) == 1 and data["sizes"][0]["macs"] > 0
    assert all(row["gmacs"] > 0 for row in rows)
    assert all(row["peak_gmacs"] > 0 for row in rows if row["device"] == "cpu")
    assert "## Compute" in (tmp_path / "bench" / "benchmark.md").read_text()
    assert (
        "| tflite-none | tflite/none | litert-xnnpack (XNNPACK) | cpu |"
        in (tmp_path / "bench" / "benchmark.md").read_text()
    )
    assert {(r["runtime"], r["provider"], r["device"]) for r in rows} == {  # every row names provider and device
        ("litert-xnnpack", "XNNPACK", "cpu"),
        ("onnxruntime-cpu", "CPUExecutionProvider", "cpu"),
        ("keras-tensorflow", "TensorFlow", "cpu"),
    }
