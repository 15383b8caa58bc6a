"""Seeds derived from a stage's seed, the guard around once-per-machine work, and the seed spread."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from edgexfer.demo.seeds import headline_figures, seed_overrides, seed_run_dir, spread
from edgexfer.seeding import derive_seed, preserved_random_state


def test_derived_seeds_depend_only_on_seed_and_purpose():
    assert derive_seed(0, "finetune", "head") == derive_seed(0, "finetune", "head")
    assert (
        len(
            {
                derive_seed(0, "finetune", "head"),
                derive_seed(1, "finetune", "head"),
                derive_seed(0, "head_dropout"),
                derive_seed(0, "finetune"),
            }
        )
        == 4
    )
    assert 0 <= derive_seed(123456789, "x") < 2**31


def test_preserved_random_state_restores_python_and_numpy_streams():
    random.seed(7)
    np.random.seed(7)
    with preserved_random_state():
        random.random()
        np.random.rand(10)
    first = (random.random(), float(np.random.rand()))
    random.seed(7)
    np.random.seed(7)
    assert first == (random.random(), float(np.random.rand()))


def test_preserved_random_state_restores_even_when_the_block_fails():
    random.seed(3)
    expected = random.Random(3).random()
    with pytest.raises(RuntimeError), preserved_random_state():
        random.random()
        raise RuntimeError("conversion failed")
    assert random.random() == expected


def test_spread_is_mean_and_sample_std_per_figure():
    result = spread({0: {"a": 0.9, "b": 0.5}, 1: {"a": 0.8}, 2: {"a": 0.7, "b": 0.7}})
    assert result["seeds"] == [0, 1, 2]
    assert result["metrics"]["a"] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1), "values": [0.9, 0.8, 0.7]}
    assert result["metrics"]["b"]["values"] == [0.5, 0.7] and result["metrics"]["b"]["std"] == pytest.approx(
        0.141421, 1e-4
    )
    json.dumps(result)  # what seeds.json holds


def test_headline_figures_name_model_and_domain():
    rows = [
        {"model": "teacher adapted", "source_accuracy": 0.98, "target_accuracy": 0.86},
        {"model": "deployed student: tflite int8", "source_accuracy": None, "target_accuracy": 0.9},
    ]
    assert headline_figures(rows) == {
        "teacher adapted · source accuracy": 0.98,
        "teacher adapted · target accuracy": 0.86,
        "deployed student: tflite int8 · target accuracy": 0.9,
    }


def test_seed_overrides_cover_every_seeded_stage_of_the_demo_and_pin_the_split(tmp_path):
    from edgexfer.demo import RECIPE

    assert seed_overrides(RECIPE, 2) == [
        "finetune.seed=2",
        "finetune.split_seed=0",  # every seed is scored on the plain run's held-out images
        "fuse.seed=2",
        "adapt.seed=2",
        "refine.seed=2",
        "distill.seed=2",
        "prune.seed=2",
        "quantize.seed=2",
    ]
    assert seed_run_dir(tmp_path, 0) == tmp_path and seed_run_dir(tmp_path, 2) == tmp_path / "seeds" / "seed-2"


def test_demo_seeds_runs_each_seed_in_its_directory_and_writes_seeds_json(tmp_path, monkeypatch):
    import edgexfer.demo
    import edgexfer.demo.seeds as seeds

    calls = []

    def fake_demo(run_dir, *, full, progress, log, overrides):
        seed = int(overrides[0].split("=")[1]) if overrides else 0
        calls.append((run_dir, overrides))
        return {"headline": [{"model": "student", "source_accuracy": 0.9 + seed / 100, "target_accuracy": None}]}

    monkeypatch.setattr(edgexfer.demo, "run_demo", fake_demo)
    monkeypatch.setattr(seeds, "adapted_int8_on_source", lambda run_dir: None)
    result = seeds.run_demo_seeds(tmp_path, seeds=3, log=lambda *_: None)
    assert [c[0] for c in calls] == [tmp_path, tmp_path / "seeds" / "seed-1", tmp_path / "seeds" / "seed-2"]
    assert calls[0][1] == [] and "distill.seed=2" in calls[2][1]
    written = json.loads((tmp_path / "seeds.json").read_text())
    assert written["seeds"] == [0, 1, 2] and result["file"] == str(tmp_path / "seeds.json")
    figure = written["metrics"]["student · source accuracy"]
    assert figure["values"] == [0.9, 0.91, 0.92] and figure["mean"] == pytest.approx(0.91)
