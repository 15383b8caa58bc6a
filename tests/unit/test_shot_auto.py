"""SHOT's centroid pseudo-labels and the auto method's choice, on numbers (no TensorFlow)."""

import numpy as np
import pytest

from edgexfer.train.auto import CANDIDATES, choose_method
from edgexfer.train.shot import centroid_pseudo_labels, prediction_summary


def _one_hot(labels, k, confidence):
    probs = np.full((len(labels), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def test_centroid_pseudo_labels_fix_predictions_that_contradict_the_feature_clusters():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 40)
    centres = np.eye(3) * 5
    features = centres[truth] + rng.normal(0, 0.3, (120, 3))
    predicted = truth.copy()
    wrong = rng.choice(120, 30, replace=False)  # a quarter of the predictions are wrong
    predicted[wrong] = (truth[wrong] + 1) % 3
    labels = centroid_pseudo_labels(features, _one_hot(predicted, 3, 0.6))
    assert (predicted == truth).mean() == 0.75
    assert (labels == truth).mean() == 1.0


def test_centroid_pseudo_labels_only_use_classes_the_model_predicts():
    features = np.random.default_rng(1).normal(size=(20, 4))
    probs = _one_hot(np.array([0, 2] * 10), 4, 0.9)
    assert set(centroid_pseudo_labels(features, probs)) <= {0, 2}


def test_prediction_summary_is_high_for_confident_balanced_and_low_for_collapsed():
    balanced = prediction_summary(_one_hot(np.arange(100) % 10, 10, 0.95))
    collapsed = prediction_summary(_one_hot(np.zeros(100, int), 10, 0.95))
    assert balanced["target_predicted_class_entropy"] == pytest.approx(1.0)
    assert collapsed["target_predicted_class_entropy"] == 0.0
    assert balanced["target_information_maximisation"] > 0.7 > collapsed["target_information_maximisation"]


def test_auto_picks_the_candidate_closest_to_the_consensus_and_says_why():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 10, 300)

    def noisy(error_rate, seed):
        r = np.random.default_rng(seed)
        labels = np.where(r.random(300) < error_rate, r.integers(0, 10, 300), truth)
        return _one_hot(labels, 10, 0.8)

    predictions = {
        "adabn": noisy(0.5, 1),
        "coral": noisy(0.2, 2),
        "dann": noisy(0.35, 3),
        "pseudo-label": noisy(0.15, 4),
        "shot": noisy(0.05, 5),
    }
    choice = choose_method(predictions)
    assert choice["picked"] == "shot"
    assert set(choice["scores"]) == set(CANDIDATES)
    assert choice["reason"].startswith("shot: its target predictions agree with the consensus")
    # a collapsed candidate is confident but disagrees with the others: never picked
    predictions["shot"] = _one_hot(np.zeros(300, int), 10, 0.99)
    assert choose_method(predictions)["picked"] == "pseudo-label"
    with pytest.raises(ValueError):
        choose_method({})
