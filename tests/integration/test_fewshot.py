"""Few labels of one's own domain on tiny generated data: finetune --init / --per-class /
--unlabelled, and fuse --keep-source between a source model and its retrained descendant."""

import functools
import json

import numpy as np
import pytest

from edgexfer import api
from edgexfer.errors import ConfigError, DataError
from edgexfer.keras_io import load_keras_model
from kit import COLORS as KIT_COLORS
from kit import call_cli, make_color_folder, run_shipped_recipe, the_error

pytestmark = pytest.mark.integration

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
# Retraining from the init model: the head on cached features only, unless a test says otherwise.
RETRAIN = dict(epochs=2, fine_tune_epochs=0, batch_size=16, learning_rate=0.01, early_stopping_patience=0)

make_folder = functools.partial(make_color_folder, classes=COLORS, per_class=12, size=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    source_data = make_folder(root / "source")
    target = make_folder(root / "target", seed=5, contrast=0.5, shift=(30, 0, 0))
    source = api.finetune(source_data, root / "model", seed=1, **TINY)
    return dict(root=root, source_data=source_data, target=target, source=source)


def head_weights(artifact):
    return load_keras_model(artifact.model_path).get_layer("head_dense").get_weights()


def test_init_with_the_same_classes_keeps_its_head_and_records_lineage(setup, tmp_path):
    tiny_steps = {**RETRAIN, "epochs": 1, "learning_rate": 1e-7}
    out = api.finetune(setup["target"], tmp_path / "few", init=str(setup["source"].path), **tiny_steps)
    for before, after in zip(head_weights(setup["source"]), head_weights(out)):
        np.testing.assert_allclose(after, before, atol=1e-4)
    manifest = out.manifest
    assert manifest.parent["path"] == str(setup["source"].path.resolve())
    assert manifest.parent["sha256"] == setup["source"].parent_ref()["sha256"]
    assert manifest.weights.startswith(f"init: {setup['source'].path.resolve()}")
    assert manifest.backbone == "cnn_tiny" and out.metrics["init"]["head"] == "kept"
    assert manifest.preprocessing == setup["source"].manifest.preprocessing


def test_init_with_other_classes_builds_a_new_head_and_says_so(setup, tmp_path):
    two = make_folder(tmp_path / "two", classes={"cyan": (30, 200, 200), "magenta": (200, 30, 200)})
    said = []
    out = api.finetune(two, tmp_path / "few", init=str(setup["source"].path), log=said.append, **RETRAIN)
    assert out.metrics["init"]["head"] == "new" and out.manifest.label_names == ["cyan", "magenta"]
    assert head_weights(out)[0].shape[-1] == 2
    assert any("a new head" in line and "--class-map" in line for line in said)
    # The backbone below the head comes from the init model, not from scratch.
    source = load_keras_model(setup["source"].model_path)
    model = load_keras_model(out.model_path)
    first = next(layer.name for layer in source.layers if layer.weights)
    np.testing.assert_allclose(model.get_layer(first).get_weights()[0], source.get_layer(first).get_weights()[0])


def test_a_class_map_keeps_the_head_for_renamed_classes(setup, tmp_path):
    names = {"blue": "b", "green": "g", "red": "r"}
    renamed = make_folder(tmp_path / "renamed", names=names)
    out = api.finetune(
        renamed,
        tmp_path / "few",
        init=str(setup["source"].path),
        class_map={"b": "blue", "g": "green", "r": "red"},
        **RETRAIN,
    )
    assert out.metrics["init"]["head"] == "kept" and out.manifest.label_names == list(COLORS)


def test_per_class_takes_n_of_each_class_and_holds_out_the_test_split(setup, tmp_path):
    out = api.finetune(
        setup["target"], tmp_path / "few", init=str(setup["source"].path), per_class=3, seed=4, **RETRAIN
    )
    few = out.metrics["few_labels"]
    assert few["per_class"] == 3 and few["labelled"] == 9 and len(few["labelled_files"]) == 9
    classes = [name.split("/")[0] for name in few["labelled_files"]]
    assert sorted(classes) == sorted(list(COLORS) * 3)
    assert out.metrics["splits"]["train"] == 9 and out.metrics["test"]["n"] == few["held_out"] > 0
    from edgexfer.data import scan_image_folder

    carved = scan_image_folder(setup["target"], val_fraction=0.1, test_fraction=0.1, seed=4)
    test = {p.path.relative_to(setup["target"]).as_posix() for p in carved.split("test")}
    assert len(test) == few["held_out"] and not test & set(few["labelled_files"])
    again = api.finetune(
        setup["target"], tmp_path / "again", init=str(setup["source"].path), per_class=3, seed=4, **RETRAIN
    )
    assert again.metrics["few_labels"]["labelled_files"] == few["labelled_files"]  # seeded


def test_per_class_above_the_smallest_class_is_an_error_naming_it(setup, tmp_path):
    with pytest.raises(
        DataError, match=r"--per-class 11: class '\w+' has only \d+ labelled image\(s\).*--per-class \d+ or less"
    ):
        api.finetune(setup["target"], tmp_path / "few", init=str(setup["source"].path), per_class=11, **RETRAIN)
    assert not (tmp_path / "few").exists()


def test_unlabelled_images_are_pseudo_labelled_and_never_the_labelled_or_held_out_ones(setup, tmp_path):
    said = []
    out = api.finetune(
        setup["target"],
        tmp_path / "few",
        init=str(setup["source"].path),
        per_class=3,
        unlabelled=str(setup["target"]),
        pseudo_threshold=0.34,  # above a uniform guess over the 3 classes: the plumbing is under test
        pseudo_rounds=1,
        pseudo_epochs=1,
        log=said.append,
        **RETRAIN,
    )
    training = out.metrics["history"]["self_training"]
    held_out = out.metrics["few_labels"]["held_out"]
    assert training["unlabelled_images"] == 36 - 9 - held_out
    assert training["rounds"][0]["pseudo_labels"] > 0
    assert any("self-training round 1/1" in line for line in said)


@pytest.mark.parametrize(
    "case, message",
    [
        ("export", "is an export artifact .*pass --init"),
        ("not-artifact", "is not an edgexfer artifact"),
        ("img-size", "takes 16×16 px images but --img-size is 32; pass --img-size 16"),
    ],
)
def test_bad_init_is_one_line_exit_2_and_writes_nothing(setup, tmp_path, capsys, case, message):
    init = setup["source"].path
    extra = []
    if case == "export":
        init = api.export(setup["source"].path, tmp_path / "tflite", "tflite").path
    elif case == "not-artifact":
        init = setup["target"]
    else:
        extra = ["--img-size", "32"]
    result = call_cli(capsys, "finetune", setup["target"], "--out", tmp_path / "few", "--init", init, *extra)
    assert result.code == 2
    import re

    assert re.search(message, the_error(result.err)), result.err
    assert not (tmp_path / "few").exists()


def test_fuse_keep_source_picks_by_the_rule_and_records_the_curve(setup, tmp_path):
    few = api.finetune(
        setup["target"], tmp_path / "few", init=str(setup["source"].path), per_class=4, seed=2, **RETRAIN
    )
    fused = api.fuse(
        setup["source"].path,
        few.path,
        tmp_path / "fused",
        alpha="auto",
        val_data=f"target={setup['target']}",
        val_images="labelled",
        source_data=f"source={setup['source_data']}",
        keep_source=0.05,
        alphas=(0.0, 0.5, 1.0),
    )
    curve = json.loads((fused.path / "alpha_curve.json").read_text())
    rule = curve["rule"]
    floor = rule["source_model_accuracy"] - 0.05
    allowed = [a for a, s in zip(curve["alphas"], curve["curves"]["source"]) if s >= floor - 1e-12]
    assert rule["allowed_alphas"] == allowed and 1.0 in allowed
    best = max(t for a, t in zip(curve["alphas"], curve["curves"]["target"]) if a in allowed)
    chosen = curve["alphas"].index(fused.metrics["alpha"])
    assert fused.metrics["alpha"] in allowed and curve["curves"]["target"][chosen] == best
    assert fused.metrics["curve"]["source"] == curve["curves"]["source"]


def test_fuse_keep_source_without_source_data_and_unrelated_lineage(setup, tmp_path, caplog):
    with pytest.raises(ConfigError, match="source_data"):
        api.fuse(
            setup["source"].path,
            setup["source"].path,
            tmp_path / "x",
            alpha="auto",
            val_data=str(setup["target"]),
            keep_source=0.01,
        )
    stranger = api.finetune(setup["target"], tmp_path / "stranger", seed=3, **TINY)
    with caplog.at_level("WARNING", logger="edgexfer"):
        api.fuse(setup["source"].path, stranger.path, tmp_path / "fused", alpha=0.5)
    assert any("does not descend from" in r.getMessage() for r in caplog.records)


def test_fuse_of_two_architectures_names_the_first_layer_that_differs(setup, tmp_path):
    other = api.finetune(
        setup["target"],
        tmp_path / "small",
        seed=1,
        **{**TINY, "backbone": "cnn_small", "fine_tune_epochs": 0, "epochs": 1},
    )
    with pytest.raises(ConfigError, match=r"the first layer that differs is \w+"):
        api.fuse(other.path, setup["source"].path, tmp_path / "x", alpha=0.5)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_digits_fewshot_recipe_runs_end_to_end_at_a_tiny_size(setup, tmp_path):
    """models/digits-fewshot.yaml, every stage, on the generated folders with tiny models."""
    tiny = (
        "{backbone: cnn_tiny, weights: none, img_size: 16, epochs: 6, fine_tune_epochs: 1, unfreeze_layers: 2, "
        "batch_size: 16, learning_rate: 0.05}"
    )
    overrides = [
        f"data.source={{path: {setup['source_data']}}}",
        f"data.target={{path: {setup['target']}}}",
        f"stages.finetune={{data: source, {tiny[1:]}",
        "few_labels.per_class=3",
        "few_labels.pseudo_threshold=0.34",
        "few_labels.learning_rate=0.01",
        "fuse.keep_source=0.5",
        "distill.epochs=2",
        "distill.student_img_size=16",
        "prune.epochs=1",
        "quantize.epochs=1",
    ]
    run_dir = run_shipped_recipe("digits-fewshot", tmp_path / "run", overrides)
    few = json.loads((run_dir / "few_labels" / "metrics.json").read_text())
    assert few["few_labels"]["labelled"] == 9 and few["init"]["head"] == "kept"
    fused = json.loads((run_dir / "fuse" / "metrics.json").read_text())
    assert fused["rule"]["keep_source"] == 0.5 and 0.0 <= fused["alpha"] <= 1.0
    assert (run_dir / "export_tflite" / "model.tflite").is_file()
