"""Latency helpers: percentiles, the timing loop, thread parsing (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from edgexfer.errors import ConfigError
from edgexfer.evaluate import latency as lat


def test_percentiles_are_numpy_percentiles_in_ms():
    times = [0.001 * v for v in range(1, 101)]  # 1..100 ms
    stats = lat.percentiles(times)
    expected = np.percentile(np.arange(1, 101, dtype=float), [50, 90, 99])
    assert [stats["p50_ms"], stats["p90_ms"], stats["p99_ms"]] == pytest.approx(list(expected))
    assert stats["min_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(100.0)
    assert stats["mean_ms"] == pytest.approx(50.5)


def test_time_callable_warms_up_then_times_each_run():
    calls = []
    stats = lat.time_callable(lambda: calls.append(1), warmup=3, runs=7)
    assert len(calls) == 10 and stats["runs"] == 7 and stats["warmup"] == 3
    assert 0 <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]


def test_time_callable_stops_at_the_time_budget_after_three_runs():
    import time

    stats = lat.time_callable(lambda: time.sleep(0.01), warmup=0, runs=1000, max_seconds=0.001)
    assert stats["runs"] == lat.MIN_TIMED_RUNS


def test_measure_rows_at_batch_one_and_n():
    x = np.zeros((3, 4, 4, 3), np.float32)
    seen = []

    def for_batch(batch):
        seen.append(len(batch))
        return lambda: None

    settings = lat.LatencySettings(warmup=1, runs=4, batch_size=5)
    rows = lat.measure(for_batch, x, settings, model="m", runtime="r", threads=1)
    assert seen == [1, 5]  # fewer images than the batch: repeated to fill it
    assert [row["batch"] for row in rows] == [1, 5]
    for row in rows:
        assert {"model", "runtime", "threads", "p50_ms", "p90_ms", "p99_ms", "images_per_second", "runs"} <= set(row)
        assert row["runs"] == 4 and row["images_per_second"] > 0


@pytest.mark.parametrize(
    "text,expected",
    [("1", (1,)), ("1,2,0", (1, 2, 0)), (" 4 , 1 ", (4, 1)), ("1,1,2", (1, 2)), (2, (2,)), ([0, 3], (0, 3))],
)
def test_parse_threads(text, expected):
    assert lat.parse_threads(text) == expected


@pytest.mark.parametrize("text", ["", "a", "1,-2", "1.5"])
def test_parse_threads_rejects_bad_values(text):
    with pytest.raises(ConfigError, match="--threads"):
        lat.parse_threads(text)


def test_zero_threads_means_all_usable_cores():
    assert lat.resolve_threads(0) >= 1
    assert lat.resolve_threads(3) == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"runs": 0}, "--runs"),
        ({"warmup": -1}, "--warmup"),
        ({"batch_size": 0}, "--batch-size"),
        ({"threads": ()}, "--threads"),
        ({"threads": (-1,)}, "--threads"),
    ],
)
def test_latency_settings_validate(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        lat.LatencySettings(**kwargs)


def test_settings_batch_sizes_and_dict():
    assert lat.LatencySettings(batch_size=1).batch_sizes == (1,)
    settings = lat.LatencySettings(batch_size=8, threads=(1, 0))
    assert settings.batch_sizes == (1, 8)
    data = settings.to_dict()
    assert data["threads"] == [1, 0] and data["threads_resolved"][0] == 1 and data["threads_resolved"][1] >= 1
