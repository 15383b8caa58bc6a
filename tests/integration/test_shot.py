"""Source-free adaptation (``adapt --method shot``) and ``--method auto`` on tiny generated domains.

Source: noisy red/green/blue squares. Target: the same classes with a colour cast and lower
contrast. Seconds per test (a cnn_tiny model at 16 px).
"""

import functools
import shutil

import numpy as np
import pytest

from edgexfer import api
from edgexfer.artifact import Artifact
from edgexfer.errors import ConfigError
from edgexfer.evaluate.domains import evaluate_domains
from edgexfer.keras_io import load_keras_model, save_keras_model
from edgexfer.pipeline import load_pipeline
from edgexfer.train.adapt import adapt
from edgexfer.train.batchnorm import batchnorm_layers
from kit import COLORS, call_cli, make_color_folder, run_shipped_recipe, the_error

pytestmark = pytest.mark.integration

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
SHOT = dict(epochs=8, train_layers=3, batch_size=16, learning_rate=0.01, seed=0)
make_domain = functools.partial(
    make_color_folder, classes=dict(sorted(COLORS.items())), per_class=16, size=16, prefix_names=True
)


def architecture(model):
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("shot-domains")
    source = make_domain(root / "source", per_class=24)
    target = make_domain(root / "target", seed=1, contrast=0.5, shift=(40, 10, -30))
    return source, target


@pytest.fixture(scope="module")
def model(domains, tmp_path_factory):
    return api.finetune(domains[0], tmp_path_factory.mktemp("shot-runs") / "ft", **TINY)


def _with_model(artifact: Artifact, keras_model, out):
    """A copy of ``artifact`` whose model file is ``keras_model`` (same input and classes)."""
    shutil.copytree(artifact.path, out)
    save_keras_model(keras_model, out / artifact.model_path.name)
    return Artifact(out)


def test_shot_reads_no_source_keeps_the_head_and_architecture_and_lifts_the_target(model, domains, tmp_path):
    _, target = domains
    adapted = adapt(model.path, None, target, tmp_path / "shot", method="shot", **SHOT)
    before, after = load_keras_model(model.model_path), load_keras_model(adapted.model_path)
    assert architecture(after) == architecture(before)
    dense = [layer.name for layer in before.layers if type(layer).__name__ == "Dense"][-1]
    for a, b in zip(before.get_layer(dense).get_weights(), after.get_layer(dense).get_weights()):
        np.testing.assert_array_equal(a, b)  # the classifier (SHOT's hypothesis) is frozen
    assert dense in adapted.metrics["frozen_head"] and dense not in adapted.metrics["trained_layers"]
    # BatchNorm carries target statistics (the default for shot)
    assert not np.allclose(
        batchnorm_layers(before)[0].moving_mean.numpy(), batchnorm_layers(after)[0].moving_mean.numpy()
    )
    m = adapted.metrics
    assert m["method"] == "shot" and m["source_free"] is True and m["source_images_used"] == 0
    assert m["images"] == {"source_train": 0, "source_val": 0, "target": 48} and m["target_labels_used"] is False
    assert adapted.manifest.extra["adapt"]["source_free"] is True
    assert "source" not in adapted.manifest.dataset and adapted.manifest.dataset["domain"] == "target"
    assert adapted.manifest.extra["invocation"]["arguments"]["source"] is None
    history = m["history"]
    assert history["epochs"] == 8 and history["im_loss"][-1] < history["im_loss"][0]
    scores = evaluate_domains(adapted.path, {"target": target})["domains"]["target"]["accuracy"]
    baseline = evaluate_domains(model.path, {"target": target})["domains"]["target"]["accuracy"]
    assert scores >= 0.9 and scores >= baseline - 0.02, (baseline, scores)


