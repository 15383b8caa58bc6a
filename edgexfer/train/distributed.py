"""Multi-worker training (``--strategy multi-worker``): sharding, per-worker batches, chief-only writes.

``tf.distribute.MultiWorkerMirroredStrategy`` runs one replica per worker process; every
worker runs the same command with its own ``TF_CONFIG``. What edgexfer adds around Keras:

- **Each worker reads its own shard.** The training samples are put in one seeded
  permutation (the same on every worker) and cut into equal, disjoint shards, one a worker;
  the up to ``workers - 1`` images that would make the shards unequal are left out (all
  workers must run the same number of steps, or the all-reduce of the last step waits
  forever) and counted in the metrics. Only a worker's own shard is decoded (and, for
  finetune's feature cache and distill's cached teacher logits, run through the frozen
  network). The datasets reach Keras through ``distribute_datasets_from_function``, so
  tf.data's auto-sharding, which would decode every image on every worker and keep
  one in N batches, never runs.
- **The global batch is what the user asked for.** Each worker's batch is
  ``batch_size / workers`` (a batch size that does not divide is a one-line error), so the
  steps per epoch and the learning-rate schedule match a single-process run.
- **Validation** runs on every worker over the whole validation split (the metrics are
  summed over workers, so the reported accuracy is exact, not a shard's).
- **Only the chief (worker 0) writes the artifact.** The other workers build theirs in a
  private temporary directory that is deleted when they finish: nothing is left to clean up.
- After training the weights are copied into a plain (non-distributed) model, so evaluation
  and saving are ordinary single-process code: a distributed ``predict`` would shard the
  evaluation data and return only the local part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: how many workers, which one it is, whether it writes."""

    strategy: str
    workers: int = 1
    index: int = 0

    @property
    def multi_worker(self) -> bool:
        return self.strategy == "multi-worker"

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def cluster_of(strategy_name: str, strategy=None) -> Cluster:
    """The cluster this process belongs to (one worker unless ``multi-worker``)."""
    if strategy_name != "multi-worker":
        return Cluster(strategy_name)
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
    workers = len(spec.get("cluster", {}).get("worker", [])) + len(spec.get("cluster", {}).get("chief", []))
    task = spec.get("task", {})
    index = (
        int(resolver.task_id) if resolver is not None and resolver.task_id is not None else int(task.get("index", 0))
    )
    if task.get("type") == "worker" and spec.get("cluster", {}).get("chief"):
        index += 1  # an explicit "chief" task is worker 0
    return Cluster("multi-worker", workers=max(workers, 1), index=index)


def check_tf_config() -> None:
    """A one-line error for a missing or malformed ``TF_CONFIG`` (before TensorFlow reads it)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "--strategy multi-worker needs TF_CONFIG describing the cluster and this worker's task, "
            'e.g. {"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", '
            '"index": 0}}; tools/launch_local.py N -- edgexfer ... sets it for N workers on this machine'
        )
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    workers = spec.get("cluster", {}).get("worker") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(workers, list) or not workers or not isinstance(task, dict) or "index" not in task:
        raise ConfigError(
            'TF_CONFIG must hold {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
        )
    if task.get("type") == "worker" and not 0 <= int(task["index"]) < len(workers):
        raise ConfigError(f"TF_CONFIG task index {task['index']} is outside the {len(workers)} workers listed")


def per_worker_batch(global_batch: int, cluster: Cluster) -> int:
    """Each worker's batch for the user's global batch; a one-line error when it does not divide."""
    if global_batch % cluster.workers:
        lower = global_batch - global_batch % cluster.workers
        raise ConfigError(
            f"--batch-size {global_batch} is the global batch and must divide by the "
            f"{cluster.workers} workers; pass --batch-size {max(lower, cluster.workers)} "
            f"or {lower + cluster.workers}"
        )
    return global_batch // cluster.workers


def worker_config(config, cluster: Cluster):
    """The stage config a worker trains with: its share of the user's global batch."""
    if not cluster.multi_worker:
        return config
    return config.model_copy(update={"batch_size": per_worker_batch(config.batch_size, cluster)})


def worker_shard(
    samples: Sequence, cluster: Cluster, seed: int, *, batch_size: int, global_batch_size: int, log
) -> tuple[list, dict[str, Any]]:
    """:func:`shard`, and on a cluster one line saying what this worker trains on."""
    samples, info = shard(samples, cluster, seed)
    if cluster.multi_worker:
        log(
            f"worker {cluster.index} of {cluster.workers}: {len(samples)} training images (its shard), batch "
            f"{batch_size} of the global {global_batch_size}"
            + ("; the chief writes the artifact" if not cluster.is_chief else "")
        )
    return samples, info


