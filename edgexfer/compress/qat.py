"""Quantization-aware training with tfmot: the QAT model (which layers are annotated, the
8-bit or the pruning-preserving scheme), its activation ranges calibrated before training,
its training loop with pruned kernels kept zero, and its weight ranges fixed after.

See ``edgexfer.compress.quantize`` for why each of these is needed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact
from edgexfer.compress import measure, stage_io
from edgexfer.compress.config import QuantizeConfig
from edgexfer.errors import ConfigError
from edgexfer.train import common as train_common
from edgexfer.train import distributed

# A kernel with at least this fraction of zeros counts as pruned (its zeros are kept).
PRUNED_KERNEL_SPARSITY = 0.05
_WEIGHT_CLASSES = ("Conv2D", "DepthwiseConv2D", "Dense", "SeparableConv2D", "Conv2DTranspose")
_FOLDABLE_INTO = ("Conv2D", "DepthwiseConv2D", "Dense")


def _scheme(preserve_sparsity: bool):
    """tfmot's 8-bit scheme, or its prune-preserving variant restricted to the 8-bit registry."""
    from edgexfer.tf_env import import_tf

    import_tf()  # tfmot must find Keras 2 selected before it imports TensorFlow
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry as pp_registry,
    )

    default = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    if not preserve_sparsity:
        return default
    eight_bit = default.get_quantize_registry()

    class _RestrictedRegistry(pp_registry.Default8bitPrunePreserveQuantizeRegistry):
        def supports(self, layer):  # noqa: D401 — overrides a classmethod per instance
            return eight_bit.supports(layer) and pp_registry.PrunePreserveQuantizeRegistry.supports(layer)

    class _Scheme(tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme):
        def get_quantize_registry(self):
            return _RestrictedRegistry()

    return _Scheme()


