"""Multiply-accumulates of one batch-1 inference, counted on the Keras model or the TFLite graph.

Only the layers that hold weights are counted (convolution, depthwise convolution, dense):
``kernel size × output positions``. Element-wise ops, pooling, BatchNorm and activations
add well under 1 % on the networks edgexfer builds and are left out, as the papers that
quote MACs for MobileNet and EfficientNet do. A pruned kernel still counts in full: dense
runtimes (LiteRT, onnxruntime) multiply its zeros too.

``keras_macs`` needs the loaded model (TensorFlow); ``tflite_macs`` reads the flatbuffer with
LiteRT only; ``onnx_macs`` reads an ONNX file with the ``onnx`` package (shape inference). All
count the same graph the same way, which a test checks. ``backbone_macs`` counts a registered
backbone at an input size (built once per name, size and width, then cached).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_WEIGHT_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def keras_macs(model) -> int:
    """MACs of one image through ``model`` (tf_keras; QAT and pruning wrappers are looked through)."""
    total = 0
    for layer in _flat_layers(model):
        inner = _unwrap(layer)
        kind = type(inner).__name__
        if kind not in _WEIGHT_LAYERS:
            continue
        output_shape = _output_shape(layer)
        if output_shape is None:
            continue
        positions = int(np.prod([d for d in output_shape[1:-1] if d]))  # H·W for conv, 1 for dense
        if kind == "DepthwiseConv2D":
            total += positions * int(np.prod(inner.depthwise_kernel.shape))
        else:
            total += positions * int(np.prod(inner.kernel.shape))
    return int(total)


def tflite_macs(path: str | os.PathLike[str]) -> int:
    """MACs of one batch-1 inference of a ``.tflite`` file, from its op graph (no TensorFlow)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()}
    total = 0
    for op in interpreter._get_ops_details():  # noqa: SLF001 — LiteRT's only view of the op graph
        if op["op_name"] not in _WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        weight, output = shapes.get(int(op["inputs"][1])), shapes.get(int(op["outputs"][0]))
        if not weight or not output:
            continue
        # CONV_2D weight [out, kh, kw, in], DEPTHWISE [1, kh, kw, out], FULLY_CONNECTED [out, in];
        # each output position multiplies one kernel's worth (FC: every output row of the batch).
        positions = int(np.prod(output[1:-1])) if op["op_name"] != "FULLY_CONNECTED" else int(np.prod(output[:-1]))
        total += positions * int(np.prod(weight))
    return int(total)


def onnx_macs(path: str | os.PathLike[str]) -> int:
    """MACs of one batch-1 inference of an ``.onnx`` file (float or QDQ int8), from its graph.

    ``Conv`` (NCHW; weight ``[out, in/groups, kh, kw]``) counts ``H·W × weight size``;
    ``Gemm``/``MatMul`` with a 2-D weight count ``rows × weight size``; unknown (batch) dims
    count as 1. Shapes come from ``onnx.shape_inference``.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    for info in (*graph.value_info, *graph.input, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes.setdefault(info.name, tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims))
    total = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight, output = shapes.get(node.input[1]), shapes.get(node.output[0])
        if not weight or not output:
            continue
        if node.op_type == "Conv":
            total += int(np.prod(output[2:])) * int(np.prod(weight))
        elif len(weight) == 2:
            total += int(np.prod(output[:-1])) * int(np.prod(weight))
    return int(total)


def model_file_macs(path: str | os.PathLike[str]) -> int | None:
    """MACs of a model file where they can be counted without TensorFlow (``.tflite``, ``.onnx``
    where the ``onnx`` package is installed), else ``None``."""
    counter = {".tflite": tflite_macs, ".onnx": onnx_macs}.get(os.path.splitext(str(path))[1].lower())
    if counter is not None and os.path.isfile(path):
        try:
            return counter(path)
        except Exception:  # noqa: BLE001 - a file the runtime cannot read has no count; the report says "—"
            return None
    return None


def backbone_macs(name: str, input_size: int | None = None, width: float | None = None) -> int:
    """MACs of a registered backbone (headless) at ``input_size`` (its default if ``None``).

    Built once with random weights and counted; the count is cached in ``cache_dir()/macs.json``
    (a backbone's graph depends only on its name, size and width)."""
    import json

    from edgexfer.backbones.registry import create_backbone, get_backbone
    from edgexfer.tempfiles import tmp_file_name
    from edgexfer.tf_env import cache_dir

    spec = get_backbone(name)
    size = input_size or spec.default_input_size
    width = spec.default_width if width is None else width
    spec.check_options(size, width)
    path = cache_dir() / "macs.json"
    try:
        counts = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        counts = {}  # a damaged cache is rebuilt
    key = f"{name}@{size}px@w{width}"
    if key not in counts:
        counts[key] = keras_macs(create_backbone(name, size, weights="none", width=width))
        tmp = path.with_name(tmp_file_name(path.name))
        tmp.write_text(json.dumps(counts, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return int(counts[key])


def _flat_layers(model) -> list[Any]:
    layers = []
    for layer in model.layers:
        if hasattr(layer, "layers") and not _is_wrapper(layer):
            layers.extend(_flat_layers(layer))  # a model used as a layer
        else:
            layers.append(layer)
    return layers


def _is_wrapper(layer) -> bool:
    return hasattr(layer, "layer") and type(layer).__name__ in (
        "QuantizeWrapper",
        "QuantizeWrapperV2",
        "PruneLowMagnitude",
    )


def _unwrap(layer):
    while _is_wrapper(layer):
        layer = layer.layer
    return layer


def _output_shape(layer) -> tuple | None:
    try:
        shape = layer.output_shape
    except (AttributeError, RuntimeError):
        return None
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape) if shape is not None else None
