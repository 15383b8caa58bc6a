"""Safety pieces without TensorFlow: the stored-model check, --out rules, temporaries and their
sweep, YAML alias bounds, symbolic links in image folders."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgexfer import tempfiles
from edgexfer.artifact import (
    Artifact,
    ArtifactWriter,
    Manifest,
    Preprocessing,
    check_out_dir,
    refuse_input_as_out,
    writing_artifact,
)
from edgexfer.data.folder import scan_image_folder
from edgexfer.errors import ArtifactError, ConfigError, ExportError
from edgexfer.model_safety import check_keras_model_file, check_model_config
from edgexfer.safe_yaml import load as load_yaml


def _layer(class_name, name, **config):
    return {"class_name": class_name, "config": {"name": name, **config}}


def _model(*layers, class_name="Functional"):
    return {"class_name": class_name, "config": {"name": "m", "layers": list(layers)}}


SAFE = [
    _layer("InputLayer", "in"),
    _layer("Conv2D", "conv"),
    _layer("GlobalAveragePooling2D", "pool"),
    _layer("Dense", "head"),
]


@pytest.mark.parametrize(
    "bad,named",
    [
        (
            _layer("Lambda", "sneaky", function=["4wEAAA==", None, None], function_type="lambda"),
            "'sneaky' is a 'Lambda'",
        ),
        (_layer("MyCustomLayer", "custom"), "'custom' is a 'MyCustomLayer'"),
        (_layer("TFOpLambda", "op", function="io.write_file"), "calls the TensorFlow function 'io.write_file'"),
        (_layer("QuantizeWrapperV2", "wrapped", layer=_layer("Lambda", "inner")), "'inner' is a 'Lambda'"),
        (_model(_layer("Lambda", "nested")), "'nested' is a 'Lambda'"),
        (_model(_layer("Lambda", "in-seq"), class_name="Sequential"), "'in-seq' is a 'Lambda'"),
    ],
)
def test_layers_edgexfer_does_not_create_are_refused_by_name(bad, named):
    check_model_config(_model(*SAFE), "model.h5")  # the plain model passes
    with pytest.raises(ArtifactError, match=named.replace("(", r"\(")):
        check_model_config(_model(*SAFE, bad), "model.h5")


def test_the_check_reads_h5_and_keras_files_without_keras(tmp_path):
    import zipfile

    import h5py

    bad = _model(*SAFE, _layer("Lambda", "sneaky"))
    with h5py.File(tmp_path / "model.h5", "w") as handle:
        handle.attrs["model_config"] = json.dumps(bad)
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as archive:
        archive.writestr("config.json", json.dumps(bad))
    for name in ("model.h5", "model.keras"):
        with pytest.raises(ArtifactError, match="'sneaky' is a 'Lambda'"):
            check_keras_model_file(tmp_path / name)
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ArtifactError, match="cannot read Keras model"):
        check_keras_model_file(tmp_path / "weights.h5")
    with pytest.raises(ArtifactError, match="only from a .h5 or .keras file"):
        check_keras_model_file(tmp_path)


def test_the_check_imports_no_tensorflow(tmp_path):
    code = (
        "import sys, json, h5py; from edgexfer.model_safety import check_keras_model_file\n"
        f"f = h5py.File({str(tmp_path / 'm.h5')!r}, 'w'); f.attrs['model_config'] = json.dumps("
        f"{_model(*SAFE)!r}); f.close(); check_keras_model_file({str(tmp_path / 'm.h5')!r})\n"
        "assert 'tensorflow' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ --out


def _artifact(path: Path) -> Path:
    manifest = Manifest(
        stage="finetune",
        label_names=["a", "b"],
        preprocessing=Preprocessing(input_size=8),
        backbone="x",
        weights="none",
        model_file="model.h5",
    )
    with writing_artifact(path) as writer:
        writer.file("model.h5").write_bytes(b"model")
        writer.commit(manifest)
    return path


def test_out_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    art = _artifact(tmp_path / "art")
    check_out_dir(art)  # an artifact may be replaced
    check_out_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    (art / "extra.h").write_text("// a file another stage wrote")
    check_out_dir(art)  # extra files beside the model are fine
    for out, message in [
        (Path("."), "current folder"),
        (art / "sub", "inside the edgexfer artifact"),
        (art / "manifest.json", "is a file"),
    ]:
        with pytest.raises(ArtifactError, match=message):
            check_out_dir(out)
    (art / "mine").mkdir()
    with pytest.raises(ArtifactError, match="holds the folder 'mine'"):
        check_out_dir(art)
    for missing in ("labels.txt", "metrics.json"):
        other = _artifact(tmp_path / f"no-{missing}")
        (other / missing).unlink()
        with pytest.raises(ArtifactError, match=f"no {missing}"):
            check_out_dir(other)


# ------------------------------------------------------------------------- temporaries


def test_a_stage_never_writes_over_its_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parent = Artifact(_artifact(tmp_path / "parent"))
    refuse_input_as_out(tmp_path / "child", parent)  # a new folder is fine
    with pytest.raises(ConfigError, match=r"--out 'parent' is the input artifact; .*choose another directory"):
        refuse_input_as_out("parent", parent)  # relative and absolute name the same folder
    with pytest.raises(ConfigError, match="is an input artifact"):
        refuse_input_as_out(tmp_path / "source", parent, tmp_path / "source")  # a plain path counts too
    with pytest.raises(ExportError, match="is the input artifact"):
        refuse_input_as_out(parent.path, parent, error=ExportError)


def test_a_child_manifest_inherits_what_the_stage_does_not_change(tmp_path):
    parent = Artifact(_artifact(tmp_path / "parent"))
    child = parent.child_manifest("export", {"format": "tflite"}, "model.tflite", quantization={"mode": "int8"})
    assert (child.stage, child.model_file, child.config) == ("export", "model.tflite", {"format": "tflite"})
    assert child.label_names == ["a", "b"] and child.label_names is not parent.manifest.label_names
    assert (child.preprocessing, child.backbone, child.weights) == (parent.manifest.preprocessing, "x", "none")
    assert child.parent == parent.parent_ref() and child.quantization == {"mode": "int8"}
    assert parent.child_manifest("prune", {}, "model.h5", seed=7, backbone="y").seed == 7


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_temporaries_name_their_process_and_the_dead_ones_are_swept(tmp_path):
    dead, alive, host = _dead_pid(), os.getpid(), tempfiles.HOST
    entries = {
        f".ft.tmp-{dead}@{host}-abc123": False,  # dead process on this machine: swept
        f".ft.old-{dead}@{host}": False,
        f".check.json.tmp-{dead}@{host}-w": False,
        f".ft.tmp-{alive}@{host}-abc123": True,  # still running: kept
        f".ft.tmp-{dead}@0badc0de-abc123": True,  # another machine (shared disk): kept
        f".ft.tmp-{dead}-abc123": True,  # an older edgexfer's name, owner unknown: kept
        "ft": True,
        "notes.tmp-1": True,
    }
    for name, _ in entries.items():
        (tmp_path / name).mkdir() if not name.endswith("-w") else (tmp_path / name).write_text("x")
    removed = tempfiles.sweep_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, kept in entries.items() if not kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, kept in entries.items() if kept)

    runs = tmp_path / "finetune-runs"
    runs.mkdir()
    for name in (f"{dead}@{host}-x1", f"{alive}@{host}-x2", "checkpoints"):
        (runs / name).mkdir()
    tempfiles.sweep_stale(runs, run_dirs=True)
    assert sorted(p.name for p in runs.iterdir()) == sorted([f"{alive}@{host}-x2", "checkpoints"])


def test_writing_an_artifact_sweeps_what_a_killed_run_left(tmp_path):
    stale = tmp_path / f".ft.tmp-{_dead_pid()}@{tempfiles.HOST}-zz"
    stale.mkdir()
    writer = ArtifactWriter(tmp_path / "ft")
    assert not stale.exists()
    assert writer.tmp.name.startswith(f".ft.tmp-{os.getpid()}@{tempfiles.HOST}-")
    writer.abort()


# ------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: &a [*a]", "alias of itself"),
        ("a: &a {b: *a}", "alias of itself"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
            "expands to more than",
        ),
        ("!!python/object/apply:os.system ['true']", "tags such as !!python"),
        ("a: [1", "not valid YAML"),
    ],
)
def test_yaml_attacks_are_one_line(text, message):
    with pytest.raises(ConfigError, match=message):
        load_yaml(text, "file.yaml")


def test_yaml_shared_aliases_still_work():
    assert load_yaml("x: &v {k: 1}\ny: *v\nz: [*v, *v]", "f") == {
        "x": {"k": 1},
        "y": {"k": 1},
        "z": [{"k": 1}, {"k": 1}],
    }


# ------------------------------------------------------------------------ symbolic links


def _images(folder: Path, n: int, value: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(folder / f"{i}.png")


def test_link_loops_and_links_outside_are_not_followed_and_each_file_counts_once(tmp_path, caplog):
    root = tmp_path / "data"
    _images(root / "a", 3, 10)
    _images(root / "b", 2, 200)
    _images(tmp_path / "elsewhere", 5, 50)
    os.symlink(root / "a", root / "a" / "loop")  # a loop: a/loop -> a
    os.symlink(root, root / "b" / "up")  # b/up -> the root: a's images again, and b's
    os.symlink(tmp_path / "elsewhere", root / "b" / "out")  # leaves the folder
    with caplog.at_level(logging.WARNING, logger="edgexfer"):
        dataset = scan_image_folder(root, val_fraction=0.0001, test_fraction=0.0001)
    counts = {name: 0 for name in dataset.class_names}
    for sample in dataset.all_samples():
        counts[dataset.class_names[sample.label]] += 1
    assert counts == {"a": 3, "b": 2}
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "loop back" in warning and "outside" in warning and "counted once" in warning


def test_atomic_text_writes_replace_whole_files_and_leave_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    tempfiles.write_text_atomically(target, "old\n")
    tempfiles.write_text_atomically(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