def build_qat_model(model, preserve_sparsity: bool = False):
    """A QAT copy of ``model`` (the input is untouched) and the per-layer report of what is
    quantized; ``ConfigError`` when tfmot cannot apply QAT at all."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras
    scheme = _scheme(preserve_sparsity)
    registry = scheme.get_quantize_registry()
    base = keras.models.clone_model(model)
    base.set_weights(model.get_weights())

    annotated_names = set()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if not registry.supports(layer) and not _foldable_batchnorm(layer, registry):
            return layer
        annotated_names.add(layer.name)
        return q.quantize_annotate_layer(layer)

    annotated = keras.models.clone_model(base, clone_function=annotate)
    if not annotated_names:
        raise ConfigError(
            "QAT is not possible: tfmot's 8-bit registry supports none of the model's layers; "
            "use --mode ptq (post-training quantization) instead"
        )
    try:
        with q.quantize_scope():
            qat = q.quantize_apply(annotated, scheme)
    except (ValueError, RuntimeError, TypeError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"tfmot cannot apply QAT to this model ({line}); use --mode ptq instead") from None
    return qat, describe_qat(model, qat, annotated_names)


def _foldable_batchnorm(layer, registry) -> bool:
    """A BatchNorm right after a linear Conv2D/DepthwiseConv2D the registry supports.

    The registry has no config for BatchNorm on its own, but tfmot's layout transforms
    (Conv + BatchNorm [+ ReLU]) only match annotated layers: leaving the BatchNorm out puts
    the conv's fake-quant before the BatchNorm, on a tensor the converter then folds away,
    and the int8 TFLite disagrees with the QAT model (Lite0 on mnist-5k: 98.8 % QAT Keras,
    79 % int8 TFLite)."""
    if type(layer).__name__ not in ("BatchNormalization", "SyncBatchNormalization"):
        return False
    inbound = _inbound(layer)
    if len(inbound) != 1 or type(inbound[0]).__name__ not in ("Conv2D", "DepthwiseConv2D"):
        return False
    conv = inbound[0]
    return getattr(conv.activation, "__name__", "") == "linear" and registry.supports(conv)


def range_variables(model) -> list:
    """The activation-range variables of tfmot's moving-average quantizers (not the weights')."""
    found = []
    for variable in model.weights:
        name = variable.name.rsplit("/", 1)[-1]
        if name.endswith(("_min:0", "_max:0")) and "kernel" not in name:
            found.append(variable)
    return found


def calibrate_ranges(qat, calibration: np.ndarray, batch_size: int = 32) -> int:
    """Set the QAT model's activation ranges from calibration images before training.

    tfmot starts every activation range at [-6, 6] and moves it by an EMA with decay 0.999;
    the residual stream of a fine-tuned EfficientNet-Lite reaches ±50, so QAT began at chance
    accuracy and did not recover in two epochs (mnist-5k). One pass in training mode with the
    EMA decay set to i/(i+1) for batch i makes each range the mean of the per-batch ranges,
    measured through the already-quantized layers before it. Every other weight (BatchNorm
    statistics a training-mode pass would move) is restored. Returns the number of ranges set.
    """
    from edgexfer.tf_env import import_tf

    import_tf()  # tfmot must find Keras 2 selected before it imports TensorFlow
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    ranges = range_variables(qat)
    if calibration is None or not len(calibration) or not ranges:
        return 0
    saved = qat.get_weights()
    original = quant_ops.MovingAvgQuantize
    state = {"decay": 0.0}

    def calibrating(*args, **kwargs):
        kwargs["ema_decay"] = state["decay"]
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = calibrating
    try:
        for index, start in enumerate(range(0, len(calibration), batch_size)):
            state["decay"] = index / (index + 1)
            qat(calibration[start : start + batch_size], training=True)
    finally:
        quant_ops.MovingAvgQuantize = original
    values = [variable.numpy() for variable in ranges]
    qat.set_weights(saved)
    for variable, value in zip(ranges, values):
        variable.assign(value)
    return len(ranges)


def fix_degenerate_weight_ranges(qat) -> int:
    """Give every all-zero output channel a non-zero weight range.

    Pruning can zero a whole output channel; tfmot's weight quantizer then records the range
    [0, 0], the converter derives a zero weight scale and therefore a zero bias scale for
    that channel, and the BatchNorm-folded bias of the channel (a constant, not zero) is
    lost: the pruned Lite0's QAT model scored 98.6 % in Keras and 96.0 % as int8 TFLite
    (mnist-5k). The zero weights stay exactly zero under any range, so the channel takes the
    median range of its layer's other channels. Returns the number of channels fixed."""
    pairs: dict[str, dict[str, Any]] = {}
    for variable in qat.weights:
        name = variable.name.rsplit("/", 1)[-1]
        for end in ("kernel_min:0", "kernel_max:0"):
            if name.endswith(end):
                pairs.setdefault(variable.name[: -len(end)], {})[end[-5:-2]] = variable
    fixed = 0
    for pair in pairs.values():
        if set(pair) != {"min", "max"}:
            continue
        low, high = pair["min"].numpy(), pair["max"].numpy()
        width = np.maximum(np.abs(low), np.abs(high))
        flat = np.atleast_1d(width)
        dead = flat < 1e-8
        if not dead.any():
            continue
        fallback = float(np.median(flat[~dead])) if (~dead).any() else 1e-3
        flat = np.where(dead, fallback, flat)
        pair["min"].assign(np.reshape(np.where(np.atleast_1d(dead), -flat, np.atleast_1d(low)), low.shape))
        pair["max"].assign(np.reshape(np.where(np.atleast_1d(dead), flat, np.atleast_1d(high)), high.shape))
        fixed += int(dead.sum())
    return fixed


