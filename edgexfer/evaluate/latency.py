"""Latency measurement: warm-up, then timed runs with ``time.perf_counter``; p50/p90/p99.

Runners for LiteRT (XNNPACK), onnxruntime (CPU, and CUDA where ``onnxruntime-gpu`` and a GPU
are present) and Keras. Numbers from one process on one machine compare; numbers across
machines or runs under different load do not, so report ratios measured in one run.

Imports no TensorFlow; ``keras_runner`` imports it when called.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError

DEFAULT_WARMUP = 5
DEFAULT_RUNS = 50
DEFAULT_BATCH = 8
DEFAULT_MAX_SECONDS = 10.0
MIN_TIMED_RUNS = 3
PERCENTILES = (50, 90, 99)

ORT_CPU = "CPUExecutionProvider"
ORT_CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: ``warmup`` untimed runs, then up to ``runs`` timed ones (fewer
    when ``max_seconds`` runs out first, never fewer than 3) at batch 1 and ``batch_size``."""

    warmup: int = DEFAULT_WARMUP
    runs: int = DEFAULT_RUNS
    batch_size: int = DEFAULT_BATCH
    threads: tuple[int, ...] = (1,)
    max_seconds: float = DEFAULT_MAX_SECONDS

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.runs < 1:
            raise ConfigError(f"--runs must be at least 1, got {self.runs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.threads:
            raise ConfigError("--threads needs at least one thread count, e.g. 1 or 1,2,0")
        for value in self.threads:
            if value < 0:
                raise ConfigError(f"--threads {value} is invalid; use positive counts or 0 for all cores")
        if self.max_seconds <= 0:
            raise ConfigError(f"max_seconds must be positive, got {self.max_seconds}")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return (1,) if self.batch_size == 1 else (1, self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "warmup": self.warmup,
            "runs": self.runs,
            "batch_sizes": list(self.batch_sizes),
            "threads": list(self.threads),
            "threads_resolved": [resolve_threads(t) for t in self.threads],
            "max_seconds": self.max_seconds,
            "cpu_count": os.cpu_count(),
        }


def parse_threads(text: str | Sequence[int] | int) -> tuple[int, ...]:
    """``"1,2,0"`` → ``(1, 2, 0)``; 0 means all cores. ``ConfigError`` on anything else."""
    if isinstance(text, int):
        values = [text]
    elif isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(
                f"--threads {text!r} is invalid; use comma-separated counts, e.g. 1,2,0 (0 = all cores)"
            ) from None
    else:
        values = [int(v) for v in text]
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"--threads {text!r} is invalid; use comma-separated counts ≥ 0, e.g. 1,2,0 (0 = all cores)")
    return tuple(dict.fromkeys(values))  # unique, in the order given


