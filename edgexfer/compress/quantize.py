"""The quantize stage: QAT / pruning-preserving QAT with tfmot, or PTQ settings for export.

QAT annotates the layers tfmot's default 8-bit registry supports and calls
``quantize_apply`` in ``quantize_scope``: the whole model where every layer is supported,
only part of it otherwise (MobileNetV3's hard-swish ``TFOpLambda`` and squeeze-excite
``Multiply`` stay float; the command lists them). On a pruned input the prune-preserving
scheme is used, with its registry restricted to what the 8-bit registry supports (it claims
every weightless layer and then fails on them), and a mask keeps zero every kernel weight
that was zero (PQAT leaves DepthwiseConv2D and unwrapped convs unmasked). The sparsity is
then measured in the converted int8 TFLite, not assumed.

Three fixes make the converted int8 model agree with the QAT model (both measured on
mnist-5k with EfficientNet-Lite0): activation ranges are calibrated on the calibration
images before training (tfmot starts them at ±6, and QAT began at chance), and BatchNorm
layers after a conv are annotated too, so tfmot's conv + BatchNorm patterns match; after
training, pruned-away output channels get a non-zero weight range (a [0, 0] range lost
their folded bias in the converter).

Every result is measured on converted TFLite models run with LiteRT: QAT int8, PTQ int8
(same calibration images) and the float model.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, Manifest
from edgexfer.compress import measure, stage_io
from edgexfer.compress.config import QuantizeConfig
from edgexfer.errors import ConfigError
from edgexfer.keras_io import MODEL_FILE, load_keras_model, save_keras_model
from edgexfer.provenance import recorded
from edgexfer.train import common as train_common
from edgexfer.train import distributed
from edgexfer.train.resume import stage_checkpoint

CALIBRATION_FILE = "calibration.npy"
# A kernel with at least this fraction of zeros counts as pruned (its zeros are kept).
PRUNED_KERNEL_SPARSITY = 0.05
_WEIGHT_CLASSES = ("Conv2D", "DepthwiseConv2D", "Dense", "SeparableConv2D", "Conv2DTranspose")
_FOLDABLE_INTO = ("Conv2D", "DepthwiseConv2D", "Dense")


# --------------------------------------------------------------------------- QAT model


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


def _range_variables(model) -> list:
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

    ranges = _range_variables(qat)
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


def check(model_dir, *, preserve_sparsity: bool | None = None) -> dict[str, Any]:
    """Preflight: build the QAT model (no data, no training) and list what will and won't
    be quantized. Never raises for an unquantizable model: the report says so."""
    from edgexfer.export.convert import has_quantize_layers

    source = stage_io.keras_artifact(model_dir, "MODEL")
    model = load_keras_model(source.model_path)
    report: dict[str, Any] = {
        "artifact": str(source.path),
        "stage": source.manifest.stage,
        "backbone": source.manifest.backbone,
    }
    if has_quantize_layers(model):
        report.update(
            error="the model is already quantization-aware; export it (edgexfer export --quant int8)",
            layers=[],
            counts={},
            float_layers=[],
            quantizable=0,
            whole_model=False,
            pqat=False,
        )
        return report
    pqat = is_pruned(source, model) if preserve_sparsity is None else preserve_sparsity
    stats = measure.weight_stats(model)
    report.update(pqat=pqat, sparsity=stats["sparsity"], params=stats["params"])
    try:
        _, described = build_qat_model(model, pqat)
        report.update(described)
        if not described["quantizable"]:
            report["error"] = _no_quantizable_message(described)
    except ConfigError as exc:
        report.update(error=str(exc), layers=[], counts={}, float_layers=[], quantizable=0, whole_model=False)
    return report


def _no_quantizable_message(described: dict) -> str:
    kinds = sorted({row["class"] for row in described["float_layers"]}) or ["none"]
    return (
        "QAT needs at least one layer whose weights tfmot can quantize; this model has none (float: "
        f"{', '.join(kinds)}); use --mode ptq instead"
    )


# --------------------------------------------------------------------------- the stage


@recorded  # the call is stored in the artifact's manifest (edgexfer reproduce)
def quantize(model_dir, data_dir, out, config: QuantizeConfig, *, progress: bool = True, log=print) -> Artifact:
    """QAT/PQAT (``config.mode == "qat"``) or PTQ settings (``"ptq"``) for the artifact ``model_dir``."""
    from edgexfer.export.convert import has_quantize_layers
    from edgexfer.runtime.images import normalize
    from edgexfer.tf_env import import_tf

    source, manifest, preprocessing, dataset, split, train, val, eval_split, eval_samples = stage_io.stage_inputs(
        model_dir, data_dir, out, config
    )
    calibration_samples = (
        stage_io.pick_calibration(dataset.split("train"), config.calibration_images, config.seed)
        if config.mode == "qat" or config.type == "int8"
        else []
    )

    import_tf()
    train_common.seed_everything(config.seed, config.deterministic)
    strategy = train_common.make_strategy(config.strategy) if config.mode == "qat" else None
    user_config, cluster = config, distributed.cluster_of(config.strategy, strategy)
    if config.mode == "ptq" and config.strategy != "default":
        raise ConfigError(
            f"quantize --mode ptq trains nothing and runs in one process; drop --strategy "
            f"{config.strategy} (QAT, --mode qat, can be distributed)"
        )
    config = distributed.worker_config(config, cluster)
    train, shard_info = distributed.worker_shard(
        train, cluster, config.seed, batch_size=config.batch_size, global_batch_size=user_config.batch_size, log=log
    )
    checkpoint = stage_checkpoint("quantize", out, user_config, source, data_dir, dataset, cluster, strategy, log)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = load_keras_model(source.model_path)
    if has_quantize_layers(model):
        raise ConfigError(
            f"MODEL {str(source.path)!r} is already quantization-aware (QAT); export it "
            "directly: edgexfer export MODEL --format tflite --quant int8"
        )

    x_eval, y_eval = stage_io.load_uint8(eval_samples, preprocessing)
    calibration_uint8 = stage_io.load_uint8(calibration_samples, preprocessing)[0] if calibration_samples else None
    calibration = normalize(calibration_uint8, preprocessing) if calibration_uint8 is not None else None
    before = measure.weight_stats(model)
    float_accuracy = measure.accuracy(measure.keras_probs(model, x_eval, preprocessing), y_eval)

    quantization: dict[str, Any] = {
        "calibration_images": 0 if calibration_uint8 is None else int(len(calibration_uint8)),
        "calibration_source": str(Path(data_dir).resolve()),
        "calibration_split": "train",
    }
    if calibration_uint8 is not None:
        quantization["calibration_file"] = CALIBRATION_FILE
    metrics: dict[str, Any] = {
        "eval_split": eval_split,
        "eval_images": int(len(y_eval)),
        "accuracy_before": float_accuracy,
        "float_accuracy": float_accuracy,
        "params_before": before["params"],
        "sparsity_before": before["sparsity"],
    }
    base_manifest = Manifest(
        stage="quantize",
        label_names=list(manifest.label_names),
        preprocessing=preprocessing,
        backbone=manifest.backbone,
        weights=manifest.weights,
        config=user_config.model_dump(),
        model_file=MODEL_FILE,
        parent=source.parent_ref(),
        dataset={"path": str(Path(data_dir).resolve()), **dataset.fingerprint()},
        seed=config.seed,
        extra={**_carried(manifest), "split": split, "strategy": config.strategy, "workers": cluster.workers},
    )

    with distributed.writing_artifact_on_chief(out, cluster) as writer:
        if calibration_uint8 is not None:
            np.save(writer.file(CALIBRATION_FILE), calibration_uint8)
        if config.mode == "ptq":
            model_file = source.model_path.name
            shutil.copy2(source.model_path, writer.file(model_file))
            base_manifest.model_file = model_file
            quantization.update(mode="ptq", type=config.type)
            base_manifest.quantization = quantization
            log(f"PTQ {config.type}: converting to TFLite and measuring on {len(y_eval)} {eval_split} images")
            with train_common.timed(timings, "convert_seconds"):
                converted = measure.converted_tflite(
                    model,
                    base_manifest,
                    config.type,
                    calibration=calibration,
                    is_qat=False,
                    images_uint8=x_eval,
                    labels=y_eval,
                )
            metrics.update(_converted_metrics(converted, config.type, "ptq"))
            metrics.update(
                accuracy_after=converted["accuracy"],
                params=before["params"],
                params_after=before["params"],
                sparsity_after=converted["weight_sparsity"],
                model_bytes=writer.file(model_file).stat().st_size,
            )
        else:
            pqat = is_pruned(source, model) if config.preserve_sparsity is None else config.preserve_sparsity
            stage_io.make_trainable(model)
            qat_model, described = build_qat_model(model, pqat)
            if not described["quantizable"]:
                raise ConfigError(_no_quantizable_message(described))
            floats = described["float_layers"]
            log(
                f"{'pruning-preserving ' if pqat else ''}QAT of {described['quantizable']} layers with weights"
                + (
                    f"; {len(floats)} layers stay float: {', '.join(f['layer'] for f in floats[:8])}"
                    + (" …" if len(floats) > 8 else "")
                    if floats
                    else " (the whole model)"
                )
            )
            with train_common.timed(timings, "range_calibration_seconds"):
                calibrated = calibrate_ranges(qat_model, calibration, batch_size=min(config.batch_size, 32))
            if cluster.multi_worker:  # the calibrated ranges, built again with distributed variables
                calibrated_model = qat_model
                with strategy.scope():
                    qat_model, _ = build_qat_model(model, pqat)
                qat_model.set_weights(calibrated_model.get_weights())
            masks = _kernel_masks(qat_model) if pqat else []
            if checkpoint.completed("qat") is not None:
                history = checkpoint.restore("qat", qat_model)
            else:
                history = _train_qat(
                    qat_model,
                    train,
                    val,
                    preprocessing,
                    config,
                    masks,
                    timings,
                    progress,
                    strategy=strategy,
                    extra_callbacks=checkpoint.callbacks("qat", config.epochs),
                )
                checkpoint.complete("qat", qat_model, history)
            allreduce = int(sum(int(np.prod(v.shape)) for v in qat_model.trainable_variables)) * 4
            if cluster.multi_worker:  # evaluate and convert a plain copy (.h5 round trip, as QAT models save)
                save_keras_model(qat_model, writer.file(MODEL_FILE))
                qat_model = load_keras_model(writer.file(MODEL_FILE))
            fixed_ranges = fix_degenerate_weight_ranges(qat_model)
            qat_accuracy = measure.accuracy(measure.keras_probs(qat_model, x_eval, preprocessing), y_eval)
            save_keras_model(qat_model, writer.file(MODEL_FILE))
            quantization.update(
                mode="pqat" if pqat else "qat",
                type="int8",
                whole_model=described["whole_model"],
                float_layers=[f["layer"] for f in floats],
            )
            base_manifest.quantization = quantization
            log(f"converting to int8 TFLite and measuring on {len(y_eval)} {eval_split} images")
            with train_common.timed(timings, "convert_seconds"):
                converted = measure.converted_tflite(
                    qat_model,
                    base_manifest,
                    "int8",
                    calibration=calibration,
                    is_qat=True,
                    images_uint8=x_eval,
                    labels=y_eval,
                )
                ptq = None
                if config.compare_ptq:
                    ptq = measure.converted_tflite(
                        model,
                        base_manifest,
                        "int8",
                        calibration=calibration,
                        is_qat=False,
                        images_uint8=x_eval,
                        labels=y_eval,
                    )
            after = measure.weight_stats(qat_model)
            metrics.update(_converted_metrics(converted, "int8", "qat"))
            metrics.update(
                qat_keras_accuracy=qat_accuracy,
                accuracy_after=converted["accuracy"],
                params=after["params"],
                params_after=after["params"],
                sparsity_after=converted["weight_sparsity"],
                model_bytes=writer.file(MODEL_FILE).stat().st_size,
                whole_model=described["whole_model"],
                float_layers=floats,
                quantized_layers=described["quantizable"],
                layer_counts=described["counts"],
                calibrated_ranges=calibrated,
                zero_channels_given_a_range=fixed_ranges,
                history=history,
                pqat=pqat,
                distributed={
                    **distributed.describe(cluster, shard_info, user_config.batch_size),
                    "allreduce_bytes_per_step": allreduce,
                    **(
                        {
                            "step_seconds": round(
                                timings["qat_seconds"] / (math.ceil(len(train) / config.batch_size) * config.epochs), 4
                            )
                        }
                        if "qat_seconds" in timings
                        else {}
                    ),
                },
                resumed=checkpoint.resumed,
            )
            if ptq is not None:
                metrics.update(
                    {
                        "ptq_int8_tflite_accuracy": ptq["accuracy"],
                        "tflite_ptq_int8": _slim(ptq),
                        "qat_minus_ptq": round(converted["accuracy"] - ptq["accuracy"], 6),
                    }
                )
            if pqat:
                metrics["sparsity_check"] = _sparsity_kept(before, after, converted)
        metrics["accuracy_drop"] = round(metrics["accuracy_before"] - metrics["accuracy_after"], 6)
        metrics[f"{eval_split}_accuracy"] = metrics["accuracy_after"]
        metrics["size_bytes_before"] = source.model_path.stat().st_size
        timings["total_seconds"] = round(time.perf_counter() - started, 3)
        metrics["timings_seconds"] = timings
        metrics["peak_rss_mb"] = round(train_common.peak_rss_mb(), 1)
        artifact = writer.commit(base_manifest, metrics)
    checkpoint.finish()
    return artifact


def _train_qat(
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
    from edgexfer.data import data_errors, make_dataset
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
    augment = config.augment if config.augment.enabled else None
    train_ds = make_dataset(
        train, preprocessing, batch_size=config.batch_size, shuffle=True, seed=config.seed, augment=augment, cache=True
    )
    val_ds = make_dataset(val, preprocessing, batch_size=config.batch_size, cache=True) if val else None
    callbacks = [
        train_common.rich_progress_callback("QAT", config.epochs, steps, enabled=progress),
        *train_common.tensorboard_callbacks("qat"),
    ]
    if masks:
        callbacks.append(_keep_zeros_callback(masks))
    cluster = distributed.cluster_of(config.strategy, strategy)
    inputs = distributed.fit_inputs(
        strategy, cluster, train_ds, val_ds, steps, max(1, math.ceil(len(val) / config.batch_size))
    )
    with train_common.timed(timings, "qat_seconds"), data_errors():
        history = qat_model.fit(**inputs, epochs=config.epochs, verbose=0, callbacks=callbacks + list(extra_callbacks))
    return {key: [round(float(v), 5) for v in values] for key, values in history.history.items()}


def _kernel_masks(model) -> list[tuple[Any, np.ndarray]]:
    """``(kernel variable, 0/1 mask)`` for each kernel that is pruned (mostly zeros)."""
    masks = []
    for _, variable in measure.kernel_variables(model):
        values = variable.numpy()
        mask = (values != 0).astype(values.dtype)
        if values.size and 1.0 - mask.mean() >= PRUNED_KERNEL_SPARSITY:
            masks.append((variable, mask))
    return masks


def _keep_zeros_callback(masks):
    """Re-zero pruned weights after every step, for the kernels PQAT's quantizers do not mask."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()

    class _KeepZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for variable, mask in masks:
                variable.assign(variable * mask)

    return _KeepZeros()


