"""The adapt stage end to end on two tiny generated domains (seconds, not minutes).

Source: noisy red/green/blue squares. Target: the same classes with a shifted colour cast
and lower contrast — a domain shift that BatchNorm statistics and feature alignment see.
"""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgexfer import api
from edgexfer.artifact import Artifact
from edgexfer.errors import ConfigError, DataError
from edgexfer.evaluate.domains import evaluate_domains
from edgexfer.keras_io import load_keras_model
from edgexfer.train.adapt import adapt
from edgexfer.train.batchnorm import batchnorm_layers
from kit import COLORS as KIT_COLORS
from kit import make_color_folder

pytestmark = pytest.mark.integration
WIDE = {**os.environ, "COLUMNS": "200"}  # rich wraps at 80 columns when not on a terminal

COLORS = dict(sorted(KIT_COLORS.items()))
TINY = dict(
    backbone="cnn_tiny",
    weights="none",
    img_size=16,
    epochs=12,
    fine_tune_epochs=1,
    unfreeze_layers=2,
    batch_size=16,
    learning_rate=0.05,
    early_stopping_patience=0,
    seed=1,
)
FAST = dict(epochs=1, train_layers=2, batch_size=16, seed=0)


# Noisy coloured squares; ``contrast``/``shift`` move them to another domain.
make_domain = functools.partial(make_color_folder, classes=COLORS, per_class=16, size=16, prefix_names=True)


def architecture(model):
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    source = make_domain(root / "source", per_class=24)
    target = make_domain(root / "target", seed=1, contrast=0.5, shift=(40, 10, -30))
    flat = make_domain(root / "target_flat", seed=2, contrast=0.5, shift=(40, 10, -30), labelled=False)
    return source, target, flat


@pytest.fixture(scope="module")
def model(domains, tmp_path_factory):
    return api.finetune(domains[0], tmp_path_factory.mktemp("runs") / "ft", **TINY)


@pytest.mark.parametrize(
    "method, extra",
    [
        ("adabn", {}),
        ("coral", {}),
        ("dann", {}),
        ("pseudo-label", {"after": "adabn", "rounds": 1, "threshold": 0.5}),
        ("pseudo-label", {"after": "none", "rounds": 1, "threshold": 0.34}),
        ("pseudo-label", {"rounds": 1, "threshold": 0.5}),  # the default: after coral, frozen statistics
    ],
)
def test_each_method_writes_an_artifact_with_the_input_architecture(method, extra, model, domains, tmp_path):
    source, _, flat = domains
    adapted = adapt(model.path, source, flat, tmp_path / method, method=method, **FAST, **extra)
    assert adapted.manifest.stage == "adapt" and adapted.manifest.parent["path"] == str(model.path.resolve())
    assert adapted.manifest.label_names == model.manifest.label_names
    assert adapted.manifest.preprocessing == model.manifest.preprocessing
    assert adapted.manifest.extra["adapt"]["method"] == method
    assert adapted.metrics["target_labels_used"] is False and adapted.metrics["images"]["target"] == 48
    assert architecture(load_keras_model(adapted.model_path)) == architecture(
        load_keras_model(model.model_path)
    )  # no extra heads
    if adapted.metrics["bn"] == "frozen":  # the model's own statistics, untouched
        for old, new in zip(
            batchnorm_layers(load_keras_model(model.model_path)), batchnorm_layers(load_keras_model(adapted.model_path))
        ):
            np.testing.assert_array_equal(old.moving_mean.numpy(), new.moving_mean.numpy())
    assert Artifact(adapted.path).model_path.name == "model.h5"