def test_shot_refuses_source_images_and_other_methods_need_them(model, domains, tmp_path):
    source, target = domains
    with pytest.raises(ConfigError, match="source-free and reads no source images; leave the source out"):
        adapt(model.path, source, target, tmp_path / "x", method="shot")
    with pytest.raises(ConfigError, match="coral trains on labelled source images.*use method shot"):
        adapt(model.path, None, target, tmp_path / "x", method="coral")
    with pytest.raises(ConfigError, match="auto trains on labelled source images"):
        adapt(model.path, None, target, tmp_path / "x", method="auto")
    with pytest.raises(ConfigError, match="auto runs every method with its own defaults"):
        adapt(model.path, source, target, tmp_path / "x", method="auto", bn="frozen")
    with pytest.raises(ConfigError, match="train-layers 0 leaves none"):
        adapt(model.path, None, target, tmp_path / "x", method="shot", train_layers=0)
    assert not (tmp_path / "x").exists()


def test_shot_refuses_a_model_without_batchnorm_or_without_a_separable_head(model, domains, tmp_path):
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    _, target = domains
    size = model.manifest.preprocessing.input_size
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    no_bn = _with_model(model, keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)), tmp_path / "nobn")
    with pytest.raises(ConfigError, match="shot needs BatchNorm layers .* has none"):
        adapt(no_bn.path, None, target, tmp_path / "out", method="shot")

    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(3, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    no_head = keras.Model(inputs, keras.layers.Softmax()(x))
    with pytest.raises(ConfigError, match="shot needs a separable classifier head .* ends in GlobalAveragePooling2D"):
        adapt(_with_model(model, no_head, tmp_path / "nohead").path, None, target, tmp_path / "out", method="shot")
    assert not (tmp_path / "out").exists()


def test_cli_shot_needs_no_source_and_refuses_one_in_one_line(model, domains, tmp_path, capsys):
    source, target = domains
    flags = ["--epochs", "1", "--train-layers", "2", "--batch-size", "16"]
    ok = call_cli(capsys, "adapt", model.path, "--target", target, "--method", "shot", "--out", tmp_path / "a", *flags)
    assert ok.code == 0, ok.err
    assert "source-free: no source image was read" in ok.out
    bad = call_cli(
        capsys, "adapt", model.path, "--source", source, "--target", target, "--method", "shot", "--out", tmp_path / "b"
    )
    assert bad.code == 2 and "source-free" in the_error(bad.err) and not (tmp_path / "b").exists()
    missing = call_cli(capsys, "adapt", model.path, "--target", target, "--method", "dann", "--out", tmp_path / "c")
    assert missing.code == 2 and "--source DIR" in the_error(missing.err)


@pytest.mark.slow  # five adaptations: ~1 min on an idle 2-core machine
def test_auto_runs_every_candidate_and_records_its_pick(model, domains, tmp_path):
    source, target = domains
    messages = []
    adapted = adapt(
        model.path, source, target, tmp_path / "auto", method="auto", log=messages.append, **{**SHOT, "epochs": None}
    )
    m = adapted.metrics
    auto = m["auto"]
    assert m["method"] == "auto" and m["picked"] == auto["picked"] in auto["scores"]
    assert set(auto["scores"]) == {"adabn", "coral", "dann", "pseudo-label", "shot"}
    best = max(auto["scores"].values(), key=lambda s: s["agreement_with_consensus"])["agreement_with_consensus"]
    assert auto["scores"][auto["picked"]]["agreement_with_consensus"] == best
    assert auto["reason"].startswith(auto["picked"]) and any("auto picked" in line for line in messages)
    assert adapted.manifest.extra["adapt"]["picked"] == auto["picked"]
    assert adapted.manifest.dataset["source"]["path"] == str(source.resolve())
    assert architecture(load_keras_model(adapted.model_path)) == architecture(load_keras_model(model.model_path))
    assert not [p for p in tmp_path.iterdir() if p.name != "auto"]  # the candidates' folders are gone


def test_pipeline_validates_method_shot_without_a_source(tmp_path):
    def recipe(adapt_stage: str) -> str:
        path = tmp_path / "p.yaml"
        path.write_text(
            "name: p\ndata:\n  source: {dataset: mnist-5k}\n  target: {dataset: uci-digits}\nstages:\n"
            "  finetune: {data: source, backbone: cnn_tiny, weights: none, img_size: 16}\n"
            f"  adapt: {{{adapt_stage}}}\n"
        )
        return str(path)

    load_pipeline(recipe("parent: finetune, target: target, method: shot"))
    with pytest.raises(ConfigError, match="source-free"):
        load_pipeline(recipe("parent: finetune, source: source, target: target, method: shot"))
    with pytest.raises(ConfigError, match="coral trains on labelled source images"):
        load_pipeline(recipe("parent: finetune, target: target, method: coral"))


def test_an_interrupted_shot_resumes_and_matches_an_uninterrupted_run(model, domains, tmp_path, monkeypatch):
    """shot checkpoints every epoch like adapt's other methods: the rerun says where it resumes
    and gives the uninterrupted run's model, bit for bit (the random stream's position is saved)."""
    from edgexfer.train import resume
    from edgexfer.train.resume import checkpoint_dir

    _, target = domains
    options = {**SHOT, "epochs": 3}
    reference = adapt(model.path, None, target, tmp_path / "reference", method="shot", **options)
    original = resume.LoopCheckpoint.save

    def save_then_stop(self, state, arrays, *, phase, epochs_done, epochs):
        original(self, state, arrays, phase=phase, epochs_done=epochs_done, epochs=epochs)
        if epochs_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.LoopCheckpoint, "save", save_then_stop)
    out = tmp_path / "shot"
    with pytest.raises(KeyboardInterrupt):
        adapt(model.path, None, target, out, method="shot", **options)
    assert not out.exists() and checkpoint_dir(out).is_dir()
    monkeypatch.setattr(resume.LoopCheckpoint, "save", original)
    lines: list[str] = []
    resumed = adapt(
        model.path, None, target, out, method="shot", log=lambda *a: lines.append(" ".join(map(str, a))), **options
    )
    assert any("shot: resuming from epoch 3 of 3" in line for line in lines), lines
    for a, b in zip(
        load_keras_model(resumed.model_path).get_weights(), load_keras_model(reference.model_path).get_weights()
    ):
        np.testing.assert_array_equal(a, b)
    assert resumed.metrics["history"] == reference.metrics["history"]
    assert resumed.metrics["resumed"]["shot"]["from_epoch"] == 3 and reference.metrics["resumed"] == {}
    assert not checkpoint_dir(out).exists() and not checkpoint_dir(tmp_path / "reference").exists()


