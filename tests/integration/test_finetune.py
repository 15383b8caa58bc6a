"""Fine-tuning end to end on generated images with a tiny backbone (seconds, not minutes)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgexfer import api
from edgexfer.artifact import Artifact
from edgexfer.errors import DataError
from edgexfer.keras_io import load_keras_model
from kit import COLORS, make_color_folder

pytestmark = pytest.mark.integration

TINY = dict(
    backbone="cnn_tiny",
    weights="none",
    img_size=16,
    epochs=12,
    fine_tune_epochs=2,
    unfreeze_layers=2,
    batch_size=16,
    learning_rate=0.05,
    early_stopping_patience=0,
    seed=1,
)


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors") / "data")


@pytest.fixture(scope="module")
def tiny_artifact(color_folder, tmp_path_factory):
    return api.finetune(color_folder, tmp_path_factory.mktemp("runs") / "ft", **TINY)


def test_finetune_writes_a_complete_artifact(tiny_artifact, color_folder):
    metrics = tiny_artifact.metrics
    assert metrics["test_accuracy"] >= 0.8
    assert set(metrics["test"]["per_class"]) == set(COLORS)
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == metrics["splits"]["test"]
    assert {"feature_extraction_seconds", "phase1_seconds", "phase2_seconds"} <= set(metrics["timings_seconds"])
    assert metrics["train_images_per_second"] > 0 and metrics["peak_rss_mb"] > 0
    manifest = tiny_artifact.manifest
    assert manifest.label_names == sorted(COLORS)
    assert manifest.dataset["files"] == 72 and len(manifest.dataset["sha256"]) == 64
    assert manifest.config["epochs"] == 12 and manifest.seed == 1
    assert manifest.preprocessing.input_size == 16


def test_model_is_flat_and_backbone_batchnorm_stays_frozen(tiny_artifact):
    model = load_keras_model(tiny_artifact.model_path)
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat: tfmot can quantize it
    assert model.output_shape == (None, 3)


def test_runs_are_reproducible_for_a_seed(color_folder, tiny_artifact, tmp_path):
    again = api.finetune(color_folder, tmp_path / "again", **TINY)
    assert again.metrics["history"] == tiny_artifact.metrics["history"]


def test_split_seed_keeps_the_held_out_images_whatever_the_training_seed(color_folder, tmp_path):
    from edgexfer.data import scan_image_folder
    from edgexfer.evaluate.splits import run_split, scan_domain

    def held_out(seed):
        return {sample.path for sample in scan_image_folder(color_folder, seed=seed).split("test")}

    assert held_out(1) != held_out(2)  # otherwise the test below could not tell them apart
    pinned = api.finetune(color_folder, tmp_path / "pinned", **{**TINY, "seed": 2, "split_seed": 1})
    assert pinned.manifest.seed == 2 and run_split(pinned)["seed"] == 1
    # Every later stage (evaluate, check, distill, adapt) reads the split through run_split.
    assert {sample.path for sample in scan_domain(pinned, color_folder).split("test")} == held_out(1)
    scored = api.evaluate(pinned.path, color_folder, split="test")
    assert scored["n"] == pinned.metrics["splits"]["test"]
    assert scored["accuracy"] == pytest.approx(pinned.metrics["test_accuracy"], abs=1 / scored["n"])
    # The training seed still changes the training: same split, other weights.
    other_seed = api.finetune(color_folder, tmp_path / "seed3", **{**TINY, "seed": 3, "split_seed": 1})
    assert other_seed.metrics["history"] != pinned.metrics["history"]


def test_phase1_without_feature_cache_reaches_the_same_accuracy(color_folder, tiny_artifact, tmp_path):
    uncached = api.finetune(color_folder, tmp_path / "uncached", **{**TINY, "feature_cache": False})
    assert uncached.metrics["test_accuracy"] >= 0.8
    assert "feature_extraction_seconds" not in uncached.metrics["timings_seconds"]


def test_evaluate_reports_and_writes_confusion_png(tiny_artifact, color_folder, tmp_path):
    result = api.evaluate(tiny_artifact.path, color_folder, confusion_png=tmp_path / "cm.png", top_k=2)
    assert result["n"] == 72 and result["accuracy"] >= 0.8 and result["top2_accuracy"] >= result["accuracy"]
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_refuses_data_with_other_classes(tiny_artifact, tmp_path):
    other = make_color_folder(tmp_path / "other")
    (other / "green").rename(other / "yellow")
    with pytest.raises(DataError, match="yellow"):
        api.evaluate(tiny_artifact.path, other)


def test_cli_finetune_bad_input_is_one_line_without_traceback(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a" / "x.png")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "finetune",
            str(tmp_path / "only"),
            "--out",
            str(tmp_path / "out"),
            "--backbone",
            "cnn_tiny",
            "--weights",
            "none",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "class" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_unknown_backbone_suggests_a_name(tmp_path, color_folder):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "finetune",
            str(color_folder),
            "--out",
            str(tmp_path / "out"),
            "--backbone",
            "efficientnet_lite00",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "did you mean 'efficientnet_lite0'" in result.stderr
    assert "Traceback" not in result.stderr


def test_mirrored_strategy_over_two_logical_cpus(color_folder, tmp_path):
    """MirroredStrategy over two logical CPU devices trains to the same accuracy floor."""
    script = (
        "import json, sys; from edgexfer import api;"
        f"a = api.finetune({str(color_folder)!r}, {str(tmp_path / 'mirrored')!r}, strategy='mirrored', **{TINY!r});"
        "print(json.dumps({'acc': a.metrics['test_accuracy'], 'replicas': a.manifest.extra['replicas']}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "EDGEXFER_LOGICAL_CPUS": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["acc"] >= 0.8
    assert Artifact(tmp_path / "mirrored").manifest.extra["strategy"] == "mirrored"


@pytest.fixture()
def run_dir_contents(monkeypatch):
    """What each finetune's private cache directory held just before it was removed."""
    from edgexfer.train import data_cache

    seen: list[list[str]] = []
    close = data_cache.RunFiles.close

    def recording_close(self):
        if self.path is not None:
            seen.append(sorted(p.name for p in self.path.iterdir()))
        close(self)

    monkeypatch.setattr(data_cache.RunFiles, "close", recording_close)
    return seen


