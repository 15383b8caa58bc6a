"""``export --gray-input``: the first convolution's colour channels folded, exact on gray images,
and int8 no longer breaks a colour-opponent filter that BatchNorm amplifies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
from edgexfer.errors import ConfigError
from edgexfer.export import export_artifact
from edgexfer.export.gray import fold_first_conv_for_gray
from edgexfer.runtime import load_model, normalize

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

PRE = Preprocessing(input_size=16, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


def opponent_stem_model(keras, seed: int = 0):
    """A gray filter and a colour-opponent one (its RGB weights sum to 0 per tap) whose BatchNorm
    variance is near zero, as after adapting an ImageNet stem to gray images: ×3162 gain."""
    rng = np.random.default_rng(seed)
    inputs = keras.Input((16, 16, 3), name="image")
    conv = keras.layers.Conv2D(2, 3, padding="same", use_bias=False, name="stem")
    bn = keras.layers.BatchNormalization(name="stem_bn")
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(bn(conv(inputs)))))
    taps = rng.uniform(0.2, 1.0, (3, 3))
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[..., :, 0] = 0.1
    kernel[..., 0, 1], kernel[..., 1, 1], kernel[..., 2, 1] = taps, -0.61 * taps, -0.39 * taps
    conv.set_weights([kernel])
    bn.set_weights([np.ones(2), np.zeros(2), np.zeros(2), np.array([1.0, 1e-7])])
    dense.set_weights([np.array([[1.0, -1.0], [3.0, -3.0]]), np.zeros(2)])
    return model


def gray_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 256, (n, 1, 1, 1)) + rng.integers(-20, 20, (n, 16, 16, 1))
    return np.repeat(np.clip(levels, 0, 255), 3, axis=3).astype(np.uint8)


def write_artifact(out: Path, model, preprocessing=PRE) -> Path:
    manifest = Manifest(
        stage="finetune",
        label_names=["dark", "light"],
        preprocessing=preprocessing,
        backbone="tiny",
        weights="random",
        model_file="model.h5",
        seed=0,
    )
    with writing_artifact(out) as writer:
        model.save(writer.file("model.h5"), include_optimizer=False, save_format="h5")
        writer.commit(manifest, {})
    return out


@pytest.fixture(scope="module")
def keras():
    from edgexfer.tf_env import import_tf

    return import_tf()[1]


def test_the_fold_is_exact_on_gray_images_and_changes_colour_ones(keras):
    model, folded = opponent_stem_model(keras), opponent_stem_model(keras)
    info = fold_first_conv_for_gray(folded, PRE)
    assert info == {"layer": "stem", "output_channels": 2, "colour_opponent_channels": 1}
    gray = normalize(gray_images(50, seed=1), PRE)
    np.testing.assert_allclose(folded.predict(gray, verbose=0), model.predict(gray, verbose=0), atol=1e-5)
    colour = normalize(np.random.default_rng(2).integers(0, 256, (50, 16, 16, 3)).astype(np.uint8), PRE)
    assert np.abs(folded.predict(colour, verbose=0) - model.predict(colour, verbose=0)).max() > 0.1


def test_int8_keeps_the_float_model_on_gray_images_once_folded(keras, tmp_path):
    model = opponent_stem_model(keras)
    source = write_artifact(tmp_path / "model", model)
    images = gray_images(200, seed=3)
    reference = model.predict(normalize(images, PRE), verbose=0)
    errors = {}
    for gray in (False, True):
        exported = export_artifact(
            source, tmp_path / f"int8-{gray}", "tflite", "int8", calibration_images=images[:100], gray_input=gray
        )
        probs = load_model(exported.path / "model.tflite").predict_proba(images)
        errors[gray] = float(np.abs(probs - reference).max())
        assert exported.manifest.config.get("gray_input", False) is gray
    assert exported.metrics["gray_input"]["colour_opponent_channels"] == 1
    # unfolded, int8 rounding breaks the opponent filter's cancellation and BatchNorm amplifies the rest
    assert errors[True] * 5 < errors[False], errors


def test_gray_input_refuses_what_it_cannot_fold_exactly(keras, tmp_path):
    per_channel = Preprocessing(input_size=16, mean=(124.0, 116.0, 104.0), std=(58.0, 57.0, 57.0))
    with pytest.raises(ConfigError, match="same normalisation on every colour channel"):
        fold_first_conv_for_gray(opponent_stem_model(keras), per_channel)
    inputs = keras.Input((16, 16, 3), name="image")
    dense_first = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten(name="flat")(inputs)))
    with pytest.raises(ConfigError, match=r"goes to flat \(Flatten\): drop --gray-input"):
        fold_first_conv_for_gray(dense_first, PRE)
    source = write_artifact(tmp_path / "model", opponent_stem_model(keras))
    with pytest.raises(ConfigError, match="quantization-aware"):
        export_artifact(source, tmp_path / "out", "tflite", "int8", is_qat=True, gray_input=True)
    assert not (tmp_path / "out").exists()