def test_restarts_keep_the_restart_with_the_highest_information_maximisation(model, domains, tmp_path):
    """restarts=3 trains three times from the same start and keeps the best-scoring one; restart 1
    is the run without restarts, so the kept model is never worse by the score than that run."""
    _, target = domains
    options = {**SHOT, "epochs": 3}
    single = adapt(model.path, None, target, tmp_path / "single", method="shot", **options)
    several = adapt(model.path, None, target, tmp_path / "several", method="shot", restarts=3, **options)
    key = "target_information_maximisation"
    restarts = several.metrics["history"]["restarts"]
    assert [r["restart"] for r in restarts] == [1, 2, 3]
    assert restarts[0][key] == single.metrics["output"][key]  # restart 1 draws what a single run draws
    assert len({r["agreement_with_input"] for r in restarts} | {r[key] for r in restarts}) > 2  # distinct runs
    kept = several.metrics["history"]["kept_restart"]
    assert restarts[kept - 1][key] == max(r[key] for r in restarts) == several.metrics["output"][key]
    assert "restarts" not in single.metrics["history"]
    with pytest.raises(ConfigError, match="restarts is for method shot"):
        adapt(model.path, domains[0], target, tmp_path / "x", method="coral", restarts=2)


def test_an_interrupted_restart_resumes_and_matches_an_uninterrupted_run(model, domains, tmp_path, monkeypatch):
    """Killed in the last of three restarts, the rerun continues that restart (the finished ones'
    scores and the best one's weights come from the checkpoint: here restart 2 is kept) and writes
    the uninterrupted run's model."""
    from edgexfer.train import resume

    _, target = domains
    options = {**SHOT, "epochs": 2, "restarts": 3}
    reference = adapt(model.path, None, target, tmp_path / "reference", method="shot", **options)
    original = resume.LoopCheckpoint.save

    def save_then_stop(self, state, arrays, *, phase, epochs_done, epochs):
        original(self, state, arrays, phase=phase, epochs_done=epochs_done, epochs=epochs)
        if phase == "shot restart 3/3" and epochs_done == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume.LoopCheckpoint, "save", save_then_stop)
    out = tmp_path / "shot"
    with pytest.raises(KeyboardInterrupt):
        adapt(model.path, None, target, out, method="shot", **options)
    monkeypatch.setattr(resume.LoopCheckpoint, "save", original)
    lines: list[str] = []
    resumed = adapt(
        model.path, None, target, out, method="shot", log=lambda *a: lines.append(" ".join(map(str, a))), **options
    )
    assert any("shot restart 3/3: resuming from epoch 2 of 2" in line for line in lines), lines
    assert resumed.metrics["history"]["kept_restart"] == 2
    for a, b in zip(
        load_keras_model(resumed.model_path).get_weights(), load_keras_model(reference.model_path).get_weights()
    ):
        np.testing.assert_array_equal(a, b)
    assert resumed.metrics["history"] == reference.metrics["history"]