@pytest.mark.parametrize("image_cache", ["disk", "none", "auto-over-budget"])
def test_streaming_image_caches_reach_the_memory_accuracy(
    color_folder, tiny_artifact, tmp_path, monkeypatch, run_dir_contents, image_cache
):
    from edgexfer.tf_env import cache_dir
    from edgexfer.train import data_cache

    assert tiny_artifact.metrics["data_cache"]["images"] == "memory"  # small data stays in memory under auto
    if image_cache == "auto-over-budget":
        monkeypatch.setattr(data_cache, "MEMORY_CACHE_BUDGET_BYTES", 1024)
    messages = []
    mode = image_cache.split("-")[0]
    artifact = api.finetune(color_folder, tmp_path / mode, log=messages.append, **{**TINY, "image_cache": mode})
    metrics = artifact.metrics
    expected = {"disk": "disk", "none": "none", "auto": "disk"}[mode]
    assert (metrics["data_cache"]["mode"], metrics["data_cache"]["images"]) == (mode, expected)
    assert metrics["data_cache"]["features"] == "disk"
    assert f"image cache {expected}, features disk" in messages[0]
    if mode == "auto":
        assert "> budget" in messages[0]
    assert abs(metrics["test_accuracy"] - tiny_artifact.metrics["test_accuracy"]) <= 1 / metrics["splits"]["test"]
    assert metrics["test_accuracy"] >= 0.8
    # The run's disk files were written (tf.data cache files for disk, feature files always) and then removed.
    written = run_dir_contents[0]
    assert {"features-train.f32", "features-val.f32"} <= set(written)
    assert any(name.startswith("edgexfer-cache-") for name in written) == (expected == "disk")
    assert not any((cache_dir() / "finetune-runs").iterdir())


def test_cli_image_cache_rejects_unknown_values(tmp_path, color_folder):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "finetune",
            str(color_folder),
            "--out",
            str(tmp_path / "out"),
            "--image-cache",
            "ram",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "image_cache='ram'" in result.stderr and "'auto', 'memory', 'disk' or 'none'" in result.stderr
