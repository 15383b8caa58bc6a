"""adapt resumes after an interruption: from the last completed epoch (of a method or of a
pseudo-label round), with the same model as an uninterrupted run, bit for bit."""

import functools
import json

import numpy as np
import pytest

from edgexfer import api
from edgexfer.keras_io import load_keras_model
from edgexfer.train import resume
from edgexfer.train.adapt import adapt
from edgexfer.train.resume import checkpoint_dir, list_checkpoints
from kit import make_color_folder

pytestmark = pytest.mark.integration

TEACHER = dict(
    backbone="cnn_tiny",
    weights="none",
    img_size=16,
    epochs=8,
    fine_tune_epochs=0,
    batch_size=16,
    learning_rate=0.05,
    early_stopping_patience=0,
    seed=1,
)
make_domain = functools.partial(make_color_folder, per_class=16, size=16, prefix_names=True)

# DANN: per-domain BatchNorm statistics re-estimated every epoch, a domain classifier, the
# reversal ramp. pseudo-label after coral: two training units, then rounds with their labels.
DANN = dict(method="dann", epochs=3, train_layers=2, batch_size=16, seed=3)
PSEUDO = dict(method="pseudo-label", after="coral", epochs=2, rounds=2, threshold=0.4, train_layers=2, seed=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt-resume")
    source = make_domain(root / "source", per_class=24)
    target = make_domain(root / "target", seed=1, contrast=0.5, shift=(40, 10, -30), labelled=False)
    teacher = api.finetune(source, root / "teacher", **TEACHER)
    return teacher.path, source, target


@pytest.fixture()
def interrupt_after(monkeypatch):
    """The next adapt stops like Ctrl-C right after the checkpoint of epoch ``epoch`` of ``phase``."""

    def arm(phase: str, epoch: int):
        original = resume.LoopCheckpoint.save

        def save(self, state, arrays, *, phase: str, epochs_done: int, epochs: int):
            original(self, state, arrays, phase=phase, epochs_done=epochs_done, epochs=epochs)
            if (phase, epochs_done) == armed:
                raise KeyboardInterrupt

        armed = (phase, epoch)
        monkeypatch.setattr(resume.LoopCheckpoint, "save", save)

    return arm


def _weights(artifact) -> list[np.ndarray]:
    return load_keras_model(artifact.path / "model.h5").get_weights()


def _identical(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


def _run(setup, out, lines=None, **options):
    teacher, source, target = setup
    log = (lambda *a: lines.append(" ".join(map(str, a)))) if lines is not None else None
    return adapt(teacher, source, target, out, log=log, **options)


@pytest.mark.parametrize(
    "options, phase, epoch, resumed_at, skipped",
    [
        (DANN, "dann", 1, "dann: resuming from epoch 2 of 3", []),
        (PSEUDO, "pseudo-label round 2", 1, "pseudo-label round 2: resuming from epoch 2 of 2", ["coral", "round 1"]),
    ],
    ids=["dann", "pseudo-label"],
)
def test_interrupted_adapt_resumes_and_matches_an_uninterrupted_run(
    setup, tmp_path, interrupt_after, options, phase, epoch, resumed_at, skipped
):
    reference = _run(setup, tmp_path / "reference", **options)
    out = tmp_path / "adapted"
    interrupt_after(phase, epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, out, **options)
    assert not out.exists()
    [entry] = [e for e in list_checkpoints() if e["out"] == str(out.resolve())]
    assert entry["stage"] == "adapt" and entry["progress"][phase] == {"epochs_done": epoch, "epochs": options["epochs"]}
    assert not entry["running"]

    interrupt_after("never", 0)
    lines: list[str] = []
    resumed = _run(setup, out, lines, **options)
    said = "\n".join(lines)
    assert resumed_at in said
    for name in skipped:
        assert f"{name}: finished before the interruption" in said
    assert _identical(resumed, reference)  # every weight and statistic, bit for bit
    assert resumed.metrics["history"] == reference.metrics["history"]
    assert resumed.metrics["output"] == reference.metrics["output"]
    assert resumed.metrics["resumed"][phase] == {
        "from_epoch": epoch + 1,
        "epochs_done_before": epoch,
        "epochs": options["epochs"],
    }
    assert "resumed" in reference.metrics and reference.metrics["resumed"] == {}
    assert (
        0
        < reference.metrics["timings_seconds"]["checkpoint_seconds"]
        < reference.metrics["timings_seconds"]["adapt_seconds"]
    )
    assert not checkpoint_dir(out).exists() and not checkpoint_dir(tmp_path / "reference").exists()


@pytest.fixture()
def die_while_writing(monkeypatch):
    """The next adapt dies while writing its ``n``-th checkpoint: half a file is on disk
    (``None``: writes work again)."""
    original = np.savez

    def arm(n: int | None):
        writes = []
        if n is None:
            monkeypatch.setattr(resume.np, "savez", original)
            return

        def dying_savez(handle, *args, **kwargs):
            writes.append(1)
            if len(writes) == n:
                handle.write(b"PK\x03\x04 half a zip")
                raise KeyboardInterrupt
            return original(handle, *args, **kwargs)

        monkeypatch.setattr(resume.np, "savez", dying_savez)

    return arm  # monkeypatch puts numpy's savez back after the test


CORAL = dict(method="coral", epochs=3, train_layers=2, batch_size=16, seed=2)


def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one(setup, tmp_path, die_while_writing):
    reference = _run(setup, tmp_path / "reference", **CORAL)
    out = tmp_path / "adapted"
    die_while_writing(2)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, out, **CORAL)
    die_while_writing(None)
    assert list(checkpoint_dir(out).glob(".loop.*.npz"))  # the cut-short write
    lines: list[str] = []
    resumed = _run(setup, out, lines, **CORAL)
    assert "coral: resuming from epoch 2 of 3" in "\n".join(lines)
    assert _identical(resumed, reference)
    assert not checkpoint_dir(out).exists()


def test_a_changed_config_or_a_damaged_checkpoint_starts_afresh(setup, tmp_path, die_while_writing):
    options = {**CORAL, "epochs": 2}
    out = tmp_path / "adapted"
    die_while_writing(2)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, out, **options)
    die_while_writing(None)
    lines: list[str] = []
    changed = _run(setup, out, lines, **{**options, "learning_rate": 0.002})
    said = " ".join(lines)
    assert "is for a different adapt" in said and "config.learning_rate 0.001 → 0.002" in said
    assert "starting afresh" in said and "resuming" not in said
    assert changed.metrics["resumed"] == {} and not checkpoint_dir(out).exists()

    damaged = tmp_path / "damaged"
    die_while_writing(2)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, damaged, **options)
    die_while_writing(None)
    (checkpoint_dir(damaged) / "loop.npz").write_bytes(b"not a zip")
    lines.clear()
    again = _run(setup, damaged, lines, **options)
    said = " ".join(lines)
    assert "cannot be read" in said and "starting afresh" in said and "resuming" not in said
    assert again.metrics["resumed"] == {} and len(again.metrics["history"]["coral"]["loss"]) == 2


