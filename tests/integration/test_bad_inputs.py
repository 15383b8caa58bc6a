"""The bad-input corpus: every bad input named by issue 11 (and by the issues before it), run
through the CLI. Each case checks the exit code, that stderr is exactly one ``error:`` line
(no traceback), that no artifact is left half-written (no ``.tmp-`` folder, no new ``--out``),
and that nothing that existed before was removed or changed.

The security cases: an artifact whose model has a ``Lambda`` layer (its code would create a
marker file) and an export whose manifest points its parent at that artifact are refused by
every command that loads a Keras model; the marker is never created.

Everything runs in this process through ``edgexfer.cli.main`` (TensorFlow is imported once);
the cases whose process matters (SIGTERM, native stderr lines, PIL's limits) run as
subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
from kit import call_cli

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["a", "b", "c"]
PRE = Preprocessing(input_size=8, mean=(120.0, 120.0, 120.0), std=(64.0, 64.0, 64.0))
LAMBDA_REFUSED = "'Lambda', a class edgexfer does not create"


# ------------------------------------------------------------------------------- helpers


def make_folder(root: Path, classes=LABELS, per_class=4, size=8, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 60 * (index % 3), 30, (size, size, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def write_keras_artifact(out: Path, model, parent: dict | None = None) -> Path:
    manifest = Manifest(
        stage="finetune",
        label_names=list(LABELS),
        preprocessing=PRE,
        backbone="cnn_tiny",
        weights="none",
        model_file="model.h5",
        seed=0,
        parent=parent,
    )
    with writing_artifact(out) as writer:
        model.save(writer.file("model.h5"), include_optimizer=False, save_format="h5")
        writer.commit(manifest, {"accuracy": None})
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (links not followed) with a digest of its content."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                found[os.path.relpath(path, root)] = "other"
                continue
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def run_cli(*args, env_extra=None, prelude: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env_extra or {})}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    code = f"import sys; {prelude}\nfrom edgexfer.cli import main; sys.argv = ['edgexfer'] + sys.argv[1:]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def assert_one_line_error(err: str, expected: str) -> str:
    """Exactly one ``error:`` line, the last thing on stderr (a command's progress log may come
    before it), and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert expected in errors[0], (expected, errors[0])
    return errors[0]


