"""The wheel works anywhere, and `pip install edgexfer` is the runtime alone.

Builds the wheel with ``python -m build`` (sdist, then the wheel from it: what PyPI would
get), then, in fresh virtual environments outside the source tree (cwd a temporary folder,
no PYTHONPATH):

- full: the wheel installed with ``--no-deps`` and this test environment's site-packages
  appended for its dependencies (TensorFlow is not downloaded again): ``edgexfer --help``,
  the shipped recipe listing and the demo's recipe come from the installed package, and
  ``predict`` runs an exported file;
- runtime-only: ``pip install WHEEL`` with its real dependencies (pip resolves them from the
  package registry or its cache): TensorFlow and every other training-extra module is absent,
  ``predict`` and ``check`` of exported files work, a training command says in one line which
  extra to install, and a deploy bundle's example program runs.

Uses the package registry (as CI may); about a minute with pip's cache warm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
from edgexfer.tf_env import TRAIN_EXTRA_MODULES

pytestmark = [
    pytest.mark.integration,
    pytest.mark.registry,
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
]

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["dark", "light"]
PRE = Preprocessing(input_size=8)


def run(args, cwd: Path, timeout: int = 600, check: bool = True) -> SimpleNamespace:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200")
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return SimpleNamespace(code=done.returncode, out=done.stdout, err=done.stderr)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The wheel, and an int8 TFLite and a float ONNX export of a tiny model with its test images."""
    root = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "build", "--outdir", root / "dist", ROOT], cwd=root)
    [wheel] = sorted((root / "dist").glob("edgexfer-*.whl"))

    from edgexfer.export.stage import export_stage
    from edgexfer.runtime import normalize
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = np.clip(rng.normal(90, 30, (200, 8, 8, 3)) + 80 * y[:, None, None, None], 0, 255).astype(np.uint8)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    model.fit(normalize(x, PRE), y, epochs=8, batch_size=32, verbose=0)
    data = root / "data"
    for index, (image, label) in enumerate(zip(x[:40], y[:40])):
        (data / LABELS[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / LABELS[label] / f"{index:03d}.png")
    with writing_artifact(root / "ft") as writer:
        model.save(writer.file("model.h5"), include_optimizer=False, save_format="h5")
        writer.commit(
            Manifest(
                stage="finetune",
                label_names=LABELS,
                preprocessing=PRE,
                backbone="tiny",
                weights="none",
                model_file="model.h5",
                seed=0,
                dataset={"path": str(data)},
            )
        )
    tflite = export_stage(root / "ft", root / "tflite", "tflite", "int8", calibration_images=20)
    onnx = export_stage(root / "ft", root / "onnx", "onnx", "none")
    return SimpleNamespace(root=root, wheel=wheel, data=data, tflite=tflite, onnx=onnx)


def make_venv(path: Path) -> Path:
    """A fresh venv without pip of its own (ensurepip is slow): this environment's pip installs
    into it with ``pip --python``."""
    venv.EnvBuilder(with_pip=False, clear=True).create(path)
    return path / "bin" / "python"


def pip_install(python: Path, *args, cwd: Path) -> None:
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", *args], cwd=cwd, timeout=900)


def predictions(result: SimpleNamespace) -> list[str]:
    return [row["label"] for row in json.loads(result.out)["predictions"]]


def test_wheel_ships_the_recipes(built):
    import zipfile

    names = zipfile.ZipFile(built.wheel).namelist()
    assert {
        "edgexfer/recipes/digits.yaml",
        "edgexfer/recipes/fashion-mnist.yaml",
        "edgexfer/recipes/template.yaml",
    } <= set(names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(built.wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = [line for line in requires if "extra ==" not in line]
    assert not any("tensorflow" in line for line in runtime), runtime
    assert any("tensorflow" in line and 'extra == "train"' in line for line in requires)
    assert any("onnxruntime-gpu" in line and 'extra == "gpu"' in line for line in requires)


def test_full_install_from_the_wheel_works_outside_the_source_tree(built, tmp_path):
    python = make_venv(tmp_path / "full")
    pip_install(python, "--no-deps", built.wheel, cwd=tmp_path)
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).out.strip()
    )
    # this environment's packages (TensorFlow …) after the venv's own, instead of downloading them again
    (site / "zz_test_deps.pth").write_text(
        "\n".join({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}) + "\n"
    )
    edgexfer = tmp_path / "full" / "bin" / "edgexfer"
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run(
        [
            python,
            "-c",
            "import edgexfer, edgexfer.demo as d; print(edgexfer.__file__); print(d.RECIPE, d.RECIPE.is_file())",
        ],
        cwd=work,
    ).out.splitlines()
    assert where[0].startswith(str(site)) and where[1].startswith(str(site)) and where[1].endswith(" True")
    assert "predict" in run([edgexfer, "--help"], cwd=work).out
    listing = run([edgexfer, "run", "--list"], cwd=work).out
    assert all(name in listing for name in ("digits", "digits-fewshot", "fashion-mnist", "template"))
    unknown = run([edgexfer, "run", "nope"], cwd=work, check=False)
    assert (
        unknown.code == 2
        and "shipped recipes: digits, digits-fewshot, digits-source-free, fashion-mnist, template" in unknown.err
    )
    images = sorted(built.data.rglob("*.png"))[:6]
    result = run([edgexfer, "predict", built.tflite.model_path, *images, "--json"], cwd=work)
    assert predictions(result) == [p.parent.name for p in images]


def test_runtime_only_install_predicts_and_checks_without_tensorflow(built, tmp_path):
    python = make_venv(tmp_path / "rt")
    pip_install(python, built.wheel, cwd=tmp_path)
    bin_dir = tmp_path / "rt" / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()
    missing = run(
        [
            python,
            "-c",
            "import importlib.util, sys; "
            f"print([m for m in {list(TRAIN_EXTRA_MODULES)!r} if importlib.util.find_spec(m)])",
        ],
        cwd=work,
    ).out.strip()
    assert missing == "[]"  # no TensorFlow, tfmot, tf2onnx, onnx, scikit-learn, matplotlib …
    assert run([python, "-c", "import tensorflow"], cwd=work, check=False).code != 0

    images = sorted(built.data.rglob("*.png"))[:6]
    for model in (built.tflite.model_path, built.onnx.path):
        result = run([bin_dir / "edgexfer", "predict", model, *images, "--json"], cwd=work)
        assert predictions(result) == [p.parent.name for p in images]
    check = run(
        [
            bin_dir / "edgexfer",
            "check",
            built.tflite.path,
            built.onnx.path,
            "--data",
            built.data,
            "--out",
            work / "check",
            "--runs",
            "3",
            "--warmup",
            "1",
        ],
        cwd=work,
    )
    saved = json.loads((work / "check" / "check.json").read_text())
    assert saved["reference"]["kind"] == "export" and saved["n"] == 40
    assert saved["candidates"][1]["parity"]["agreement"] >= 0.9
    assert "TensorFlow is not installed" in check.out

    for args in (
        ["finetune", built.data, "--out", work / "ft"],
        ["export", built.root / "ft", "--format", "tflite", "--out", work / "x"],
    ):
        refused = run([bin_dir / "edgexfer", *args], cwd=work, check=False)
        assert refused.code == 2 and "Traceback" not in refused.err
        [line] = [line for line in refused.err.splitlines() if line.strip()]
        assert 'pip install "edgexfer[train]"' in line
    assert not (work / "ft").exists() and not (work / "x").exists()

    run([bin_dir / "edgexfer", "bundle", built.tflite.path, work / "bundle"], cwd=work)
    example = run([python, work / "bundle" / "predict.py", *images], cwd=work)
    assert [line.split()[1].split("=")[0] for line in example.out.splitlines()] == [p.parent.name for p in images]
