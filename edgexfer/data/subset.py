"""Seeded, stratified subsets of labelled samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def stratified_subset(samples: Sequence[Any], count: int, seed: int = 0) -> list[Any]:
    """Up to ``count`` samples (objects with ``.label`` and ``.path``), classes in proportion:
    round-robin over seeded per-class shuffles; sorted by path."""
    if len(samples) <= count:
        return sorted(samples, key=lambda s: str(s.path))
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Any]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    queues = [[members[i] for i in rng.permutation(len(members))] for _, members in sorted(by_class.items())]
    chosen: list[Any] = []
    depth = 0
    while len(chosen) < count:
        for queue in queues:
            if depth < len(queue) and len(chosen) < count:
                chosen.append(queue[depth])
        depth += 1
    return sorted(chosen, key=lambda s: str(s.path))