def resolve_threads(threads: int) -> int:
    """0 → every core this process may use; other counts as given."""
    if threads:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def percentiles(times_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, min and max of run times, in milliseconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings")
    p = np.percentile(ms, PERCENTILES)
    return {
        **{f"p{q}_ms": round(float(v), 4) for q, v in zip(PERCENTILES, p)},
        "mean_ms": round(float(ms.mean()), 4),
        "min_ms": round(float(ms.min()), 4),
        "max_ms": round(float(ms.max()), 4),
    }


def time_callable(
    fn: Callable[[], Any],
    *,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then time up to ``runs`` calls one by one.

    Stops early (after at least 3 timed runs) once ``max_seconds`` of timed runs are spent.
    The garbage collector is paused during the timed runs so a collection does not land in
    one of them. Returns ``percentiles`` plus ``runs`` (timed) and ``warmup``.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        budget_start = time.perf_counter()
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            if len(times) >= MIN_TIMED_RUNS and time.perf_counter() - budget_start > max_seconds:
                break
    finally:
        if was_enabled:
            gc.enable()
    return {**percentiles(times), "runs": len(times), "warmup": warmup}


def measure(
    fn_for_batch: Callable[[np.ndarray], Callable[[], Any]], x: np.ndarray, settings: LatencySettings, **labels: Any
) -> list[dict[str, Any]]:
    """One latency row per batch size of ``settings``: ``fn_for_batch(batch)`` returns the
    zero-argument callable to time. ``labels`` (model, runtime, threads …) go into each row.
    Throughput ``images_per_second`` is the batch over the median latency (robust to the
    stalls of a shared machine); ``images_per_second_mean`` uses the mean."""
    rows = []
    for batch in settings.batch_sizes:
        data = _batch_of(x, batch)
        stats = time_callable(
            fn_for_batch(data), warmup=settings.warmup, runs=settings.runs, max_seconds=settings.max_seconds
        )
        rows.append(
            {
                **labels,
                "batch": batch,
                **stats,
                "images_per_second": _per_second(batch, stats["p50_ms"]),
                "images_per_second_mean": _per_second(batch, stats["mean_ms"]),
            }
        )
    return rows


def _per_second(batch: int, ms: float) -> float:
    return round(batch / (ms / 1e3), 2) if ms > 0 else float("inf")


def _batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` images from ``x``, repeating them when there are fewer."""
    if len(x) >= batch:
        return np.ascontiguousarray(x[:batch])
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


# ------------------------------------------------------------------------------ runtimes


def ort_providers() -> list[str]:
    """The onnxruntime providers latency is measured on: CPU, plus CUDA when onnxruntime
    reports it available (onnxruntime-gpu with a usable GPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [ORT_CPU] + ([ORT_CUDA] if ORT_CUDA in available else [])


def runtime_runs_on(model_path, device: str, threads: int | None):
    """``(batch → callable, Placement)`` for a ``.tflite``/``.onnx`` model on ``device``
    (cpu | cuda | auto), the placement read back from the session: a ``cuda`` request that
    onnxruntime does not honour is a ``ConfigError`` saying why (never a CPU number)."""
    from edgexfer.runtime.providers import load_on_device

    model, placement = load_on_device(
        model_path, device, num_threads=resolve_threads(threads) if threads is not None else None
    )
    return model.invoke_fn, placement


def runtime_runs(model_path, kind: str, threads: int, provider: str | None = None):
    """A function ``batch → zero-argument callable`` that runs a ``.tflite``/``.onnx`` model
    through ``edgexfer.runtime`` on preprocessed float input (quantized once, outside the
    timed call, for int8 models). ``None`` when the asked onnxruntime ``provider`` did not
    start (onnxruntime then falls back to the CPU, which must not be reported as the GPU)."""
    from edgexfer.runtime import load_model

    providers = [provider, ORT_CPU] if provider and provider != ORT_CPU else None
    model = load_model(model_path, num_threads=resolve_threads(threads), providers=providers)
    if providers and provider not in model.providers:
        return None
    return model.invoke_fn


def runtime_label(kind: str, provider: str | None = None) -> str:
    if kind == "tflite":
        return "litert-xnnpack"
    if kind == "onnx":
        return "onnxruntime-cuda" if provider == ORT_CUDA else "onnxruntime-cpu"
    return kind


def keras_runs(keras_model):
    """A function ``batch → zero-argument callable`` running a Keras model in a
    ``tf.function`` (traced during warm-up), the fair float baseline."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    call = tf.function(lambda x: keras_model(x, training=False), reduce_retracing=True)

    def for_batch(x: np.ndarray):
        tensor = tf.constant(np.asarray(x, dtype=np.float32))
        return lambda: call(tensor).numpy()

    return for_batch


def saved_model_runs(path):
    """A function ``batch → zero-argument callable`` running a SavedModel's serving signature."""
    serve = load_saved_model_signature(path)
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()

    def for_batch(x: np.ndarray):
        tensor = tf.constant(np.asarray(x, dtype=np.float32))
        return lambda: next(iter(serve(tensor).values())).numpy()

    return for_batch


def load_saved_model_signature(path):
    """The ``serving_default`` signature of an edgexfer SavedModel, as ``fn(x) -> dict``."""
    from edgexfer.errors import ArtifactError
    from edgexfer.model_safety import check_saved_model
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    check_saved_model(path)  # no op that touches files or runs Python
    try:
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    except Exception as exc:  # noqa: BLE001 - TF raises many kinds for a bad directory
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"cannot load SavedModel {str(path)!r}: {first}") from None
    name = next(iter(signature.structured_input_signature[1]))
    return lambda x: signature(**{name: x})


def set_tensorflow_threads(threads: int) -> int:
    """Ask TensorFlow for ``threads`` intra-op threads (only possible before its runtime
    starts); return the count it will use (0 = its default, all cores)."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(resolve_threads(threads))
    except RuntimeError:
        pass  # the runtime already started: report what it uses
    return int(tf.config.threading.get_intra_op_parallelism_threads())


def batch1_row(latency: list[dict]) -> dict | None:
    """The batch-1 row of a latency table, on 1 thread where measured (else the runtime's own count)."""
    rows = [r for r in latency if r.get("batch") == 1]
    rows.sort(key=lambda r: r.get("threads") != 1)
    return rows[0] if rows else None


def batch1_p50(latency: list[dict]) -> float | None:
    """The p50 of :func:`batch1_row`."""
    row = batch1_row(latency)
    return row["p50_ms"] if row else None
