"""Weight sparsity of a converted ``.tflite`` model, read with LiteRT (no TensorFlow).

Sparsity claimed by a Keras model only counts if it survives conversion: this reads the
weight tensor (input 1) of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED op and
counts its zeros (an int8 weight is zero exactly when its float value quantizes to the zero
point, which is 0 for TFLite's symmetric weight quantization).
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def tflite_weight_sparsity(content: bytes) -> dict[str, Any]:
    """``{"sparsity": zeros / weights over all weight ops, "layers": {tensor name: {op, params, sparsity}}}``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default delegate, constant tensors stay readable (XNNPACK repacks them).
    interpreter = Interpreter(
        model_content=content, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter.allocate_tensors()
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    layers: dict[str, dict[str, Any]] = {}
    zeros = total = 0
    seen = set()
    ops = interpreter._get_ops_details()  # noqa: SLF001 — LiteRT's only view of the op graph
    produced_by = {int(out): op for op in ops for out in op["outputs"]}
    inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    for op in ops:
        if op["op_name"] not in WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        producer = produced_by.get(index)
        if producer is not None and producer["op_name"] == "DEQUANTIZE":
            index = int(producer["inputs"][0])  # fp16 weights: read the stored constant
            producer = produced_by.get(index)
        if index < 0 or index in seen or index in inputs or producer is not None:
            continue  # computed at run time, not a stored weight
        seen.add(index)
        try:
            values = interpreter.get_tensor(index)
        except ValueError:  # not a constant tensor
            continue
        if values.dtype == np.float16:
            values = values.astype(np.float32)
        n_zero = int(values.size - np.count_nonzero(values))
        layers[names.get(index, str(index))] = {
            "op": op["op_name"],
            "params": int(values.size),
            "dtype": values.dtype.name,
            "sparsity": round(n_zero / values.size, 4) if values.size else 0.0,
        }
        zeros += n_zero
        total += int(values.size)
    return {"sparsity": round(zeros / total, 4) if total else 0.0, "weight_params": total, "layers": layers}


def match_layer(tensor_names: list[str], layer: str) -> str | None:
    """The TFLite weight tensor that belongs to the Keras layer ``layer`` (by name segment)."""
    wanted = {layer, f"quant_{layer}", f"prune_low_magnitude_{layer}"}
    for name in tensor_names:
        for part in name.replace(";", "/").split("/"):
            if part in wanted:
                return name
    return None