def test_an_interrupted_auto_leaves_no_candidate_checkpoint_behind(model, domains, tmp_path, monkeypatch):
    """auto's candidates run under temporary names, which a rerun cannot find again: when auto is
    interrupted, their checkpoints go with them instead of filling the cache."""
    from edgexfer.train import resume

    source, target = domains

    def stop(self, state, arrays, *, phase, epochs_done, epochs):
        raise KeyboardInterrupt

    before = {entry["dir"] for entry in resume.list_checkpoints()}
    monkeypatch.setattr(resume.LoopCheckpoint, "save", stop)
    with pytest.raises(KeyboardInterrupt):
        adapt(model.path, source, target, tmp_path / "auto", method="auto", train_layers=2, seed=0)
    assert {entry["dir"] for entry in resume.list_checkpoints()} == before
    assert not (tmp_path / "auto").exists() and list(tmp_path.iterdir()) == []


def test_the_source_free_recipe_runs_end_to_end_at_a_tiny_size(domains, tmp_path):
    """models/digits-source-free.yaml, every stage, on the generated domains with tiny models: the field
    stages (shot, distill, export) record that they read no source image and no label."""
    import json

    tiny = ", ".join(f"{key}: {value}" for key, value in TINY.items() if key != "seed")
    overrides = [
        f"data.source={{path: {domains[0]}}}",
        f"data.target={{path: {domains[1]}}}",
        f"stages.finetune={{data: source, {tiny}}}",
        "source_model.epochs=2",
        *(f"shot.{key}={value}" for key, value in SHOT.items() if key != "seed"),
        "distill.student=cnn_tiny",
        "distill.student_img_size=16",
        "distill.epochs=4",
    ]
    run_dir = run_shipped_recipe("digits-source-free", tmp_path / "run", overrides)
    shot = json.loads((run_dir / "shot" / "metrics.json").read_text())
    assert shot["source_free"] and shot["source_images_used"] == 0 and not shot["target_labels_used"]
    distilled = json.loads((run_dir / "distill" / "metrics.json").read_text())
    assert distilled["labels_read"] is False and distilled["splits"]["unlabelled"] == 48
    assert json.loads((run_dir / "distill" / "manifest.json").read_text())["dataset"]["labels_used"] is False
    assert (run_dir / "export_tflite" / "model.tflite").is_file()
    assert (run_dir / "check_target" / "check.json").is_file()
