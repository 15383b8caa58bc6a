"""The prune stage: tfmot magnitude pruning while fine-tuning, then ``strip_pruning``.

Layers are wrapped one by one through ``clone_model(clone_function=…)`` on a copy of the
input model (``prune_low_magnitude`` shares layer objects with the model it is given), so
every model can be pruned where tfmot supports its layers; the others stay dense and are
listed. Unstructured sparsity saves space only once compressed, so the gzip size of the
``.h5`` and of a float TFLite conversion is reported next to the raw size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, Manifest
from edgexfer.compress import measure, stage_io
from edgexfer.compress.config import PruneConfig
from edgexfer.errors import ConfigError
from edgexfer.evaluate.macs import keras_macs
from edgexfer.keras_io import MODEL_FILE, load_keras_model, save_keras_model
from edgexfer.provenance import recorded
from edgexfer.train import common as train_common
from edgexfer.train import distributed
from edgexfer.train.resume import stage_checkpoint

M_BY_N = (2, 4)


@dataclass
class PrunePlan:
    """Which layers get pruned, and why each other layer with weights stays dense."""

    pruned: list[str] = field(default_factory=list)
    dense: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pruned": list(self.pruned), "dense": list(self.dense)}


def plan_pruning(model, structure: str = "unstructured") -> PrunePlan:
    """Decide per layer: tfmot's PruneRegistry (or a layer's own ``get_prunable_weights``)
    for unstructured pruning; Conv2D/Dense whose input channels divide by 4 for 2:4."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    plan = PrunePlan()
    for layer in model.layers:
        if not layer.weights or isinstance(layer, keras.layers.InputLayer):
            continue
        params = int(sum(int(np.prod(w.shape)) for w in layer.weights))
        kind = type(layer).__name__

        def dense(reason: str, layer=layer, kind=kind, params=params) -> None:
            plan.dense.append({"layer": layer.name, "class": kind, "params": params, "reason": reason})

        custom = hasattr(layer, "get_prunable_weights")
        if not custom and not PruneRegistry.supports(layer):
            dense(f"tfmot cannot prune {kind} layers")
            continue
        names = PruneRegistry._LAYERS_WEIGHTS_MAP.get(layer.__class__)  # noqa: SLF001 (None: an RNN layer)
        if not custom and names is not None and not names:
            dense(f"tfmot's prune registry lists no prunable weights for {kind}")
            continue
        if structure == "2:4":
            reason = _m_by_n_unsupported(layer, keras)
            if reason:
                dense(reason)
                continue
        plan.pruned.append(layer.name)
    return plan


def _m_by_n_unsupported(layer, keras) -> str | None:
    if (
        isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))
        or not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
        or isinstance(layer, keras.layers.Conv2DTranspose)
    ):
        return f"2:4 sparsity is for Conv2D and Dense kernels; {type(layer).__name__} stays dense"
    if getattr(layer, "groups", 1) != 1:
        return "2:4 sparsity does not apply to grouped convolutions"
    kernel = layer.kernel
    channels_in = int(kernel.shape[-2]) if len(kernel.shape) == 4 else int(kernel.shape[0])
    if channels_in % M_BY_N[1]:
        return f"2:4 needs input channels divisible by 4 (it has {channels_in})"
    return None


