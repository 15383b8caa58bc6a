"""Parity numbers and the gate, on hand-made probabilities (no TensorFlow, no runtime)."""

from __future__ import annotations

import numpy as np
import pytest

from edgexfer.errors import ConfigError
from edgexfer.evaluate.parity import check_thresholds, gate_failures, parity_metrics

NAMES = ["cat", "dog", "owl"]


def _probs(rows):
    return np.asarray(rows, dtype=np.float32)


def test_identical_probabilities_agree_fully():
    ref = _probs([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 2, 1])
    result = parity_metrics(ref, ref.copy(), labels, NAMES)
    assert result["agreement"] == 1.0 and result["disagreements"] == 0
    assert result["max_abs_diff"] == 0.0 and result["mean_abs_diff"] == 0.0
    assert result["accuracy"] == result["reference_accuracy"] == 0.75
    assert result["accuracy_drop"] == 0.0
    assert result["per_class"]["dog"] == {"n": 2, "agreement": 1.0, "accuracy": 0.5, "reference_accuracy": 0.5}
    assert gate_failures(result, min_agreement=1.0, max_acc_drop=0.0) == []


def test_disagreement_and_differences_are_measured():
    ref = _probs([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]])
    cand = _probs([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.6, 0.1]])
    labels = np.array([0, 1, 2, 0])
    result = parity_metrics(ref, cand, labels, NAMES)
    assert result["agreement"] == 0.75 and result["disagreements"] == 1
    assert result["max_abs_diff"] == pytest.approx(0.3, abs=1e-6)
    assert result["mean_abs_diff"] == pytest.approx((0.1 + 0.1 + 0.3 + 0.3) / 12, abs=1e-6)
    assert result["reference_accuracy"] == 1.0 and result["accuracy"] == 0.75
    assert result["accuracy_drop"] == pytest.approx(0.25)
    assert result["per_class"]["cat"]["agreement"] == 0.5 and result["per_class"]["cat"]["n"] == 2
    assert result["per_class"]["owl"]["agreement"] == 1.0
    failures = gate_failures(result, min_agreement=0.9, max_acc_drop=0.1)
    assert failures == ["agreement 0.7500 < --min-agreement 0.9", "accuracy drop +0.2500 > --max-acc-drop 0.1"]
    assert gate_failures(result, min_agreement=0.75, max_acc_drop=0.25) == []  # thresholds are inclusive
    assert gate_failures(result) == []  # no thresholds, no gate


def test_impossible_threshold_fails_and_bad_thresholds_are_config_errors():
    ref = _probs([[0.9, 0.05, 0.05]])
    result = parity_metrics(ref, ref, np.array([0]), NAMES)
    assert gate_failures(result, min_agreement=1.01) == ["agreement 1.0000 < --min-agreement 1.01"]
    check_thresholds(1.0, -0.5)  # allowed: an impossible drop is the pipeline's way to test its failure path
    with pytest.raises(ConfigError, match="--min-agreement must be a finite number"):
        check_thresholds(float("nan"), None)
    for agreement in (-0.1, 1.01, 1.5):  # a fraction of the images: 1.5 is a typo, not a gate
        with pytest.raises(ConfigError, match="outside 0..1"):
            check_thresholds(agreement, None)
    with pytest.raises(ConfigError, match="outside -1..1"):
        check_thresholds(None, 2.0)
    with pytest.raises(ConfigError, match="--max-acc-drop must be a finite number"):
        check_thresholds(None, float("inf"))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot be compared"):
        parity_metrics(np.zeros((2, 3)), np.zeros((2, 2)), np.array([0, 1]), NAMES)
    with pytest.raises(ConfigError, match="expected N×3"):
        parity_metrics(np.zeros((2, 2)), np.zeros((2, 2)), np.array([0, 1]), NAMES)