def _sparsity_kept(before: dict, after: dict, converted: dict, tolerance: float = 0.01) -> dict[str, Any]:
    """Per pruned layer: sparsity of the input model, of the QAT model and of the converted
    int8 TFLite weights (matched by layer name)."""
    from edgexfer.compress.tflite_stats import match_layer

    names = list(converted["weight_layers"])
    layers = {}
    kept = True
    for layer, stats in before["layers"].items():
        if stats["sparsity"] < PRUNED_KERNEL_SPARSITY:
            continue
        tensor = match_layer(names, layer)
        tflite = converted["weight_layers"][tensor]["sparsity"] if tensor else None
        qat = after["layers"].get(layer, {}).get("sparsity")
        ok = tflite is not None and tflite >= stats["sparsity"] - tolerance
        kept = kept and ok
        layers[layer] = {"input": stats["sparsity"], "qat": qat, "tflite": tflite, "kept": ok}
    return {
        "kept": kept and bool(layers),
        "input_sparsity": before["sparsity"],
        "tflite_sparsity": converted["weight_sparsity"],
        "layers": layers,
    }


def _converted_metrics(converted: dict, quant: str, mode: str) -> dict[str, Any]:
    return {f"{mode}_{quant}_tflite_accuracy": converted["accuracy"], f"tflite_{mode}_{quant}": _slim(converted)}


def _slim(converted: dict) -> dict[str, Any]:
    return {key: value for key, value in converted.items() if key != "weight_layers"}


def _carried(manifest: Manifest) -> dict[str, Any]:
    return {key: manifest.extra[key] for key in ("width", "teacher", "pruning") if key in (manifest.extra or {})}