def make_schedule(config: PruneConfig, total_steps: int):
    """tfmot schedule reaching the target: constant from step 0, or a polynomial decay whose
    end step falls on a mask update (tfmot prunes only on steps that are multiples of the
    frequency, so an end step between two updates would stop short of the target)."""
    from edgexfer.tf_env import import_tf

    import_tf()  # tfmot must find Keras 2 selected before it imports TensorFlow
    import tensorflow_model_optimization as tfmot

    total_steps = max(int(total_steps), 1)
    target = config.target_sparsity
    if config.schedule == "constant" or config.structure == "2:4":
        frequency = config.frequency or max(1, total_steps // 10)
        return tfmot.sparsity.keras.ConstantSparsity(target, begin_step=0, frequency=frequency), {
            "kind": "constant",
            "sparsity": target,
            "frequency": frequency,
        }
    end = max(1, int(total_steps * config.end_fraction))
    frequency = min(config.frequency or max(1, end // 10), end)
    end -= end % frequency
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=config.initial_sparsity, final_sparsity=target, begin_step=0, end_step=end, frequency=frequency
    ), {
        "kind": "polynomial",
        "initial_sparsity": config.initial_sparsity,
        "final_sparsity": target,
        "end_step": end,
        "frequency": frequency,
    }


def apply_pruning(model, plan: PrunePlan, schedule, structure: str):
    """A pruning-wrapped copy of ``model``: the input model is left untouched."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    import tensorflow_model_optimization as tfmot

    base = keras.models.clone_model(model)
    base.set_weights(model.get_weights())
    wanted = set(plan.pruned)
    kwargs = {"sparsity_m_by_n": M_BY_N} if structure == "2:4" else {}

    def wrap(layer):
        if layer.name in wanted:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule, **kwargs)
        return layer

    return keras.models.clone_model(base, clone_function=wrap)


def is_m_by_n(values: np.ndarray, m_by_n=M_BY_N) -> bool:
    """Whether every group of 4 consecutive input-channel weights holds at least 2 zeros
    (TFLite's layout: output channel first, input channel last)."""
    zeros, block = m_by_n
    if values.ndim == 4:
        rows = np.transpose(values, (3, 0, 1, 2)).reshape(-1, values.shape[2])
    elif values.ndim == 2:
        rows = values.T
    else:
        return False
    if rows.shape[1] % block:
        return False
    groups = rows.reshape(rows.shape[0], -1, block)
    return bool((np.count_nonzero(groups, axis=-1) <= block - zeros).all())


@recorded  # the call is stored in the artifact's manifest (edgexfer reproduce)
def prune(model_dir, data_dir, out, config: PruneConfig, *, progress: bool = True, log=print) -> Artifact:
    """Prune the Keras model of the artifact ``model_dir`` while fine-tuning on ``data_dir``."""
    from edgexfer.export.convert import has_quantize_layers
    from edgexfer.tf_env import import_tf

    source, manifest, preprocessing, dataset, split, train, val, eval_split, eval_samples = stage_io.stage_inputs(
        model_dir, data_dir, out, config
    )

    tf, keras = import_tf()
    import tensorflow_model_optimization as tfmot

    train_common.seed_everything(config.seed, config.deterministic)
    strategy = train_common.make_strategy(config.strategy)  # before any other TensorFlow op (multi-worker)
    user_config, cluster = config, distributed.cluster_of(config.strategy, strategy)
    config = distributed.worker_config(config, cluster)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = load_keras_model(source.model_path)
    if has_quantize_layers(model):
        raise ConfigError(
            f"MODEL {str(source.path)!r} is quantization-aware (QAT); prune the float model "
            "first, then quantize the pruned one (pruning-preserving QAT keeps the sparsity)"
        )
    added, unlabelled = stage_io.labelled_by_model(source, model, user_config, log)
    train, shard_info = distributed.worker_shard(
        train + added,
        cluster,
        config.seed,
        batch_size=config.batch_size,
        global_batch_size=user_config.batch_size,
        log=log,
    )
    checkpoint = stage_checkpoint("prune", out, user_config, source, data_dir, dataset, cluster, strategy, log)
    stage_io.make_trainable(model)
    plan = plan_pruning(model, config.structure)
    if not plan.pruned:
        raise ConfigError(
            f"no layer of MODEL {str(source.path)!r} can be pruned "
            f"({'; '.join(sorted({d['reason'] for d in plan.dense}))})"
        )
    x_eval, y_eval = stage_io.load_uint8(eval_samples, preprocessing)
    before = measure.weight_stats(model)
    accuracy_before = measure.accuracy(measure.keras_probs(model, x_eval, preprocessing), y_eval)

    steps = max(1, math.ceil(len(train) / config.batch_size))
    total_steps = steps * config.epochs
    schedule, schedule_info = make_schedule(config, total_steps)
    with strategy.scope():
        pruned = apply_pruning(model, plan, schedule, config.structure)
        pruned.compile(
            optimizer=keras.optimizers.Adam(train_common.cosine_with_warmup(config.learning_rate, total_steps, 0.0)),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    train_ds, val_ds = stage_io.training_datasets(train, val, preprocessing, config)
    what = "2:4" if config.structure == "2:4" else f"{config.target_sparsity:.0%}"
    log(
        f"pruning {len(plan.pruned)} layers to {what} sparsity ({schedule_info['kind']} schedule) while "
        f"fine-tuning {config.epochs} epochs on {len(train)} images; {len(plan.dense)} layers with weights "
        "stay dense"
    )
    callbacks = [
        tfmot.sparsity.keras.UpdatePruningStep(),
        train_common.rich_progress_callback(f"prune ({what})", config.epochs, steps, enabled=progress),
        *train_common.tensorboard_callbacks("prune"),
    ]
    from edgexfer.data import data_errors

    allreduce = int(sum(int(np.prod(v.shape)) for v in pruned.trainable_variables)) * 4
    if checkpoint.completed("prune") is not None:
        history_dict = checkpoint.restore("prune", pruned)
    else:
        inputs = distributed.fit_inputs(
            strategy, cluster, train_ds, val_ds, steps, max(1, math.ceil(len(val) / config.batch_size))
        )
        with train_common.timed(timings, "prune_seconds"), data_errors():
            history = pruned.fit(
                **inputs,
                epochs=config.epochs,
                verbose=0,
                callbacks=callbacks + checkpoint.callbacks("prune", config.epochs),
            )
        history_dict = _history(history)
        checkpoint.complete("prune", pruned, history_dict)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    if cluster.multi_worker:  # evaluate and save a plain copy: a distributed predict returns a shard
        stripped = distributed.local_copy(stripped)
    after = measure.weight_stats(stripped)
    accuracy_after = measure.accuracy(measure.keras_probs(stripped, x_eval, preprocessing), y_eval)

    layers = {}
    pruned_zeros = pruned_total = 0
    for name in plan.pruned:
        stats = after["layers"].get(name)
        if not stats:
            continue
        entry = {"params": stats["params"], "sparsity": stats["sparsity"]}
        if config.structure == "2:4":
            entry["pattern_2_4"] = is_m_by_n(stripped.get_layer(name).kernel.numpy())
        layers[name] = entry
        pruned_zeros += stats["zeros"]
        pruned_total += stats["params"]
    reached = round(pruned_zeros / pruned_total, 4) if pruned_total else 0.0

    with distributed.writing_artifact_on_chief(out, cluster) as writer:
        model_path = writer.file(MODEL_FILE)
        save_keras_model(stripped, model_path)
        size_before = measure.file_sizes(source.model_path)
        size_after = measure.file_sizes(model_path)
        metrics: dict[str, Any] = {
            "eval_split": eval_split,
            "eval_images": int(len(y_eval)),
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "accuracy_drop": round(accuracy_before - accuracy_after, 6),
            f"{eval_split}_accuracy": accuracy_after,
            "params": after["params"],
            "params_before": before["params"],
            "params_after": after["params"],
            "params_nonzero_before": before["params_nonzero"],
            "params_nonzero_after": after["params_nonzero"],
            # multiply-accumulates per image: a pruned kernel counts in full (dense runtimes multiply its zeros)
            "macs": keras_macs(stripped),
            "macs_before": keras_macs(model),
            "target_sparsity": config.target_sparsity,
            "structure": config.structure,
            "sparsity_before": before["sparsity"],
            "sparsity_after": after["sparsity"],
            "pruned_layers_sparsity": reached,
            "layers": layers,
            "dense_layers": plan.dense,
            "size_bytes_before": size_before["size_bytes"],
            "size_bytes_after": size_after["size_bytes"],
            "gzip_bytes_before": size_before["gzip_bytes"],
            "gzip_bytes_after": size_after["gzip_bytes"],
            "gzip_ratio": round(size_before["gzip_bytes"] / size_after["gzip_bytes"], 3),
            "model_bytes": size_after["size_bytes"],
            "schedule": schedule_info,
            "history": history_dict,
            "splits": {"train": len(train), "val": len(val), eval_split: len(y_eval)},
            **({"unlabelled": unlabelled} if unlabelled else {}),
            "distributed": {
                **distributed.describe(cluster, shard_info, user_config.batch_size),
                "allreduce_bytes_per_step": allreduce,
                **(
                    {"step_seconds": round(timings["prune_seconds"] / total_steps, 4)}
                    if "prune_seconds" in timings
                    else {}
                ),
            },
            "resumed": checkpoint.resumed,
        }
        if config.structure == "2:4":
            metrics["pattern_2_4_layers"] = sum(1 for entry in layers.values() if entry.get("pattern_2_4"))
        if config.measure_tflite:
            from edgexfer.export import tflite_bytes

            with train_common.timed(timings, "tflite_seconds"), measure.quiet_native_logs():
                tfl_before = measure.bytes_sizes(tflite_bytes(model, "none"))
                tfl_after = measure.bytes_sizes(tflite_bytes(stripped, "none"))
            metrics["tflite_fp32"] = {
                "size_bytes_before": tfl_before["size_bytes"],
                "size_bytes_after": tfl_after["size_bytes"],
                "gzip_bytes_before": tfl_before["gzip_bytes"],
                "gzip_bytes_after": tfl_after["gzip_bytes"],
                "gzip_ratio": round(tfl_before["gzip_bytes"] / tfl_after["gzip_bytes"], 3),
            }
        timings["total_seconds"] = round(time.perf_counter() - started, 3)
        metrics["timings_seconds"] = timings
        metrics["peak_rss_mb"] = round(train_common.peak_rss_mb(), 1)
        written = source.child_manifest(
            "prune",
            user_config.model_dump(),
            MODEL_FILE,
            preprocessing=preprocessing,
            dataset={"path": str(Path(data_dir).resolve()), **dataset.fingerprint()},
            seed=config.seed,
            extra={
                **_carried(manifest),
                "split": split,
                "strategy": config.strategy,
                "workers": cluster.workers,
                "pruning": {
                    "structure": config.structure,
                    "target_sparsity": config.target_sparsity,
                    "sparsity": reached,
                    "pruned_layers": list(plan.pruned),
                    "dense_layers": [d["layer"] for d in plan.dense],
                },
            },
        )
        artifact = writer.commit(written, metrics)
    checkpoint.finish()
    return artifact


def _carried(manifest: Manifest) -> dict[str, Any]:
    """Facts about the model a compression stage keeps from its input's manifest."""
    return {key: manifest.extra[key] for key in ("width", "teacher") if key in (manifest.extra or {})}


def _history(history) -> dict[str, list[float]]:
    return {key: [round(float(v), 5) for v in values] for key, values in history.history.items()}