def describe_qat(model, qat, annotated: set[str]) -> dict[str, Any]:
    """What QAT does to each layer of ``model``: int8 weights and/or activations, folded
    into the layer before it, passthrough, or float (with the reason)."""
    wrappers = {}
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and hasattr(layer, "quantize_config"):
            wrappers[inner.name] = layer
    rows = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        params = int(sum(int(np.prod(w.shape)) for w in layer.weights))
        row = {"layer": layer.name, "class": kind, "params": params}
        wrapper = wrappers.get(layer.name)
        if wrapper is not None:
            config = wrapper.quantize_config
            weights = bool(config.get_weights_and_quantizers(wrapper.layer)) if config else False
            activations = (
                bool(
                    config.get_activations_and_quantizers(wrapper.layer) or config.get_output_quantizers(wrapper.layer)
                )
                if config
                else False
            )
            if weights:
                row["status"] = "int8"
                row["detail"] = "weights + activations" if activations else "weights"
            elif params and kind in _WEIGHT_CLASSES:
                row["status"] = "float"
                row["detail"] = (
                    "weights stay float: tfmot's transforms give it no weight quantizer (a conv followed "
                    "by a separate activation layer)"
                )
            elif activations:
                row["status"] = "int8"
                row["detail"] = "activations"
            else:
                row["status"] = "passthrough"
                row["detail"] = "no fake-quant of its own (fused with the layer before it, or no arithmetic)"
        elif kind == "BatchNormalization" and _follows(layer, _FOLDABLE_INTO):
            row["status"] = "folded"
            row["detail"] = f"quantized with {_inbound(layer)[0].name} (tfmot's conv + BatchNorm pattern)"
        elif layer.name in annotated:
            row["status"] = "int8" if not params else "float"
            row["detail"] = "handled by tfmot's layout transforms"
        else:
            row["status"] = "float"
            row["detail"] = f"tfmot's 8-bit registry has no quantize config for {kind}"
        rows.append(row)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    quantized_weights = [r["layer"] for r in rows if r["status"] == "int8" and "weights" in r["detail"]]
    float_layers = [
        {"layer": r["layer"], "class": r["class"], "reason": r["detail"]} for r in rows if r["status"] == "float"
    ]
    return {
        "layers": rows,
        "counts": counts,
        "quantized_weight_layers": quantized_weights,
        "float_layers": float_layers,
        "whole_model": not float_layers,
        "quantizable": len(quantized_weights),
    }


def _inbound(layer) -> list:
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()

    layers = []
    for node in layer._inbound_nodes:  # noqa: SLF001
        layers.extend(tf.nest.flatten(node.inbound_layers))
    return layers


def _follows(layer, classes) -> bool:
    inbound = _inbound(layer)
    return len(inbound) == 1 and type(inbound[0]).__name__ in classes


def is_pruned(artifact: Artifact, model=None) -> bool:
    """Whether the artifact comes from the prune stage (or its kernels are sparse)."""
    if (artifact.manifest.extra or {}).get("pruning"):
        return True
    if model is None:
        return False
    stats = measure.weight_stats(model)
    return stats["sparsity"] >= 0.2


def train_qat(
    qat_model,
    train,
    val,
    preprocessing,
    config: QuantizeConfig,
    masks,
    timings,
    progress,
    strategy=None,
    extra_callbacks=(),
) -> dict:
    from edgexfer.data import data_errors
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    strategy = strategy or tf.distribute.get_strategy()
    steps = max(1, math.ceil(len(train) / config.batch_size))
    total = steps * config.epochs
    with strategy.scope():
        qat_model.compile(
            optimizer=keras.optimizers.Adam(
                train_common.cosine_with_warmup(config.learning_rate, total, config.warmup_fraction)
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    train_ds, val_ds = stage_io.training_datasets(train, val, preprocessing, config)
    callbacks = [
        train_common.rich_progress_callback("QAT", config.epochs, steps, enabled=progress),
        *train_common.tensorboard_callbacks("qat"),
    ]
    if masks:
        callbacks.append(keep_zeros_callback(masks))
    cluster = distributed.cluster_of(config.strategy, strategy)
    inputs = distributed.fit_inputs(
        strategy, cluster, train_ds, val_ds, steps, max(1, math.ceil(len(val) / config.batch_size))
    )
    with train_common.timed(timings, "qat_seconds"), data_errors():
        history = qat_model.fit(**inputs, epochs=config.epochs, verbose=0, callbacks=callbacks + list(extra_callbacks))
    return {key: [round(float(v), 5) for v in values] for key, values in history.history.items()}


def kernel_masks(model) -> list[tuple[Any, np.ndarray]]:
    """``(kernel variable, 0/1 mask)`` for each kernel that is pruned (mostly zeros)."""
    masks = []
    for _, variable in measure.kernel_variables(model):
        values = variable.numpy()
        mask = (values != 0).astype(values.dtype)
        if values.size and 1.0 - mask.mean() >= PRUNED_KERNEL_SPARSITY:
            masks.append((variable, mask))
    return masks


def keep_zeros_callback(masks):
    """Re-zero pruned weights after every step, for the kernels PQAT's quantizers do not mask."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()

    class _KeepZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for variable, mask in masks:
                variable.assign(variable * mask)

    return _KeepZeros()


def no_quantizable_message(described: dict) -> str:
    kinds = sorted({row["class"] for row in described["float_layers"]}) or ["none"]
    return (
        "QAT needs at least one layer whose weights tfmot can quantize; this model has none (float: "
        f"{', '.join(kinds)}); use --mode ptq instead"
    )
