"""What every training stage shares: seeding, tf.distribute strategies, callbacks, timing."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

from edgexfer.errors import ConfigError


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and TensorFlow; make TF ops deterministic where it can."""
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def make_strategy(name: str):
    """A tf.distribute strategy. ``mirrored`` on a machine with no GPU mirrors over logical
    CPU devices (``EDGEXFER_LOGICAL_CPUS``, default 2, set before TensorFlow starts)."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < 2:
            raise ConfigError(
                "--strategy mirrored found no GPU and one CPU device; set EDGEXFER_LOGICAL_CPUS=2 "
                "before starting (edgexfer then splits the CPU into logical devices)"
            )
        return tf.distribute.MirroredStrategy(devices=[d.name for d in cpus])
    if name == "multi-worker":
        from edgexfer.train.distributed import check_tf_config

        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"--strategy {name!r} is unknown; allowed: default, mirrored, multi-worker")


# The directory training stages log TensorBoard events to, while ``tensorboard_logging`` is
# active. A context variable, not an argument of every stage: the callbacks are made deep inside
# finetune, adapt, distill, prune and QAT (their training helpers), the log directory changes
# nothing a stage computes (so it stays out of the ``@recorded`` provenance), and the pipeline
# runner is its one setter. A ContextVar keeps it per thread and per task, where a module-level
# list would leak between concurrent runs in one process.
_tensorboard_dir: ContextVar[Path | None] = ContextVar("edgexfer_tensorboard_dir", default=None)


@contextlib.contextmanager
def tensorboard_logging(log_dir: Path | None) -> Iterator[None]:
    """Training stages run inside this block add a TensorBoard callback writing to ``log_dir``
    (``None``: leaves the surrounding setting as it is)."""
    if log_dir is None:
        yield
        return
    token = _tensorboard_dir.set(Path(log_dir))
    try:
        yield
    finally:
        _tensorboard_dir.reset(token)


def tensorboard_callbacks(phase: str) -> list:
    """A TensorBoard callback for ``phase`` when ``tensorboard_logging`` is active, else none."""
    log_dir = _tensorboard_dir.get()
    if log_dir is None:
        return []
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    return [
        keras.callbacks.TensorBoard(log_dir=str(log_dir / phase), histogram_freq=0, write_graph=False, profile_batch=0)
    ]


def tensorboard_writer(phase: str):
    """A ``tf.summary`` writer for custom training loops (no Keras callback), or None when not logging."""
    log_dir = _tensorboard_dir.get()
    if log_dir is None:
        return None
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    return tf.summary.create_file_writer(str(log_dir / phase))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def timed(into: dict, key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = round(time.perf_counter() - start, 3)


def restore_best_early_stopping(patience: int, monitor: str = "val_accuracy"):
    """EarlyStopping that also restores the best weights when training runs to the end
    (Keras 2 restores them only when it stops early)."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()

    class _RestoreBest(keras.callbacks.EarlyStopping):
        def on_train_end(self, logs=None):
            if self.stopped_epoch == 0 and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            super().on_train_end(logs)

    return _RestoreBest(monitor=monitor, mode="max", patience=max(patience, 1), restore_best_weights=True)


def cosine_with_warmup(learning_rate: float, total_steps: int, warmup_fraction: float):
    """Linear warm-up to ``learning_rate``, then cosine decay to zero (Keras' CosineDecay)."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    total_steps = max(int(total_steps), 1)
    warmup = int(total_steps * warmup_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else learning_rate,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=learning_rate if warmup else None,
        warmup_steps=warmup,
    )


@contextlib.contextmanager
def step_progress(description: str, total: int, enabled: bool, completed: int = 0) -> Iterator[Callable[[], None]]:
    """A rich progress bar over a hand-written loop's ``total`` training steps, ``completed`` of
    them already done (a resumed run); yields ``advance()``, called once per step; silent when
    not ``enabled``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled
    )
    with bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda: bar.advance(task)


def rich_progress_callback(description: str, epochs: int, steps_per_epoch: int | None, enabled: bool = True):
    """A Keras callback that draws one rich progress bar over all steps, with the latest
    loss/accuracy; silent when not ``enabled`` or when stdout is not a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edgexfer.tf_env import import_tf

    _, keras = import_tf()

    class _RichProgress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                disable=not enabled,
                transient=False,
            )
            self.progress.start()
            total = epochs * steps_per_epoch if steps_per_epoch else None
            self.task = self.progress.add_task(description, total=total, status="")

        def on_train_batch_end(self, batch, logs=None):
            self.progress.advance(self.task)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            shown = " ".join(
                f"{k}={v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")
            )
            self.progress.update(self.task, status=f"epoch {epoch + 1}/{epochs} {shown}")

        def on_train_end(self, logs=None):
            self.progress.stop()

    return _RichProgress()