def shard(samples: Sequence, cluster: Cluster, seed: int) -> tuple[list, dict[str, Any]]:
    """This worker's equal, disjoint share of ``samples`` and a description for the metrics.

    One seeded permutation (identical on every worker) is cut into ``workers`` slices of
    ``len // workers`` samples; the remainder is left out so every worker runs the same steps.
    """
    samples = list(samples)
    if not cluster.multi_worker:
        return samples, {"workers": 1, "worker_images": [len(samples)], "left_out_images": 0}
    each = len(samples) // cluster.workers
    if each == 0:
        raise ConfigError(
            f"{len(samples)} training images cannot be shared by {cluster.workers} workers; "
            "add images or use fewer workers"
        )
    order = np.random.default_rng(seed).permutation(len(samples))
    mine = order[cluster.index * each : (cluster.index + 1) * each]
    info = {
        "workers": cluster.workers,
        "worker_images": [each] * cluster.workers,
        "left_out_images": len(samples) - each * cluster.workers,
    }
    return [samples[i] for i in sorted(mine)], info


def fit_inputs(
    strategy, cluster: Cluster, train_ds, val_ds, steps_per_epoch: int, val_steps: int | None
) -> dict[str, Any]:
    """``model.fit`` keyword arguments for the training and validation datasets.

    Single process: the datasets as they are. Multi-worker: each worker's own (already
    sharded, per-worker-batched) datasets handed to Keras through
    ``distribute_datasets_from_function``, which neither re-shards nor re-batches them;
    Keras then needs the step counts, and the training data repeats so that an epoch is
    exactly ``steps_per_epoch`` batches.
    """
    if not cluster.multi_worker:
        return {"x": train_ds, "validation_data": val_ds}
    kwargs: dict[str, Any] = {
        "x": strategy.distribute_datasets_from_function(lambda _context: train_ds.repeat()),
        "steps_per_epoch": int(steps_per_epoch),
    }
    if val_ds is not None:
        kwargs["validation_data"] = strategy.distribute_datasets_from_function(lambda _context: val_ds)
        kwargs["validation_steps"] = int(val_steps)
    return kwargs


def local_copy(model):
    """A plain (non-distributed) copy of ``model`` with its weights, for evaluation and saving."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    import tensorflow_model_optimization as tfmot

    # Called outside ``strategy.scope()``: the clone's variables are ordinary ones.
    with tfmot.quantization.keras.quantize_scope(), tfmot.sparsity.keras.prune_scope():
        copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def predict_local(model, dataset) -> np.ndarray:
    """``model`` over ``dataset`` (batches of images) in this process only, batch by batch."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    outputs = [run(batch).numpy() for batch in dataset]
    return np.concatenate(outputs) if outputs else np.zeros((0, *model.output_shape[1:]), np.float32)


def describe(
    cluster: Cluster,
    info: dict[str, Any],
    global_batch: int,
    model=None,
    train_seconds: float | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """What ``metrics.json["distributed"]`` records: cluster size, shards, batches, and what a
    real cluster's scaling depends on (the bytes all-reduced per step and the step time)."""
    result: dict[str, Any] = {
        "strategy": cluster.strategy,
        "workers": cluster.workers,
        "global_batch": global_batch,
        "per_worker_batch": global_batch // cluster.workers,
        **info,
    }
    if model is not None:
        trainable = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        # Ring all-reduce of float32 gradients: each step every worker reduces this many bytes
        # (sending and receiving 2·(N-1)/N of it).
        result["allreduce_bytes_per_step"] = trainable * 4
    if train_seconds is not None and steps:
        result["step_seconds"] = round(train_seconds / steps, 4)
    return result


class _WorkerWriter:
    """What a non-chief worker writes through: a private temporary directory, deleted at the end;
    ``commit`` writes nothing and returns None."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="edgexfer-worker-"))

    def file(self, name: str) -> Path:
        return self.tmp / name

    def write_json(self, name: str, data: Any) -> Path:
        path = self.tmp / name
        path.write_text(json.dumps(data, default=str))
        return path

    def commit(self, manifest, metrics=None):
        return None


@contextlib.contextmanager
def writing_artifact_on_chief(out, cluster: Cluster) -> Iterator[Any]:
    """``writing_artifact(out)`` on the chief; on another worker a throwaway writer."""
    from edgexfer.artifact import writing_artifact

    if cluster.is_chief:
        with writing_artifact(out) as writer:
            yield writer
        return
    writer = _WorkerWriter()
    try:
        yield writer
    finally:
        shutil.rmtree(writer.tmp, ignore_errors=True)
