"""The report's Pareto front: the models no other beats on both size and accuracy."""

from edgexfer.evaluate.report import pareto_front
from edgexfer.evaluate.report.collect import check_rows


def test_pareto_front_keeps_only_undominated_models_in_size_order():
    points = [(14.0, 0.92), (0.4, 0.91), (0.42, 0.91), (1.6, 0.90), (0.4, 0.91)]
    # 0.42 MB at 0.91 is beaten by 0.4 MB at 0.91; 1.6 MB at 0.90 by both; duplicates both stay.
    assert pareto_front(points) == [1, 4, 0]
    assert pareto_front([(1.0, 0.5)]) == [0]


def test_report_rows_say_which_thread_count_each_latency_used():
    result = {
        "parents": [
            {
                "name": "student",
                "accuracy": 0.9,
                "size_bytes": 10,
                "macs": 1_000_000,
                "latency": [{"batch": 1, "threads": 0, "threads_used": 2, "p50_ms": 0.6}],
            }
        ],
        "candidates": [
            {
                "name": "int8",
                "format": "tflite",
                "quant": "int8",
                "size_bytes": 3,
                "macs": 1_000_000,
                "parity": {"accuracy": 0.9, "agreement": 0.99},
                "latency": [
                    {"batch": 1, "threads": 2, "threads_used": 2, "p50_ms": 0.01},
                    {"batch": 1, "threads": 1, "threads_used": 1, "p50_ms": 0.02},
                ],
            }
        ],
    }
    keras, int8 = check_rows(result)
    assert (keras["latency_ms"], keras["threads"]) == (0.6, "2 (runtime's own)")
    assert (int8["latency_ms"], int8["threads"]) == (0.02, "1")  # 1 thread preferred
    assert keras["macs"] == int8["macs"] == 1_000_000  # the check's count travels to the report's table
