"""Parity of an exported model with the Keras model it came from, and the gate on it.

Everything here works on probabilities already computed, so it needs neither TensorFlow nor
a runtime: accuracy of both, top-1 agreement, max and mean absolute difference of the
probabilities, and per-class agreement (over the images of each true class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError

# Float slack when comparing a measured fraction with a threshold (0.9 == 0.9000000001).
_EPS = 1e-9


def parity_metrics(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Compare ``candidate`` probabilities (N×C) with the ``reference`` (Keras) ones.

    ``accuracy_drop`` is reference accuracy minus candidate accuracy (positive: worse).
    ``per_class[name]`` holds, over the images whose true class is ``name``: their count,
    the top-1 agreement and both accuracies.
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if reference.shape != candidate.shape:
        raise ConfigError(
            f"probabilities of shape {candidate.shape} cannot be compared with the reference's {reference.shape}"
        )
    if reference.ndim != 2 or reference.shape[1] != len(class_names) or len(labels) != len(reference):
        raise ConfigError(
            f"expected N×{len(class_names)} probabilities for {len(labels)} labels, got {reference.shape}"
        )
    n = len(labels)
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    agree = ref_top == cand_top
    diff = np.abs(reference - candidate)
    ref_acc = _mean(ref_top == labels)
    cand_acc = _mean(cand_top == labels)
    per_class = {}
    for index, name in enumerate(class_names):
        mask = labels == index
        per_class[name] = {
            "n": int(mask.sum()),
            "agreement": _mean(agree[mask]),
            "accuracy": _mean(cand_top[mask] == index),
            "reference_accuracy": _mean(ref_top[mask] == index),
        }
    return {
        "n": int(n),
        "accuracy": cand_acc,
        "reference_accuracy": ref_acc,
        "accuracy_drop": _round(ref_acc - cand_acc),
        "agreement": _mean(agree),
        "disagreements": int((~agree).sum()),
        "max_abs_diff": float(diff.max()) if n else float("nan"),
        "mean_abs_diff": float(diff.mean()) if n else float("nan"),
        "per_class": per_class,
    }


def gate_failures(
    parity: dict[str, Any], *, min_agreement: float | None = None, max_acc_drop: float | None = None
) -> list[str]:
    """Why a candidate fails the gate (empty when it passes or no threshold is set)."""
    failures = []
    if min_agreement is not None and not parity["agreement"] + _EPS >= min_agreement:
        failures.append(f"agreement {parity['agreement']:.4f} < --min-agreement {min_agreement:g}")
    if max_acc_drop is not None and not parity["accuracy_drop"] - _EPS <= max_acc_drop:
        failures.append(f"accuracy drop {parity['accuracy_drop']:+.4f} > --max-acc-drop {max_acc_drop:g}")
    return failures


def check_thresholds(min_agreement: float | None, max_acc_drop: float | None) -> None:
    """Thresholds must be finite numbers; the agreement a fraction in 0..1 (1.5 is a typo, not a
    gate). An accuracy drop below 0 is allowed: it asks the candidate to beat its parent, and an
    impossible one (-1) is how a pipeline tests its failure path."""
    for name, value in (("--min-agreement", min_agreement), ("--max-acc-drop", max_acc_drop)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise ConfigError(
            f"--min-agreement {min_agreement:g} is outside 0..1; it is a fraction of the images, e.g. 0.99"
        )
    if max_acc_drop is not None and not -1 <= max_acc_drop <= 1:
        raise ConfigError(f"--max-acc-drop {max_acc_drop:g} is outside -1..1; it is a fraction of accuracy, e.g. 0.01")


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if np.size(values) else float("nan")


def _round(value: float) -> float:
    return float(round(value, 12))
