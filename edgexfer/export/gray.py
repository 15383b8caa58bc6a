"""``export --gray-input``: fold the first convolution's three colour channels into one.

On a grayscale domain (R = G = B: X-rays, digits, documents) a backbone pretrained on colour
photos keeps filters whose RGB weights almost cancel (colour-opponent ones). After adaptation
to the gray domain their BatchNorm can scale them by 100× and more (their variance there is
near zero), and int8 rounding of the weights breaks the cancellation: the int8 file loses
points that the float model keeps. Replacing each tap's three weights by their mean changes
nothing on a gray image (``Σ_c w_c·x = (Σ_c w_c / 3)·Σ_c x`` when every channel is ``x``) and
leaves no cancellation to break. A colour image is then read as its channel mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgexfer.artifact import Preprocessing
from edgexfer.errors import ConfigError


def fold_first_conv_for_gray(keras_model, preprocessing: Preprocessing) -> dict[str, Any]:
    """Average the colour channels of the convolution that reads a float model's input, in place;
    ``ConfigError`` when the fold would not be exact (per-channel normalisation, no such
    convolution). Returns what was folded."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    mean, std = np.asarray(preprocessing.mean, float), np.asarray(preprocessing.std, float)
    if np.ptp(mean) or np.ptp(std):
        raise ConfigError(
            "--gray-input needs the same normalisation on every colour channel; this model's "
            f"mean {tuple(mean)} / std {tuple(std)} differ per channel, so a gray pixel is not one "
            "value: drop --gray-input"
        )
    layer = _input_convolution(keras_model, keras)
    kernel, *rest = layer.get_weights()
    folded = np.repeat(kernel.mean(axis=2, keepdims=True), kernel.shape[2], axis=2)
    layer.set_weights([folded, *rest])
    # How far each output channel's weights were from gray-symmetric: |Σ_c w_c| / Σ_c |w_c| per tap,
    # averaged; near 0 marks the colour-opponent filters the fold protects.
    summed = np.abs(kernel.sum(axis=2)).sum(axis=(0, 1))
    magnitude = np.abs(kernel).sum(axis=(0, 1, 2))
    opponent = summed / np.maximum(magnitude, 1e-12)
    return {
        "layer": layer.name,
        "output_channels": int(kernel.shape[-1]),
        "colour_opponent_channels": int((opponent < 0.2).sum()),
    }


def _input_convolution(keras_model, keras):
    model_input = keras_model.inputs[0]
    readers = [
        layer
        for layer in keras_model.layers
        if not isinstance(layer, keras.layers.InputLayer) and _reads(layer, model_input)
    ]
    convolutions = [
        layer
        for layer in readers
        if type(layer) is keras.layers.Conv2D and int(layer.kernel.shape[2]) == int(model_input.shape[-1])
    ]
    if len(readers) != 1 or not convolutions:
        found = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in readers) or "nothing"
        raise ConfigError(
            "--gray-input folds the colour channels of the one Conv2D that reads the image; this model's input "
            f"goes to {found}: drop --gray-input"
        )
    return convolutions[0]


def _reads(layer, tensor) -> bool:
    try:
        inputs = layer.input  # raises for a layer called more than once (shared): not the stem
    except (AttributeError, ValueError):
        return False
    return any(item is tensor for item in (inputs if isinstance(inputs, (list, tuple)) else [inputs]))
