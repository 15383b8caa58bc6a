"""The few-label rules that need no model: the keep-source choice of alpha, the per-class pick."""

from pathlib import Path

import pytest

from edgexfer.data import Sample
from edgexfer.data.folder import ImageDataset
from edgexfer.errors import ConfigError, DataError
from edgexfer.train.fewshot import fill_epoch, per_class_split
from edgexfer.train.fuse import choose_keeping_source

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_keep_source_takes_the_best_target_among_alphas_that_keep_the_source():
    target = [0.90, 0.92, 0.88, 0.70, 0.40]
    source = [0.80, 0.90, 0.975, 0.985, 0.99]
    alpha, rule = choose_keeping_source(ALPHAS, target, source, reference=0.99, keep_source=0.02)
    assert alpha == 0.5 and rule["allowed_alphas"] == [0.5, 0.75, 1.0]
    alpha, _ = choose_keeping_source(ALPHAS, target, source, reference=0.99, keep_source=0.5)
    assert alpha == 0.25  # nothing lost that matters: the best target accuracy


def test_keep_source_ties_go_to_the_smallest_alpha_and_none_allowed_is_an_error():
    alpha, _ = choose_keeping_source(ALPHAS, [0.5] * 5, [0.99] * 5, reference=0.99, keep_source=0.0)
    assert alpha == 0.0
    with pytest.raises(ConfigError, match=r"--keep-source 0.01: no alpha keeps source accuracy ≥ 0.9800"):
        choose_keeping_source(ALPHAS, [0.5] * 5, [0.9] * 5, reference=0.99, keep_source=0.01)


def _dataset(counts: dict[str, int], test: int = 2) -> ImageDataset:
    names = sorted(counts)
    train = [Sample(Path(f"/d/train/{n}/{i}.png"), c) for c, n in enumerate(names) for i in range(counts[n])]
    held = [Sample(Path(f"/d/test/{n}/{i}.png"), c) for c, n in enumerate(names) for i in range(test)]
    return ImageDataset(Path("/d"), names, {"train": train, "val": [], "test": held}, layout="splits", carved=("val",))


def test_per_class_takes_exactly_n_per_class_nested_across_n():
    dataset = _dataset({"a": 9, "b": 5, "c": 7})
    one, five = (per_class_split(dataset, n, seed=3, where="d") for n in (1, 5))
    assert [s.label for s in five.train].count(0) == 5 and len(five.train) == 15
    assert {s.path for s in one.train} <= {s.path for s in five.train}
    assert five.held_out == dataset.splits["test"] and five.pool == 21


def test_per_class_above_a_class_count_names_the_class():
    with pytest.raises(DataError, match=r"--per-class 6: class 'b' has only 5 .*--per-class 5 or less"):
        per_class_split(_dataset({"a": 9, "b": 5}), 6, seed=0, where="d")


def test_few_images_fill_an_epoch_of_whole_copies():
    assert len(fill_epoch(list(range(10)), 32)) == 130
    assert len(fill_epoch(list(range(500)), 32)) == 500
