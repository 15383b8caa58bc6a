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

This module is the stage; the QAT model and its training live in ``edgexfer.compress.qat``,
the ``--check`` preflight in ``edgexfer.compress.quantize_check``.
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
from edgexfer.compress.qat import (
    PRUNED_KERNEL_SPARSITY,
    build_qat_model,
    calibrate_ranges,
    fix_degenerate_weight_ranges,
    is_pruned,
    kernel_masks,
    no_quantizable_message,
    train_qat,
)
from edgexfer.errors import ConfigError
from edgexfer.evaluate.macs import keras_macs
from edgexfer.keras_io import MODEL_FILE, load_keras_model, save_keras_model
from edgexfer.provenance import recorded
from edgexfer.train import common as train_common
from edgexfer.train import distributed
from edgexfer.train.resume import stage_checkpoint

CALIBRATION_FILE = "calibration.npy"


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
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = load_keras_model(source.model_path)
    if has_quantize_layers(model):
        raise ConfigError(
            f"MODEL {str(source.path)!r} is already quantization-aware (QAT); export it "
            "directly: edgexfer export MODEL --format tflite --quant int8"
        )
    added, unlabelled = stage_io.labelled_by_model(source, model, user_config, log)  # QAT only (PTQ refuses it)
    train, shard_info = distributed.worker_shard(
        train + added,
        cluster,
        config.seed,
        batch_size=config.batch_size,
        global_batch_size=user_config.batch_size,
        log=log,
    )
    checkpoint = stage_checkpoint("quantize", out, user_config, source, data_dir, dataset, cluster, strategy, log)

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
        "macs": keras_macs(model),  # multiply-accumulates per image; quantization keeps the graph's MACs
    }
    base_manifest = source.child_manifest(
        "quantize",
        user_config.model_dump(),
        MODEL_FILE,
        preprocessing=preprocessing,
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
                raise ConfigError(no_quantizable_message(described))
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
            masks = kernel_masks(qat_model) if pqat else []
            if checkpoint.completed("qat") is not None:
                history = checkpoint.restore("qat", qat_model)
            else:
                history = train_qat(
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
                **({"unlabelled": unlabelled} if unlabelled else {}),
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
