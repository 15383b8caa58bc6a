"""This machine's matrix-multiply peak, to put a model's achieved GMAC/s in context.

A latency alone does not say whether a model is slow or the machine is: ``achieved GMAC/s``
(the model's multiply-accumulates per image / the batch-1 latency) next to the peak of a
dense float32 matrix multiply (numpy's BLAS, square ``PROBE_SIZE`` matrices, best of a
short burst) does. Small CNNs at batch 1 typically reach a few percent of it: their layers
are too small to keep the vector units fed. The probe takes a fraction of a second and is
measured once per process and thread count.

Thread counts are set with ``threadpoolctl`` (a scikit-learn dependency, so there with
``edgexfer[train]``); without it only the BLAS library's default thread count is probed.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

PROBE_SIZE = 384  # 57 M MACs per product: long enough to time, short enough for a 0.2 s burst
PROBE_SECONDS = 0.2


def peak_gmacs(threads: int = 1) -> dict[str, Any]:
    """``{"gmacs": best GMAC/s, "threads": …, "method": …}`` of a float32 matmul on ``threads``
    threads (0 = all cores); ``gmacs`` is ``None`` with a ``why`` where the count cannot be set."""
    from edgexfer.evaluate.latency import resolve_threads

    return dict(_probe(resolve_threads(threads)))


@functools.cache
def _probe(threads: int) -> tuple[tuple[str, Any], ...]:
    method = f"numpy float32 matmul {PROBE_SIZE}×{PROBE_SIZE}, best of {PROBE_SECONDS:g} s"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return (
            ("gmacs", None),
            ("threads", threads),
            ("method", method),
            ("why", "threadpoolctl is not installed (pip install threadpoolctl), so the BLAS thread count is unset"),
        )
    with threadpool_limits(limits=threads, user_api="blas"):
        measured = round(PROBE_SIZE**3 / _best_seconds() / 1e9, 2)
    if threads > 1:
        # More threads cannot lower what the machine can do: a multi-thread BLAS on cores other
        # processes are using can run far slower than one thread (threads wait for each other).
        single = dict(_probe(1))["gmacs"]
        if single and single > measured:
            return (
                ("gmacs", single),
                ("threads", threads),
                ("method", method),
                ("measured_gmacs", measured),
                ("why", f"{threads} threads measured {measured} GMAC/s, below 1 thread (busy cores?): 1 thread's used"),
            )
    return (("gmacs", measured), ("threads", threads), ("method", method))


def _best_seconds() -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((PROBE_SIZE, PROBE_SIZE), dtype=np.float32)
    b = rng.standard_normal((PROBE_SIZE, PROBE_SIZE), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm-up: BLAS threads start, caches fill
    best = float("inf")
    deadline = time.perf_counter() + PROBE_SECONDS
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
        runs += 1
    return best


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def achieved(macs: int | None, latency_rows: list[dict[str, Any]]) -> None:
    """Add ``macs`` (per image), ``gmacs`` (MACs × batch / p50) and, where the probe ran on the row's thread count,
    ``peak_gmacs`` and ``fraction_of_peak`` to CPU latency rows, in place."""
    if not macs:
        return
    for row in latency_rows:
        p50 = row.get("p50_ms")
        if not p50 or p50 <= 0:
            continue
        row["macs"] = int(macs)
        # Four significant digits: a tiny model on a busy core runs at a few MMAC/s, where a fixed
        # number of decimals would round the figure (and its fraction of the peak) away.
        row["gmacs"] = _significant(macs * int(row.get("batch") or 1) / (p50 / 1e3) / 1e9)
        threads = row.get("threads_used")
        if threads and str(row.get("device", "cpu")).startswith("cpu"):
            peak = peak_gmacs(int(threads))
            if peak["gmacs"]:
                row["peak_gmacs"] = peak["gmacs"]
                row["fraction_of_peak"] = _significant(row["gmacs"] / peak["gmacs"])