def assert_nothing_lost_nothing_half_written(
    before: dict[str, str], root: Path, out: Path | None, out_existed: bool = False
) -> None:
    after = snapshot(root)
    lost = {path for path, digest in before.items() if after.get(path) != digest}
    assert not lost, f"changed or removed: {sorted(lost)[:5]}"
    leftovers = [path for path in after if ".tmp-" in path or ".old-" in path]
    assert not leftovers, leftovers
    if out is not None and not out_existed:
        assert not out.exists(), f"{out} was written"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A good tiny Keras artifact, its TFLite export, a data folder, and the malicious artifacts."""
    from edgexfer.export.stage import export_stage
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("bad-inputs")
    marker = root / "MARKER-code-ran"

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    good = write_keras_artifact(root / "good", keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h)))

    other_inputs = keras.Input((8, 8, 3))
    g = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 1)(other_inputs))
    other = write_keras_artifact(
        root / "other-arch", keras.Model(other_inputs, keras.layers.Dense(3, activation="softmax")(g))
    )

    evil_inputs = keras.Input((8, 8, 3))
    path = str(marker)
    touched = keras.layers.Lambda(lambda x: (__import__("pathlib").Path(path).touch(), x)[1], name="innocent_looking")(
        evil_inputs
    )
    e = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(touched))
    evil = write_keras_artifact(root / "evil", keras.Model(evil_inputs, keras.layers.Dense(3, activation="softmax")(e)))
    marker.unlink(missing_ok=True)  # building the model above ran the lambda once, here

    tflite = export_stage(good, root / "good-tflite", "tflite", "none").path
    # An export whose manifest names the evil artifact as its parent: `check` follows it.
    evil_child = root / "evil-child"
    shutil.copytree(tflite, evil_child)
    manifest = json.loads((evil_child / "manifest.json").read_text())
    manifest["parent"] = {**manifest["parent"], "path": str(evil)}
    (evil_child / "manifest.json").write_text(json.dumps(manifest))

    data = make_folder(root / "data")
    evil_saved_model = _saved_model_writing_a_file(tflite, root / "evil-saved-model", marker)
    return SimpleNamespace(
        root=root,
        marker=marker,
        good=good,
        other=other,
        evil=evil,
        tflite=tflite,
        evil_child=evil_child,
        evil_saved_model=evil_saved_model,
        data=data,
        image=data / "a" / "0.png",
    )


def _saved_model_writing_a_file(template: Path, out: Path, marker: Path) -> Path:
    """An export artifact whose SavedModel writes ``marker`` when its serving function runs."""
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "code ran")
            return {"probabilities": tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]))}

    module = Module()
    shutil.copytree(template, out)
    (out / "model.tflite").unlink()
    tf.saved_model.save(module, str(out / "saved_model"), signatures={"serving_default": module.serve})
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model_file"] = "saved_model"
    manifest["config"] = {**manifest["config"], "format": "saved_model"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_case(
    capsys, root: Path, args: list, expected: str, out: Path | None = None, code: int = 2, watch: Path | None = None
) -> SimpleNamespace:
    """Run one bad input; check exit code, one line, nothing lost, nothing half-written."""
    watch = watch or root
    before = snapshot(watch)
    out_existed = out is not None and out.exists()
    result = call_cli(capsys, *args)
    assert result.code == code, (result.code, result.err[-2000:])
    assert_one_line_error(result.err, expected)
    assert_nothing_lost_nothing_half_written(before, watch, out, out_existed)
    return result


# ------------------------------------------------------------- 1. no code runs from an artifact


def _loading_commands(w, out):
    """Every command that loads a Keras model, pointed at the malicious artifact."""
    d = w.data
    return {
        "evaluate": ["evaluate", w.evil, d],
        "evaluate-domains": ["evaluate", w.evil, "--data", f"one={d}"],
        "export-tflite": ["export", w.evil, "--format", "tflite", "--out", out],
        "export-onnx": ["export", w.evil, "--format", "onnx", "--out", out],
        "export-saved_model": ["export", w.evil, "--format", "saved_model", "--out", out],
        "distill": ["distill", w.evil, d, "--student", "cnn_tiny", "--student-weights", "none", "--out", out],
        "prune": ["prune", w.evil, d, "--sparsity", "0.5", "--out", out],
        "quantize-qat": ["quantize", w.evil, d, "--out", out],
        "quantize-ptq": ["quantize", w.evil, d, "--mode", "ptq", "--out", out],
        "quantize-check": ["quantize", w.evil, "--check"],
        "adapt": ["adapt", w.evil, "--source", d, "--target", d, "--method", "adabn", "--out", out],
        "fuse-source": ["fuse", str(w.evil), w.good, "--alpha", "0.5", "--out", out],
        "fuse-finetuned": ["fuse", str(w.good), w.evil, "--alpha", "0.5", "--out", out],
        "check-parent": ["check", w.evil_child, "--data", d, "--no-latency", "--out", out],
        "benchmark": ["benchmark", w.evil, "--runs", "1", "--warmup", "0", "--out", out],
        "benchmark-saved_model": ["benchmark", w.evil_saved_model, "--runs", "1", "--warmup", "0", "--out", out],
        "check-saved_model": ["check", w.evil_saved_model, "--data", d, "--out", out],
    }


LOADING = [
    "evaluate",
    "evaluate-domains",
    "export-tflite",
    "export-onnx",
    "export-saved_model",
    "distill",
    "prune",
    "quantize-qat",
    "quantize-ptq",
    "quantize-check",
    "adapt",
    "fuse-source",
    "fuse-finetuned",
    "check-parent",
    "benchmark",
    "benchmark-saved_model",
    "check-saved_model",
]


@pytest.mark.parametrize("command", LOADING)
def test_an_artifact_with_code_is_refused_by_every_command_that_loads_it(capsys, world, case_dir, command):
    out = case_dir / "out"
    args = _loading_commands(world, out)[command]
    expected = "holds a WriteFile op" if command in ("benchmark-saved_model", "check-saved_model") else LAMBDA_REFUSED
    run_case(capsys, world.root, args, expected, out=out)
    assert not world.marker.exists(), f"{command}: the Lambda's code ran"


def test_the_refusal_names_the_layer(capsys, world, case_dir):
    result = call_cli(capsys, "evaluate", world.evil, world.data)
    assert "layer 'innocent_looking'" in result.err and "model.h5" in result.err
    assert not world.marker.exists()


# ------------------------------------------------------------------------- 2. --out safety


def _web_app(root: Path) -> Path:
    app = root / "webapp"
    (app / "icons").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "my app", "icons": []}')
    (app / "index.html").write_text("<html></html>")
    (app / "icons" / "a.png").write_bytes(b"png")
    return app


def _artifact_holding_the_input(world, root: Path) -> tuple[Path, Path]:
    outer = root / "outer"
    shutil.copytree(world.good, outer)
    shutil.copytree(world.good, outer / "inner")
    return outer, outer / "inner"


OUT_CASES = {
    "folder-with-a-foreign-manifest": (lambda w, r: (w.good, _web_app(r)), "is not an edgexfer artifact"),
    "folder-holding-the-input": (lambda w, r: _artifact_holding_the_input(w, r)[::-1], "holds the folder 'inner'"),
    "plain-folder-holding-the-input": (
        lambda w, r: (shutil.copytree(w.good, r / "runs" / "ft"), r / "runs"),
        "no manifest.json",
    ),
    "inside-the-input": (
        lambda w, r: (shutil.copytree(w.good, r / "ft"), r / "ft" / "sub"),
        "is inside the edgexfer artifact",
    ),
    "an-existing-file": (lambda w, r: (w.good, _touch(r / "notes.txt")), "is a file, not a folder"),
    "below-a-file": (lambda w, r: (w.good, _touch(r / "notes.txt") / "x"), "is a file, so no folder"),
    "dot": (lambda w, r: (w.good, Path(".")), "is the current folder"),
    "dot-dot": (lambda w, r: (w.good, Path("..")), "is the current folder or one above it"),
}


def _touch(path: Path) -> Path:
    path.write_text("mine\n")
    return path


@pytest.mark.parametrize("case", list(OUT_CASES))
@pytest.mark.parametrize("command", ["export", "finetune"])
def test_out_never_replaces_what_is_not_an_artifact(capsys, world, case_dir, case, command):
    make, expected = OUT_CASES[case]
    source, out = make(world, case_dir)
    if command == "export":
        args = ["export", source, "--format", "tflite", "--out", out]
    else:
        args = [
            "finetune",
            world.data,
            "--backbone",
            "cnn_tiny",
            "--weights",
            "none",
            "--img-size",
            "8",
            "--epochs",
            "1",
            "--fine-tune-epochs",
            "0",
            "--out",
            out,
        ]
    watch = case_dir.parent if case == "dot-dot" else case_dir
    run_case(capsys, case_dir, args, expected, out=None, watch=watch)


def test_a_verified_artifact_is_still_replaced(capsys, world, case_dir):
    out = shutil.copytree(world.tflite, case_dir / "again")
    (out / "model.tflite").write_bytes(b"old")
    result = call_cli(capsys, "export", world.good, "--format", "tflite", "--out", out)
    assert result.code == 0, result.err
    assert (out / "model.tflite").read_bytes() != b"old"
    assert not [p for p in case_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------------ 3. broken files


def _manifest_case(world, root: Path, change) -> Path:
    art = shutil.copytree(world.good, root / "art")
    data = json.loads((art / "manifest.json").read_text())
    data = change(data)
    (art / "manifest.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return art


def _set(path: tuple, value):
    def change(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data

    return change


MANIFEST_CASES = {
    "a-list": (lambda d: [d], "a JSON list, not an object"),
    "not-json": (lambda d: "{not json", "not valid JSON"),
    "preprocessing-a-string": (_set(("preprocessing",), "bilinear"), "preprocessing must be an object"),
    "input-size-a-string": (_set(("preprocessing", "input_size"), "big"), "input_size 'big' is not a whole number"),
    "input-size-huge": (_set(("preprocessing", "input_size"), 15000), "input_size 15000 is outside 1..1024"),
    "input-size-negative": (_set(("preprocessing", "input_size"), -3), "outside 1..1024"),
    "mean-not-numbers": (_set(("preprocessing", "mean"), ["x", 1, 2]), "preprocessing.mean"),
    "labels-a-string": (_set(("label_names",), "abc"), "label_names must be a list of strings"),
    "schema-version": (_set(("schema_version",), 99), "schema_version 99 is not supported"),
    "model-file-outside": (_set(("model_file",), "../../etc/passwd"), "must be a file name inside the artifact"),
    "no-stage": (lambda d: {k: v for k, v in d.items() if k != "stage"}, "no field 'stage'"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
@pytest.mark.parametrize("command", ["info", "evaluate", "export", "predict"])
def test_a_malformed_manifest_is_one_line(capsys, world, case_dir, case, command):
    change, expected = MANIFEST_CASES[case]
    art = _manifest_case(world, case_dir, change)
    out = case_dir / "out"
    args = {
        "info": ["info", art],
        "evaluate": ["evaluate", art, world.data],
        "export": ["export", art, "--format", "tflite", "--out", out],
        "predict": ["predict", art, world.image],
    }[command]
    run_case(capsys, case_dir, args, expected, out=out)


def _onnx_with_metadata(path: Path, preprocessing) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("Softmax", ["m"], ["y"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", None, None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if preprocessing is not None:
        for key, value in (("edgexfer.labels", json.dumps(LABELS)), ("edgexfer.preprocessing", preprocessing)):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def _tflite_with_metadata(world, path: Path, input_size) -> Path:
    from edgexfer.runtime.metadata import EmbeddedInfo, embed_tflite_metadata

    info = EmbeddedInfo(list(LABELS), Preprocessing(input_size=input_size))
    path.write_bytes(embed_tflite_metadata((world.tflite / "model.tflite").read_bytes(), info))
    return path


METADATA_CASES = {
    "onnx-input-size-15000": (
        lambda w, r: _onnx_with_metadata(r / "m.onnx", '{"input_size": 15000}'),
        "input_size 15000 is outside 1..1024",
    ),
    "onnx-input-size-text": (
        lambda w, r: _onnx_with_metadata(r / "m.onnx", '{"input_size": "224px"}'),
        "input_size '224px' is not a whole number",
    ),
    "onnx-preprocessing-a-list": (
        lambda w, r: _onnx_with_metadata(r / "m.onnx", "[1, 2]"),
        "preprocessing must be an object",
    ),
    "onnx-preprocessing-not-json": (
        lambda w, r: _onnx_with_metadata(r / "m.onnx", "{oops"),
        "malformed edgexfer metadata",
    ),
    "onnx-no-metadata": (lambda w, r: _onnx_with_metadata(r / "m.onnx", None), "export the model's artifact with"),
    "tflite-input-size-15000": (
        lambda w, r: _tflite_with_metadata(w, r / "m.tflite", 15000),
        "input_size 15000 is outside 1..1024",
    ),
    "tflite-input-size-text": (lambda w, r: _tflite_with_metadata(w, r / "m.tflite", "eight"), "is not a whole number"),
    "not-a-model": (lambda w, r: _touch(r / "m.tflite"), "is not a TFLite model"),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_model_metadata_is_bounded_and_blamed_on_the_model(capsys, world, case_dir, case):
    make, expected = METADATA_CASES[case]
    model = make(world, case_dir)
    line = run_case(capsys, case_dir, ["predict", model, world.image], expected).err
    assert str(model) in line and "label_names=" not in line


# ------------------------------------------------------------------------ 4. data folders


def _non_utf8(root: Path) -> Path:
    data = make_folder(root / "data", classes=["a", "b"])
    os.rename(data / "b", os.path.join(os.fsencode(data), b"caf\xe9"))
    return data


def _with_empty_class(root: Path) -> Path:
    data = make_folder(root / "data", classes=["a", "b"])
    (data / "c").mkdir()
    (data / "c" / "notes.txt").write_text("no images here")
    return data


def _split_mismatch(root: Path) -> Path:
    make_folder(root / "data" / "train", classes=["a", "b"])
    make_folder(root / "data" / "val", classes=["a", "c"])
    return root / "data"


def _corrupt(root: Path) -> Path:
    data = make_folder(root / "data", classes=["a", "b"])
    (data / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return data


DATA_CASES = {
    "missing": (lambda r: r / "nope", "does not exist"),
    "a-file": (lambda r: _touch(r / "data.txt"), "is a file, not a folder"),
    "empty": (lambda r: (r / "data").mkdir() or r / "data", "it is empty"),
    "one-class": (lambda r: make_folder(r / "data", classes=["a"]), "has only one class"),
    "class-without-images": (lambda r: _with_empty_class(r), "has no images"),
    "loose-images": (lambda r: make_folder(r / "data", classes=["a"]) / "a", "has images but no class folders"),
    "splits-differ": (_split_mismatch, "has other classes than train"),
    "non-utf8-class-name": (_non_utf8, "not valid UTF-8"),
    "corrupt-image-strict": (_corrupt, "cannot be read"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_a_bad_data_folder_is_one_line(capsys, world, case_dir, case):
    make, expected = DATA_CASES[case]
    data = make(case_dir)
    out = case_dir / "out"
    run_case(
        capsys,
        case_dir,
        [
            "finetune",
            data,
            "--backbone",
            "cnn_tiny",
            "--weights",
            "none",
            "--img-size",
            "8",
            "--epochs",
            "1",
            "--fine-tune-epochs",
            "0",
            "--strict",
            "--out",
            out,
        ],
        expected,
        out=out,
    )


def test_evaluate_on_other_classes_and_a_non_utf8_class(capsys, world, case_dir):
    run_case(
        capsys,
        case_dir,
        ["evaluate", world.good, make_folder(case_dir / "xy", classes=["x", "y"])],
        "do not match the model's classes",
    )
    run_case(capsys, case_dir, ["evaluate", world.good, _non_utf8(case_dir)], "not valid UTF-8")


# ---------------------------------------------------------------------- 5. YAML and options

PIPELINE = """name: tiny
data:
  src: {{path: {data}}}
