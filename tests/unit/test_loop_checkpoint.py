"""The checkpoint of a hand-written training loop: its file, its restore checks, its seeded draws (no TensorFlow)."""

import numpy as np
import pytest

from edgexfer.train import resume


class Variable:
    """Just what the helpers read of a TF variable."""

    def __init__(self, name, value):
        self.name, self.value = name, np.asarray(value, np.float32)

    @property
    def shape(self):
        return self.value.shape

    def numpy(self):
        return self.value

    def assign(self, value):
        self.value = np.array(value, np.float32)


def _stage(tmp_path, lines, **fingerprint):
    return resume.StageCheckpoint(
        "mystage", tmp_path / "out", {"config": fingerprint}, log=lambda *a: lines.append(" ".join(map(str, a)))
    )


def test_a_saved_epoch_is_loaded_back_whole_and_listed_by_clean(tmp_path):
    lines: list[str] = []
    loop = resume.LoopCheckpoint(_stage(tmp_path, lines, lr=0.1))
    assert loop.load() is None
    weights = [Variable("w", [[1.0, 2.0]]), Variable("b", [3.0])]
    loop.save(
        {"epochs_done": 2, "history": [0.5, 0.25]},
        {**resume.variable_arrays("weights", weights), "labels": np.array([3, 1])},
        phase="mystage",
        epochs_done=2,
        epochs=5,
    )
    state, arrays = resume.LoopCheckpoint(_stage(tmp_path, lines, lr=0.1)).load()
    assert state == {"epochs_done": 2, "history": [0.5, 0.25]} and arrays["labels"].tolist() == [3, 1]
    fresh = [Variable("w", [[0.0, 0.0]]), Variable("b", [0.0])]
    resume.assign_arrays("weights", fresh, arrays)
    assert fresh[0].value.tolist() == [[1.0, 2.0]] and fresh[1].value.tolist() == [3.0]
    [entry] = [e for e in resume.list_checkpoints() if e["out"] == str((tmp_path / "out").resolve())]
    assert entry["stage"] == "mystage" and entry["progress"] == {"mystage": {"epochs_done": 2, "epochs": 5}}
    assert not list(loop.path.parent.glob(".loop.*"))  # the temporary file was renamed
    resume.remove_checkpoints(str(tmp_path / "out"))


def test_a_cut_short_write_or_a_damaged_file_is_not_resumed_from(tmp_path):
    lines: list[str] = []
    stage = _stage(tmp_path, lines)
    loop = resume.LoopCheckpoint(stage)
    loop.save({"epochs_done": 1}, {"a.0": np.zeros(2)}, phase="mystage", epochs_done=1, epochs=3)
    (loop.path.parent / ".loop.999.npz").write_bytes(b"PK half")  # a write a kill cut short
    state, _ = loop.load()
    assert state == {"epochs_done": 1} and not (loop.path.parent / ".loop.999.npz").exists()
    loop.path.write_bytes(b"not a zip")
    assert loop.load() is None and not loop.path.exists()
    assert "cannot be read" in lines[-1] and "starting afresh" in lines[-1]
    stage.finish()


def test_values_that_do_not_fit_change_nothing():
    arrays = resume.variable_arrays("w", [Variable("a", [1.0]), Variable("b", [2.0, 3.0])])
    target = [Variable("a", [0.0]), Variable("b", [0.0])]  # b has another shape
    with pytest.raises(ValueError, match="do not fit \\(b\\)"):
        resume.assign_arrays("w", target, arrays)
    assert target[0].value.tolist() == [0.0]  # nothing assigned, not even what fitted
    with pytest.raises(ValueError, match="more saved values"):
        resume.assign_arrays("w", [Variable("a", [0.0])], arrays)


def test_an_epochs_draws_depend_on_the_seed_and_position_only():
    first = resume.epoch_rng(3, "adapt", 0, 4).permutation(50)
    resume.epoch_rng(3, "adapt", 0, 3).permutation(50)  # drawing elsewhere changes nothing
    assert np.array_equal(resume.epoch_rng(3, "adapt", 0, 4).permutation(50), first)
    assert not np.array_equal(resume.epoch_rng(3, "adapt", 0, 5).permutation(50), first)
    assert not np.array_equal(resume.epoch_rng(4, "adapt", 0, 4).permutation(50), first)
