"""The matmul peak probe and the achieved GMAC/s that check/benchmark report next to it."""

from __future__ import annotations

import time

import pytest

from edgexfer.evaluate import peak
from edgexfer.evaluate.check_tables import COMPUTE_HEADER, compute_table_rows, render_benchmark_markdown


def test_the_probe_measures_once_per_process_and_thread_count():
    pytest.importorskip("threadpoolctl")
    started = time.perf_counter()
    first = peak.peak_gmacs(1)
    took = time.perf_counter() - started
    assert first["gmacs"] > 0.1 and first["threads"] == 1 and "matmul" in first["method"]
    assert took < 5  # a fraction of a second on an idle core; generous for a loaded CI machine
    started = time.perf_counter()
    assert peak.peak_gmacs(1) == first and time.perf_counter() - started < 0.01  # cached


def test_achieved_gmacs_is_macs_times_batch_over_p50_next_to_the_peak(monkeypatch):
    monkeypatch.setattr(peak, "peak_gmacs", lambda threads: {"gmacs": 40.0 * threads, "threads": threads})
    rows = [
        {"model": "m", "runtime": "litert-xnnpack", "device": "cpu", "threads": 1, "threads_used": 1, "batch": 1,
         "p50_ms": 2.0, "p90_ms": 2.0, "p99_ms": 2.0, "images_per_second": 500.0},
        {"model": "m", "runtime": "litert-xnnpack", "device": "cpu", "threads": 0, "threads_used": 2, "batch": 8,
         "p50_ms": 4.0, "p90_ms": 4.0, "p99_ms": 4.0, "images_per_second": 2000.0},
        {"model": "m", "runtime": "onnxruntime-cuda", "device": "cuda:0", "threads": None, "threads_used": None,
         "batch": 1, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "images_per_second": 1000.0},
    ]  # fmt: skip
    peak.achieved(10_000_000, rows)
    assert rows[0]["gmacs"] == pytest.approx(5.0) and rows[0]["fraction_of_peak"] == pytest.approx(5.0 / 40.0)
    assert rows[1]["gmacs"] == pytest.approx(20.0) and rows[1]["peak_gmacs"] == 80.0  # 8 × 10 M in 4 ms, 2 threads
    assert rows[2]["gmacs"] == pytest.approx(10.0) and "peak_gmacs" not in rows[2]  # no CPU peak for a GPU row
    table = compute_table_rows(rows, short=True)
    assert len(table[0]) == len(COMPUTE_HEADER)
    assert table[0][4:] == ["10 M", "5", "40.0", "12.5%"] and table[2][-2:] == ["—", "—"]
    markdown = render_benchmark_markdown(
        {
            "latency_settings": {"warmup": 1, "runs": 3, "cpu_count": 2},
            "environment": {"processor": "x86_64"},
            "rows": [{**row, "format": "tflite", "quant": "int8", "size_bytes": 1000} for row in rows],
            "sizes": [],
        }
    )
    assert "## Compute" in markdown and "| m | litert-xnnpack | 1 | 1 | 10 M | 5 | 40.0 | 12.5% |" in markdown


def test_no_macs_no_gmacs():
    rows = [{"p50_ms": 1.0, "batch": 1, "threads_used": 1, "device": "cpu"}]
    peak.achieved(None, rows)
    assert "gmacs" not in rows[0]


def test_a_multithread_probe_never_reports_less_than_one_thread(monkeypatch):
    pytest.importorskip("threadpoolctl")
    peak._probe.cache_clear()
    seconds = iter([0.1, 0.001])  # 4 threads slow (cores busy with other work), then 1 thread fast
    monkeypatch.setattr(peak, "_best_seconds", lambda: next(seconds))
    try:
        four = dict(peak._probe(4))
    finally:
        peak._probe.cache_clear()
    assert four["gmacs"] == round(peak.PROBE_SIZE**3 / 0.001 / 1e9, 2) > four["measured_gmacs"]
    assert four["threads"] == 4 and "below 1 thread" in four["why"]