def test_adapt_writes_tensorboard_scalars_per_epoch(model, domains, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from edgexfer.train.common import tensorboard_logging

    source, _, flat = domains
    with tensorboard_logging(tmp_path / "tb"):
        adapt(model.path, source, flat, tmp_path / "a", method="coral", **{**FAST, "epochs": 2})
    events = EventAccumulator(str(tmp_path / "tb" / "adapt_coral")).Reload()
    tags = events.Tags()["tensors"]
    assert {"classification_loss", "coral_loss"} <= set(tags)
    assert [e.step for e in events.Tensors("coral_loss")] == [0, 1]


def test_adabn_changes_batchnorm_statistics_and_pure_adabn_trains_nothing(model, domains, tmp_path):
    source, target, _ = domains
    before = load_keras_model(model.model_path)
    pure = adapt(model.path, source, target, tmp_path / "pure", method="adabn", epochs=0, batch_size=16)
    after = load_keras_model(pure.model_path)
    for old, new in zip(batchnorm_layers(before), batchnorm_layers(after)):
        assert not np.allclose(old.moving_mean.numpy(), new.moving_mean.numpy())
        assert not np.allclose(old.moving_variance.numpy(), new.moving_variance.numpy())
        np.testing.assert_array_equal(old.gamma.numpy(), new.gamma.numpy())
    for old, new in zip(before.layers, after.layers):
        if old.trainable_weights and not old.name.endswith("_bn"):
            for a, b in zip(old.get_weights(), new.get_weights()):
                np.testing.assert_array_equal(a, b)
    # The source-statistics baseline carries other statistics than the target-adapted model.
    baseline = adapt(
        model.path, source, target, tmp_path / "base", method="adabn", epochs=0, batch_size=16, output_stats="source"
    )
    first = batchnorm_layers(load_keras_model(baseline.model_path))[0]
    assert not np.allclose(first.moving_mean.numpy(), batchnorm_layers(after)[0].moving_mean.numpy())


def test_target_labels_are_ignored_and_announced(model, domains, tmp_path):
    source, target, _ = domains
    messages = []
    adapted = adapt(model.path, source, target, tmp_path / "a", method="coral", log=messages.append, **FAST)
    assert any("labels are ignored" in m for m in messages)
    assert adapted.metrics["target_had_labels"] is True and adapted.manifest.dataset["labels_used"] is False
    assert adapted.manifest.dataset["path"] == str(target.resolve())


def test_class_mismatch_is_an_error_and_class_map_fixes_renamed_classes(model, domains, tmp_path):
    source, _, _ = domains
    renamed = make_domain(tmp_path / "renamed", seed=3, contrast=0.5, names={"red": "rouge", "green": "vert"})
    with pytest.raises(DataError, match=r"--class-map 'rouge=\?,vert=\?'"):
        adapt(model.path, source, renamed, tmp_path / "x", method="adabn", epochs=0)
    assert not (tmp_path / "x").exists()
    adapted = adapt(
        model.path, source, renamed, tmp_path / "ok", method="adabn", epochs=0, class_map="rouge=red,vert=green"
    )
    assert adapted.manifest.config["class_map"] == {"rouge": "red", "vert": "green"}
    extra = make_domain(tmp_path / "extra", seed=4)
    (extra / "yellow").mkdir()
    Image.new("RGB", (16, 16), (220, 220, 0)).save(extra / "yellow" / "y.png")
    with pytest.raises(DataError, match="not in the model: yellow"):
        adapt(model.path, source, extra, tmp_path / "y", method="adabn", epochs=0)


def test_bad_options_fail_before_any_work(model, domains, tmp_path):
    source, target, _ = domains
    with pytest.raises(ConfigError, match="pseudo-label"):
        adapt(model.path, source, target, tmp_path / "x", method="coral", after="adabn")
    with pytest.raises(DataError, match="does not exist"):
        adapt(model.path, source, tmp_path / "nowhere", tmp_path / "x", method="coral")
    with pytest.raises(ConfigError, match="input artifact"):
        adapt(model.path, source, target, model.path, method="coral")


def test_evaluate_domains_reports_accuracy_and_gap(model, domains):
    source, target, _ = domains
    result = evaluate_domains(model.path, {"source": source, "target": target})
    rows = result["domains"]
    assert result["reference"] == "source" and rows["source"]["gap"] == 0.0
    assert rows["target"]["gap"] == pytest.approx(rows["source"]["accuracy"] - rows["target"]["accuracy"])
    assert rows["source"]["n"] == 72 and rows["target"]["n"] == 48


def test_cli_adapt_and_multi_domain_evaluate(model, domains, tmp_path):
    source, target, _ = domains
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "adapt",
            str(model.path),
            "--source",
            str(source),
            "--target",
            str(target),
            "--method",
            "adabn",
            "--epochs",
            "0",
            "--out",
            str(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
        env=WIDE,
    )
    assert run.returncode == 0, run.stderr
    assert "labels are ignored" in run.stdout and "source val accuracy" in run.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "evaluate",
            str(tmp_path / "cli"),
            "--data",
            f"src={source}",
            "--data",
            f"tgt={target}",
            "--json",
            str(tmp_path / "d.json"),
        ],
        capture_output=True,
        text=True,
        env=WIDE,
    )
    assert run.returncode == 0, run.stderr
    assert "src" in run.stdout and "tgt" in run.stdout and "gap" in run.stdout
    assert (tmp_path / "d.json").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "adapt",
            str(model.path),
            "--source",
            str(source),
            "--target",
            str(target),
            "--method",
            "mmd",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        env=WIDE,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "method" in bad.stderr


def test_adapted_model_exports_to_int8_calibrated_on_the_target(model, domains, tmp_path):
    from edgexfer.export.stage import export_stage

    source, _, flat = domains
    adapted = adapt(model.path, source, flat, tmp_path / "adapted", method="adabn", epochs=0, batch_size=16)
    exported = export_stage(adapted.path, tmp_path / "int8", "tflite", "int8")
    assert (exported.path / "model.tflite").is_file()
    assert str(flat.resolve()) in exported.manifest.config.get("calibration_source", "")