stages:
  finetune: {{data: src, backbone: cnn_tiny, weights: none, img_size: 8, epochs: 1, fine_tune_epochs: 0}}
"""

BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)

YAML_CASES = {
    "set-invalid-yaml": (None, ["--set", "finetune.epochs=[1"], "--set 'finetune.epochs=[1': not valid YAML"),
    "set-python-tag": (
        None,
        ["--set", "finetune.epochs=!!python/object/apply:os.system ['touch MARKER']"],
        "tags such as !!python",
    ),
    "set-no-equals": (None, ["--set", "finetune.epochs"], "use KEY=VALUE"),
    "set-unknown-stage-key": (None, ["--set", "finetune.epochz=3"], "epochz"),
    "recursive-anchor": ("name: &n [*n]\n", [], "an alias of itself"),
    "billion-laughs": (BILLION_LAUGHS, [], "expands to more than 100,000 values"),
    "python-tag-in-file": ("name: !!python/object/apply:os.system ['touch MARKER']\n", [], "tags such as !!python"),
    "not-utf8": (b"name: caf\xe9\n", [], "is not UTF-8 text"),
    "typo-in-top-level": ("nmae: x\nstages: {}\n", [], "unknown key 'nmae'"),
    "missing-parent-stage": (
        "name: t\ndata: {}\nstages:\n  export: {parent: finetune, format: tflite}\n",
        [],
        "finetune",
    ),
    "not-a-mapping": ("- 1\n- 2\n", [], "a pipeline file is a mapping"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_bad_pipeline_yaml_is_one_line_and_bounded(capsys, world, case_dir, case):
    text, extra, expected = YAML_CASES[case]
    path = case_dir / "pipeline.yaml"
    text = PIPELINE.format(data=world.data) if text is None else text
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    started = time.perf_counter()
    run_case(capsys, case_dir, ["run", path, "--run-dir", case_dir / "runs", *extra], expected, out=case_dir / "runs")
    assert time.perf_counter() - started < 30
    assert not (case_dir / "MARKER").exists()


def test_config_file_with_an_alias_bomb(capsys, world, case_dir):
    config = case_dir / "config.yaml"
    config.write_text(BILLION_LAUGHS)
    run_case(
        capsys,
        case_dir,
        ["finetune", world.data, "--config", config, "--out", case_dir / "out"],
        "expands to more than",
        out=case_dir / "out",
    )


OPTION_CASES = {
    "format-typo": (lambda w, r: ["export", w.good, "--format", "tflit", "--out", r / "out"], "did you mean 'tflite'"),
    "quant-typo": (
        lambda w, r: ["export", w.good, "--format", "tflite", "--quant", "int9", "--out", r / "out"],
        "did you mean 'int8'",
    ),
    "disallowed-quant": (
        lambda w, r: ["export", w.good, "--format", "saved_model", "--quant", "int8", "--out", r / "out"],
        "saved_model allows: none",
    ),
    "min-agreement-1.5": (
        lambda w, r: ["check", w.tflite, "--data", w.data, "--min-agreement", "1.5", "--out", r / "out"],
        "--min-agreement 1.5 is outside 0..1",
    ),
    "min-agreement-negative": (
        lambda w, r: ["check", w.tflite, "--data", w.data, "--min-agreement", "-0.1", "--out", r / "out"],
        "outside 0..1",
    ),
    "max-acc-drop-2": (
        lambda w, r: ["check", w.tflite, "--data", w.data, "--max-acc-drop", "2", "--out", r / "out"],
        "outside -1..1",
    ),
    "predict-threads-negative": (lambda w, r: ["predict", w.tflite, w.image, "--threads", "-1"], "0 for all cores"),
    "check-threads-negative": (
        lambda w, r: ["check", w.tflite, "--data", w.data, "--threads", "-1", "--out", r / "out"],
        "--threads",
    ),
    "export-without-model": (
        lambda w, r: ["export", _without_model(w, r), "--format", "tflite", "--out", r / "out"],
        "has no model file",
    ),
    "predict-keras-artifact": (lambda w, r: ["predict", w.good, w.image], "export it to tflite or onnx first"),
    "predict-corrupt-image": (lambda w, r: ["predict", w.tflite, _touch(r / "x.png")], "cannot read image"),
    "predict-missing-image": (lambda w, r: ["predict", w.tflite, r / "none.png"], "does not exist"),
    "fuse-other-architecture": (
        lambda w, r: ["fuse", str(w.other), w.good, "--alpha", "0.5", "--out", r / "out"],
        "architecture",
    ),
    "prune-sparsity-1": (lambda w, r: ["prune", w.good, w.data, "--sparsity", "1.0", "--out", r / "out"], "sparsity"),
    "adapt-other-classes": (
        lambda w, r: [
            "adapt",
            w.good,
            "--source",
            make_folder(r / "xy", classes=["x", "y"]),
            "--target",
            w.data,
            "--method",
            "adabn",
            "--out",
            r / "out",
        ],
        "classes",
    ),
    "json-to-a-folder": (lambda w, r: ["evaluate", w.evil, w.data, "--json", r], "is a folder; give a file name"),
    "json-unwritable": (
        lambda w, r: ["evaluate", w.evil, w.data, "--json", "/proc/edgexfer.json"],
        "cannot be written",
    ),
    "json-in-missing-folder": (
        lambda w, r: ["evaluate", w.evil, w.data, "--json", r / "no" / "r.json"],
        "does not exist",
    ),
    "confusion-png-unwritable": (
        lambda w, r: ["evaluate", w.evil, w.data, "--confusion-png", "/proc/c.png"],
        "--confusion-png '/proc/c.png' cannot be written",
    ),
    "domains-json-unwritable": (
        lambda w, r: ["evaluate", w.evil, "--data", f"a={w.data}", "--json", "/proc/e.json"],
        "cannot be written",
    ),
}


def _without_model(world, root: Path) -> Path:
    art = shutil.copytree(world.good, root / "art")
    (art / "model.h5").unlink()
    return art


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_options_are_one_line(capsys, world, case_dir, case):
    make, expected = OPTION_CASES[case]
    out = case_dir / "out"
    run_case(capsys, case_dir, make(world, case_dir), expected, out=out)
    assert not world.marker.exists()  # the --json checks come before the (malicious) model is loaded


def test_threads_zero_means_all_cores_in_predict_as_in_check(capsys, world):
    result = call_cli(capsys, "predict", world.tflite, world.image, "--threads", "0", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["count"] == 1


# ----------------------------------------------------------- 6. processes: stderr and signals


def test_predict_prints_no_native_delegate_line(world):
    done = run_cli("predict", world.tflite, world.image)
    assert done.returncode == 0, done.stderr
    assert "XNNPACK" not in done.stderr and "XNNPACK" not in done.stdout


def test_large_images_warn_nothing_and_huge_ones_are_one_line(world, tmp_path):
    """PIL's limits lowered to 1000 px in the subprocess: 1200 px would warn, 2500 px is refused."""
    Image.new("RGB", (30, 40)).save(tmp_path / "large.png")
    Image.new("RGB", (50, 50)).save(tmp_path / "huge.png")
    prelude = "from PIL import Image; Image.MAX_IMAGE_PIXELS = 1000"
    done = run_cli("predict", world.tflite, tmp_path / "large.png", prelude=prelude)
    assert done.returncode == 0 and "DecompressionBomb" not in done.stderr, done.stderr
    done = run_cli("predict", world.tflite, tmp_path / "huge.png", prelude=prelude)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "exceeds limit")


def test_sigterm_cleans_up_like_ctrl_c(world, tmp_path):
    data = make_folder(tmp_path / "data", per_class=30, size=16)
    out = tmp_path / "runs" / "ft"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEXFER_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "finetune",
            str(data),
            "--backbone",
            "cnn_tiny",
            "--weights",
            "none",
            "--img-size",
            "16",
            "--epochs",
            "500",
            "--fine-tune-epochs",
            "0",
            "--early-stopping",
            "0",
            "--image-cache",
            "disk",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((tmp_path / "runs").glob(".ft.tmp-*")):
            time.sleep(0.2)
        assert list((tmp_path / "runs").glob(".ft.tmp-*")), "the run never started writing"
        time.sleep(3)  # into training
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert not list((tmp_path / "runs").iterdir()), "a temporary artifact folder was left behind"
    assert not out.exists()
    runs = tmp_path / "cache" / "finetune-runs"
    assert not runs.exists() or not list(runs.iterdir()), "cache files were left behind"
