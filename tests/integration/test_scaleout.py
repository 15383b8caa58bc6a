"""Multi-worker training on localhost and training that resumes after an interruption."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgexfer import api
from edgexfer.artifact import Artifact
from edgexfer.compress import api as capi
from edgexfer.train import common
from edgexfer.train.resume import checkpoint_dir, list_checkpoints, remove_checkpoints
from kit import TINY_FINETUNE, make_color_folder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TINY = {**TINY_FINETUNE, "fine_tune_epochs": 4}
STUDENT = dict(student="cnn_tiny", epochs=12, batch_size=16, learning_rate=0.01, early_stopping_patience=0, seed=1)


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-').replace('early-stopping-patience', 'early-stopping')}", str(value)]
    return flags


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("scale") / "data", per_class=30, size=20)


def _two_workers(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``tools/launch_local.py 2 -- COMMAND`` with a private TMPDIR (to see what workers leave there)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "launch_local.py"),
            "2",
            "--logs",
            str(tmp_path / "logs"),
            "--",
            sys.executable,
            "-m",
            "edgexfer",
            *command,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )


def _assert_clean(tmp_path: Path, out: Path) -> None:
    """Only the artifact is left: no temporary artifact siblings, worker files or checkpoints."""
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert not any((tmp_path / "scratch").iterdir())
    assert not checkpoint_dir(out).exists()


@pytest.mark.slow
def test_two_workers_on_localhost_train_like_one_process(colors, tmp_path):
    """finetune and distill as 2 workers (MultiWorkerMirroredStrategy over TF_CONFIG): each worker
    trains on its half, the chief writes the artifact, accuracy matches one process's."""
    single = api.finetune(colors, tmp_path / "single" / "ft", **TINY)
    out = tmp_path / "two" / "ft"
    result = _two_workers(
        ["finetune", str(colors), "--out", str(out), *_flags(TINY), "--strategy", "multi-worker"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:] + (tmp_path / "logs" / "worker-1.log").read_text()[-2000:]
    two = Artifact(out)
    dist = two.metrics["distributed"]
    train = single.metrics["splits"]["train"]
    assert two.manifest.extra["workers"] == 2 and dist["workers"] == 2
    assert dist["worker_images"] == [train // 2, train // 2] and dist["left_out_images"] == train % 2
    assert dist["global_batch"] == 16 and dist["per_worker_batch"] == 8
    assert dist["allreduce_bytes_per_step"]["phase2"] > dist["allreduce_bytes_per_step"]["phase1"] > 0
    assert two.metrics["test_accuracy"] >= 0.8
    assert abs(two.metrics["test_accuracy"] - single.metrics["test_accuracy"]) <= 0.15
    worker_log = " ".join((tmp_path / "logs" / "worker-1.log").read_text().split())  # rich wraps lines
    assert "the chief (worker 0) writes the artifact" in worker_log
    _assert_clean(tmp_path, out)

    d_single = capi.distill(single.path, colors, tmp_path / "single" / "d", **STUDENT)
    d_out = tmp_path / "two-d" / "d"
    result = _two_workers(
        ["distill", str(single.path), str(colors), "--out", str(d_out), *_flags(STUDENT), "--strategy", "multi-worker"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    d_two = Artifact(d_out)
    assert d_two.manifest.extra["workers"] == 2
    assert d_two.metrics["distributed"]["worker_images"] == [train // 2, train // 2]
    assert d_two.metrics["student_accuracy"] >= 0.8
    assert abs(d_two.metrics["student_accuracy"] - d_single.metrics["student_accuracy"]) <= 0.15
    _assert_clean(tmp_path, d_out)


def test_multi_worker_errors_are_one_line(colors, tmp_path):
    env = {
        **os.environ,
        "TF_CONFIG": json.dumps(
            {
                "cluster": {"worker": ["localhost:1", "localhost:2", "localhost:3"]},
                "task": {"type": "worker", "index": 0},
            }
        ),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "finetune",
            str(colors),
            "--out",
            str(tmp_path / "o"),
            *_flags(TINY),
            "--strategy",
            "multi-worker",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "TF_CONFIG"},
    )
    assert result.returncode == 2 and "needs TF_CONFIG" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "adapt",
            str(tmp_path),
            "--source",
            str(colors),
            "--target",
            str(colors),
            "--method",
            "coral",
            "--out",
            str(tmp_path / "a"),
            "--strategy",
            "multi-worker",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "adapt cannot be distributed" in result.stderr
    assert "Traceback" not in result.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "edgexfer", "adapt", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    ).stdout
    assert "adapt cannot be distributed" in " ".join(help_text.split())


@pytest.fixture()
def interrupt_at(monkeypatch):
    """Make the next training run stop like Ctrl-C at the end of epoch ``epoch`` (1-based) of
    ``phase``, before that epoch's checkpoint is written."""
    original = common.rich_progress_callback

    def arm(phase: str, epoch: int):
        def patched(description, epochs, steps, enabled=True):
            callback = original(description, epochs, steps, enabled=False)
            if description.startswith(phase):

                def on_epoch_end(index, logs=None):
                    if index + 1 == epoch:
                        raise KeyboardInterrupt

                callback.on_epoch_end = on_epoch_end
            return callback

        monkeypatch.setattr(common, "rich_progress_callback", patched)

    yield arm
    monkeypatch.setattr(common, "rich_progress_callback", original)


def test_interrupted_finetune_resumes_from_the_last_completed_epoch(colors, tmp_path, interrupt_at):
    out = tmp_path / "ft"
    interrupt_at("phase2", 3)
    with pytest.raises(KeyboardInterrupt):
        api.finetune(colors, out, **TINY)
    assert not out.exists()
    entries = [e for e in list_checkpoints() if e["out"] == str(out.resolve())]
    assert len(entries) == 1 and entries[0]["finished_phases"] == ["phase1"]
    assert entries[0]["progress"]["phase2"] == {"epochs_done": 2, "epochs": 4} and not entries[0]["running"]
    lines: list[str] = []
    interrupt_at("never", 0)
    artifact = api.finetune(colors, out, log=lambda *a: lines.append(" ".join(map(str, a))), **TINY)
    said = "\n".join(lines)
    assert "phase1: finished before the interruption" in said
    assert "phase2: resuming from epoch 3 of 4" in said
    assert artifact.metrics["resumed"] == {
        "phase1": {"skipped": True},
        "phase2": {"from_epoch": 3, "epochs_done_before": 2, "epochs": 4},
    }
    assert len(artifact.metrics["history"]["phase2"]["loss"]) == 2  # only the epochs trained after the resume
    assert artifact.metrics["test_accuracy"] >= 0.8
    assert not checkpoint_dir(out).exists()


def test_a_changed_config_starts_afresh_and_clean_removes_checkpoints(colors, tmp_path, interrupt_at):
    out = tmp_path / "ft"
    interrupt_at("phase 1", 2)  # phase 1 on cached features
    with pytest.raises(KeyboardInterrupt):
        api.finetune(colors, out, **TINY)
    assert checkpoint_dir(out).is_dir()
    lines: list[str] = []
    interrupt_at("phase 1", 1)
    with pytest.raises(KeyboardInterrupt):
        api.finetune(colors, out, log=lambda *a: lines.append(" ".join(map(str, a))), **{**TINY, "epochs": 7})
    said = " ".join(lines)
    assert "is for a different finetune" in said and "config.epochs 6 → 7" in said and "starting afresh" in said
    listing = subprocess.run(
        [sys.executable, "-m", "edgexfer", "clean"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert listing.returncode == 0 and "interrupted" in listing.stdout and "finetune" in listing.stdout
    removed = remove_checkpoints(str(out))
    assert [e["out"] for e in removed] == [str(out.resolve())] and not checkpoint_dir(out).exists()