PIPELINE = """\
name: resume
data:
  source: {path: SOURCE}
  target: {path: TARGET}
stages:
  finetune:
    data: source
    backbone: cnn_tiny
    weights: none
    img_size: 16
    epochs: 8
    fine_tune_epochs: 0
    learning_rate: 0.05
  adapt:
    parent: finetune
    source: source
    target: target
    method: coral
    epochs: 3
    train_layers: 2
    batch_size: 16
"""


def test_a_pipeline_interrupted_inside_adapt_resumes_mid_adapt(setup, tmp_path, interrupt_after):
    from edgexfer.pipeline import run_pipeline

    _, source, target = setup
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.replace("SOURCE", str(source)).replace("TARGET", str(target)))
    run_dir = tmp_path / "run"
    interrupt_after("coral", 2)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(path, run_dir=run_dir, report=False, log=lambda *_: None)
    assert (run_dir / "finetune" / "model.h5").is_file() and not (run_dir / "adapt").exists()
    assert checkpoint_dir(run_dir / "adapt").is_dir()

    interrupt_after("never", 0)
    lines: list[str] = []
    result = run_pipeline(path, run_dir=run_dir, report=False, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert [result["stages"][s]["status"] for s in ("finetune", "adapt")] == ["skipped", "done"]
    assert "coral: resuming from epoch 3 of 3" in "\n".join(lines)
    adapted = json.loads((run_dir / "adapt" / "metrics.json").read_text())
    assert adapted["resumed"] == {"coral": {"from_epoch": 3, "epochs_done_before": 2, "epochs": 3}}
    assert len(adapted["history"]["coral"]["loss"]) == 3  # the epochs before the interruption are kept
    assert not checkpoint_dir(run_dir / "adapt").exists()


def test_a_bad_input_leaves_no_checkpoint(setup, tmp_path):
    from edgexfer.errors import EdgexferError

    teacher, source, _ = setup
    target = make_domain(tmp_path / "target", per_class=2, labelled=False)
    (target / "broken.png").write_bytes(b"not a png")  # found by the scan, fails when decoded
    with pytest.raises(EdgexferError, match="broken.png"):
        adapt(teacher, source, target, tmp_path / "adapted", method="coral", epochs=1, strict=True)
    assert not checkpoint_dir(tmp_path / "adapted").exists() and not (tmp_path / "adapted").exists()
