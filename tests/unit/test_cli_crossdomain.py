"""adapt and fuse with the API patched: flags over ``--config``, and the rendering of each
stage's typed result (``edgexfer.train.results``), without training a model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import edgexfer.api
from kit import call_cli


@pytest.fixture
def calls(monkeypatch):
    seen: dict = {}

    def fake(name, result):
        def stage(*args, **kwargs):
            seen[name] = (args, kwargs)
            return result

        monkeypatch.setattr(edgexfer.api, name, stage)

    seen["patch"] = fake
    return seen


ADAPT_METRICS = {
    "method": "pseudo-label",
    "after": "coral",
    "bn": "frozen",
    "source_val_accuracy": 0.97,
    "input": {"source_val_accuracy": 0.98},
    "output": {"target_mean_confidence": 0.91, "target_confident_fraction": 0.8},
    "source_stats_source_val_accuracy": 0.96,
    "images": {"source_train": 900, "source_val": 100, "target": 1797},
    "timings_seconds": {"total_seconds": 12.34},
}


def test_adapt_merges_config_file_and_flags_and_renders_its_result(capsys, calls, tmp_path):
    calls["patch"]("adapt", SimpleNamespace(path=tmp_path / "o", metrics=ADAPT_METRICS))
    config = tmp_path / "adapt.yaml"
    config.write_text("method: coral\nepochs: 3\nthreshold: 0.8\nclass_map: seven=7\n")
    args = ["adapt", "M", "--source", "S", "--target", "T", "--out", tmp_path / "o", "--config", config]
    result = call_cli(capsys, *args, "--method", "pseudo-label", "--rounds", "2", "--seed", "5")
    assert result.code == 0, result.err
    built = calls["adapt"][1]["config"]
    assert (built.method, built.epochs, built.threshold, built.rounds, built.seed) == ("pseudo-label", 3, 0.8, 2, 5)
    assert built.class_map == {"seven": "7"}  # a file's class map is parsed like the flag's
    out = result.out
    assert "adapt (pseudo-label after coral, BatchNorm frozen)" in out
    assert "0.9800" in out and "0.9700" in out and "900 / 100 / 1797" in out and "12.3" in out
    assert "edgexfer evaluate" in out and "--data source=S" in out


def test_fuse_renders_the_alpha_curve_and_takes_options_from_a_config_file(capsys, calls, tmp_path):
    artifact = tmp_path / "fused"
    artifact.mkdir()
    curve = {"alphas": [0.0, 0.5, 1.0], "curves": {"tgt": [0.7, 0.8, 0.4], "src": [0.5, 0.6, 0.9]}}
    curve |= {"selected_on": "tgt", "rule": {"rule": "best tgt accuracy"}}
    (artifact / "alpha_curve.json").write_text(json.dumps(curve))
    metrics = {"alpha": 0.5, "interpolated_layers": 12, "kept_from_finetuned": ["head_dense"]}
    metrics |= {"curve_json": "alpha_curve.json", "curve_png": "alpha_curve.png"}
    calls["patch"]("fuse", SimpleNamespace(path=artifact, metrics=metrics))
    config = tmp_path / "fuse.yaml"
    config.write_text("val_data: tgt=/data/t\nbatch_size: 8\nalphas: [0, 0.5, 1]\n")
    result = call_cli(capsys, "fuse", "imagenet", "F", "--out", artifact, "--alpha", "auto", "--config", config)
    assert result.code == 0, result.err
    built = calls["fuse"][1]["config"]
    assert (built.alpha, built.val_data, built.batch_size, built.alphas) == ("auto", "tgt=/data/t", 8, (0.0, 0.5, 1.0))
    assert "0.5 ← chosen" in result.out and "chosen by: best tgt accuracy" in result.out
    text = " ".join(result.out.split())  # the console wraps at 80 columns
    assert "fused α = 0.5 (12 layers interpolated, kept from the fine-tuned model: head_dense)" in text


def test_fuse_bad_alpha_is_one_line(capsys, calls, tmp_path):
    result = call_cli(capsys, "fuse", "imagenet", "F", "--out", tmp_path / "o", "--alpha", "half")
    assert result.code == 2 and "is not a number in [0, 1] or 'auto'" in result.err and "Traceback" not in result.err
    assert "fuse" not in calls  # nothing ran
