"""Seeded, stratified subsets of labelled samples: the one place every stage draws them from.

Two draws, kept apart on purpose: each is what its callers have always drawn, and a run
recorded in a manifest must select the same images when it is reproduced.

- ``subset_indices`` / ``limit_samples``: scikit-learn's stratified split (a seeded random
  pick where stratifying is impossible); the training subsets (``max_train_images``), the
  bundled datasets' ``limit`` and the int8 calibration images.
- ``stratified_subset``: round-robin over seeded per-class shuffles, so even a tiny subset
  holds every class; the images ``check`` and ``export`` score or calibrate on.

And one unstratified draw, ``random_subset`` (a seeded uniform pick, kept in order): ``adapt``'s
``max_source_images``/``max_target_images`` (target images may have no labels to stratify on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def subset_indices(labels: Sequence[int], limit: int, seed: int) -> np.ndarray:
    """Indices of a seeded subset of ``limit`` of the ``len(labels)`` items, classes in
    proportion (scikit-learn's stratified split, in its order); a seeded random pick, sorted,
    where there are fewer picks than classes."""
    from sklearn.model_selection import train_test_split

    count = len(labels)
    if limit >= count:
        return np.arange(count)
    try:
        kept, _ = train_test_split(np.arange(count), train_size=limit, stratify=np.asarray(labels), random_state=seed)
    except ValueError:  # fewer picks than classes
        kept = random_indices(count, limit, seed)
    return kept


def random_indices(count: int, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded uniform pick of ``limit`` of ``count`` items (no stratifying)."""
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit])


def random_subset(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """At most ``limit`` of ``items`` by ``random_indices``, in their order; all of them when
    ``limit`` is ``None`` or not below their number."""
    items = list(items)
    if not limit or len(items) <= limit:
        return items
    return [items[i] for i in random_indices(len(items), limit, seed)]


def limit_samples(samples: Sequence[Any], limit: int | None, seed: int, *, sort_by_path: bool = True) -> list[Any]:
    """At most ``limit`` samples (objects with ``.label`` and ``.path``) by ``subset_indices``,
    sorted by path (``sort_by_path=False``: in scikit-learn's order, the order ``finetune`` has
    always trained in); all of them when ``limit`` is ``None`` or not below their number."""
    samples = list(samples)
    if not limit or len(samples) <= limit:
        return samples
    chosen = [samples[i] for i in subset_indices([s.label for s in samples], limit, seed)]
    return sorted(chosen, key=lambda s: str(s.path)) if sort_by_path else chosen


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
