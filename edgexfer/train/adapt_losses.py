"""The losses of unsupervised domain adaptation: Deep CORAL's covariance alignment and DANN's
gradient reversal with its ramped coefficient.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import math


def coral_loss(source, target):
    """Deep CORAL: ``||C_s - C_t||_F^2 / (4 d^2)`` of the feature covariances (unbiased)."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    source = tf.convert_to_tensor(source, tf.float32)
    target = tf.convert_to_tensor(target, tf.float32)
    d = tf.cast(tf.shape(source)[1], tf.float32)

    def covariance(x):
        n = tf.cast(tf.shape(x)[0], tf.float32)
        centred = x - tf.reduce_mean(x, axis=0, keepdims=True)
        return tf.matmul(centred, centred, transpose_a=True) / tf.maximum(n - 1.0, 1.0)

    return tf.reduce_sum(tf.square(covariance(source) - covariance(target))) / (4.0 * d * d)


def gradient_reversal(x, coefficient=1.0):
    """Identity forward; the gradient is multiplied by ``-coefficient`` backward (DANN's GRL)."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    coefficient = tf.convert_to_tensor(coefficient, tf.float32)

    @tf.custom_gradient
    def reverse(value, coef):
        def grad(upstream):
            return -coef * upstream, tf.zeros_like(coef)

        return tf.identity(value), grad

    return reverse(x, coefficient)


def dann_coefficient(progress: float, weight: float) -> float:
    """The paper's ramp ``weight * (2 / (1 + exp(-10 p)) - 1)`` for training progress ``p`` in [0, 1]."""
    return float(weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0))
