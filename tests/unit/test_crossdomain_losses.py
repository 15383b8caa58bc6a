"""The CORAL loss, the gradient-reversal layer and DANN's coefficient ramp."""

import numpy as np
import pytest

from edgexfer.train.adapt_losses import coral_loss, dann_coefficient, gradient_reversal


def test_coral_is_zero_for_identical_covariances():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(64, 5)).astype("float32")
    # A shifted, row-permuted copy has the same covariance: CORAL ignores the mean.
    target = source[rng.permutation(64)] + 3.0
    assert float(coral_loss(source, target)) == pytest.approx(0.0, abs=1e-6)


def test_coral_matches_its_definition_on_known_matrices():
    source = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype="float32")  # cov = diag(2/3, 2/3)
    target = np.array([[2, 0], [-2, 0], [0, 0], [0, 0]], dtype="float32")  # cov = diag(8/3, 0)
    expected = ((2 / 3 - 8 / 3) ** 2 + (2 / 3) ** 2) / (4 * 2**2)
    assert float(coral_loss(source, target)) == pytest.approx(expected, rel=1e-5)
    numpy_value = np.sum((np.cov(source.T) - np.cov(target.T)) ** 2) / 16
    assert float(coral_loss(source, target)) == pytest.approx(numpy_value, rel=1e-5)


def test_gradient_reversal_is_identity_forward_and_flips_gradients():
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    x = tf.Variable([[1.0, -2.0, 3.0]])
    with tf.GradientTape(persistent=True) as tape:
        plain = tf.reduce_sum(3.0 * x)
        reversed_ = tf.reduce_sum(3.0 * gradient_reversal(x, 0.5))
    np.testing.assert_allclose(gradient_reversal(x, 0.5).numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(plain, x).numpy(), [[3.0, 3.0, 3.0]])
    np.testing.assert_allclose(tape.gradient(reversed_, x).numpy(), [[-1.5, -1.5, -1.5]])


def test_dann_coefficient_ramps_from_zero_to_the_weight():
    assert dann_coefficient(0.0, 0.3) == 0.0
    assert dann_coefficient(1.0, 0.3) == pytest.approx(0.3, rel=1e-3)
    assert 0 < dann_coefficient(0.2, 1.0) < dann_coefficient(0.5, 1.0) < 1.0
