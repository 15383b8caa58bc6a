"""The fuse stage (weight-space interpolation) on tiny generated data."""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgexfer import api
from edgexfer.errors import ConfigError
from edgexfer.keras_io import load_keras_model
from edgexfer.train.fuse import ALPHA_MEANING, fuse
from kit import COLORS as KIT_COLORS
from kit import make_color_folder

pytestmark = pytest.mark.integration
WIDE = {**os.environ, "COLUMNS": "200"}  # rich wraps at 80 columns when not on a terminal

COLORS = dict(sorted(KIT_COLORS.items()))
TINY = dict(
    backbone="cnn_tiny",
    weights="none",
    img_size=16,
    epochs=6,
    fine_tune_epochs=1,
    unfreeze_layers=2,
    batch_size=16,
    learning_rate=0.05,
    early_stopping_patience=0,
)


make_folder = functools.partial(make_color_folder, classes=COLORS, per_class=12, size=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    data = make_folder(root / "data")
    target = make_folder(root / "target", seed=5, contrast=0.4)
    two = make_folder(root / "two", classes={k: COLORS[k] for k in ("blue", "red")})
    source = api.finetune(data, root / "source", seed=1, **TINY)
    finetuned = api.finetune(data, root / "finetuned", seed=2, **TINY)
    other_head = api.finetune(two, root / "other_head", seed=3, **TINY)
    return dict(data=data, target=target, source=source, finetuned=finetuned, other_head=other_head, root=root)


def weights_by_layer(artifact):
    return {layer.name: layer.get_weights() for layer in load_keras_model(artifact.model_path).layers if layer.weights}


def assert_layers_equal(a, b, names):
    for name in names:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_alpha_zero_is_the_finetuned_model_and_one_the_source(setup, tmp_path):
    ft, src = weights_by_layer(setup["finetuned"]), weights_by_layer(setup["source"])
    zero = fuse(setup["source"].path, setup["finetuned"].path, tmp_path / "zero", alpha=0.0)
    one = fuse(setup["source"].path, setup["finetuned"].path, tmp_path / "one", alpha=1.0)
    half = fuse(setup["source"].path, setup["finetuned"].path, tmp_path / "half", alpha=0.5)
    assert_layers_equal(weights_by_layer(zero), ft, ft)
    assert_layers_equal(weights_by_layer(one), src, src)
    mixed = weights_by_layer(half)
    np.testing.assert_allclose(
        mixed["stage0_conv"][0], 0.5 * src["stage0_conv"][0] + 0.5 * ft["stage0_conv"][0], rtol=1e-5, atol=1e-6
    )
    manifest = half.manifest
    assert manifest.stage == "fuse" and manifest.extra["fuse"]["alpha"] == 0.5
    assert manifest.extra["fuse"]["alpha_meaning"] == ALPHA_MEANING
    assert manifest.parent["path"] == str(setup["finetuned"].path.resolve())
    assert half.metrics["kept_from_finetuned"] == []


def test_a_different_head_is_kept_and_only_shared_layers_interpolated(setup, tmp_path):
    ft, src = weights_by_layer(setup["finetuned"]), weights_by_layer(setup["other_head"])
    fused = fuse(setup["other_head"].path, setup["finetuned"].path, tmp_path / "f", alpha=1.0)
    assert fused.metrics["kept_from_finetuned"] == ["head_dense"]
    got = weights_by_layer(fused)
    assert_layers_equal(got, src, [n for n in src if n != "head_dense"])
    assert_layers_equal(got, ft, ["head_dense"])
    assert fused.manifest.label_names == setup["finetuned"].manifest.label_names


def test_imagenet_source_means_the_pretrained_backbone(setup, tmp_path, monkeypatch):
    from edgexfer.backbones import registry

    real = registry.create_backbone
    built = {}

    def offline(name, input_size=None, weights="imagenet", width=None):  # cnn_tiny has no ImageNet weights
        assert weights == "imagenet"
        built["model"] = real(name, input_size, "none", width)
        return built["model"]

    monkeypatch.setattr(registry, "create_backbone", offline)
    fused = fuse("imagenet:cnn_tiny", setup["finetuned"].path, tmp_path / "f", alpha=1.0)
    assert fused.metrics["kept_from_finetuned"] == ["head_dense"]
    assert fused.manifest.extra["fuse"]["source"]["spec"] == "imagenet:cnn_tiny"
    got = weights_by_layer(fused)
    np.testing.assert_allclose(got["stage1_conv"][0], built["model"].get_layer("stage1_conv").get_weights()[0])


def test_auto_sweeps_alpha_and_writes_the_curve(setup, tmp_path):
    fused = fuse(
        setup["source"].path,
        setup["finetuned"].path,
        tmp_path / "auto",
        alpha="auto",
        val_data=f"tgt={setup['target']}",
        curve_data={"src": str(setup["data"])},
        alphas=(0, 0.5, 1),
    )
    curve = json.loads((fused.path / "alpha_curve.json").read_text())
    assert curve["alphas"] == [0.0, 0.5, 1.0] and set(curve["curves"]) == {"tgt", "src"}
    assert curve["selected_on"] == "tgt" and curve["alpha_meaning"] == ALPHA_MEANING
    best = max(curve["curves"]["tgt"])
    assert curve["chosen_alpha"] == curve["alphas"][curve["curves"]["tgt"].index(best)] == fused.metrics["alpha"]
    assert (fused.path / "alpha_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert set(fused.metrics["accuracy_at"]["tgt"]) >= {"alpha=0", "alpha=1"}


def test_different_architectures_are_an_error(setup, tmp_path):
    other = api.finetune(
        setup["data"],
        tmp_path / "small",
        seed=1,
        **{**TINY, "backbone": "cnn_small", "fine_tune_epochs": 0, "epochs": 1},
    )
    with pytest.raises(ConfigError, match="same architecture"):
        fuse(other.path, setup["finetuned"].path, tmp_path / "x", alpha=0.5)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="val_data"):
        fuse(setup["source"].path, setup["finetuned"].path, tmp_path / "x", alpha="auto")


def test_cli_fuse_auto_prints_the_curve(setup, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "fuse",
            str(setup["source"].path),
            str(setup["finetuned"].path),
            "--alpha",
            "auto",
            "--alphas",
            "0,1",
            "--val-data",
            f"tgt={setup['target']}",
            "--out",
            str(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
        env=WIDE,
    )
    assert run.returncode == 0, run.stderr
    assert "weight of the source" in run.stdout and "alpha_curve.png" in run.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "fuse",
            str(setup["source"].path),
            str(setup["finetuned"].path),
            "--alpha",
            "2",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        env=WIDE,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "alpha" in bad.stderr


def test_bn_reset_re_estimates_statistics_after_interpolating(setup, tmp_path):
    plain = fuse(setup["source"].path, setup["finetuned"].path, tmp_path / "plain", alpha=0.5)
    reset = fuse(
        setup["source"].path, setup["finetuned"].path, tmp_path / "reset", alpha=0.5, bn_reset=str(setup["target"])
    )
    before, after = weights_by_layer(plain), weights_by_layer(reset)
    gamma, beta, mean, var = after["stage0_bn"]
    np.testing.assert_allclose(gamma, before["stage0_bn"][0])  # trained weights: interpolated, untouched
    assert not np.allclose(mean, before["stage0_bn"][2])  # statistics: re-estimated on the target images
    assert reset.metrics["bn_reset"] == str(setup["target"])
