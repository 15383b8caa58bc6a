"""The demo's headline table is read from the run directory's JSON files."""

import json

from edgexfer.demo import TEACHER, headline_rows


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_every_keras_row_gets_its_batch1_latency(tmp_path):
    run = tmp_path / "run"
    for stage, params in (("finetune", 3_000_000), ("adapt", 3_000_000), ("quantize", 100_000)):
        write(run / stage / "metrics.json", {"params": params})
        (run / stage / "model.h5").write_bytes(b"x" * (params // 1000))
    for name, stage, accuracy in (("source_only", "finetune", 0.3), ("adapted", "adapt", 0.8),
                                  ("student", "quantize", 0.1)):
        write(run / name / "evaluate.json", {"artifact": str(run / stage),
                                             "domains": {"source": {"accuracy": 0.99},
                                                         "target": {"accuracy": accuracy}}})
    keras = [{"batch": 1, "threads": 0, "p50_ms": 9.0}, {"batch": 8, "threads": 0, "p50_ms": 20.0}]
    device = [{"batch": 1, "threads": 1, "p50_ms": 0.2}, {"batch": 1, "threads": 2, "p50_ms": 0.1}]
    write(run / "check_adapted" / "check.json", {
        "parents": [{"artifact": str(run / "adapt"), "latency": keras}],
        "candidates": [{"format": "tflite", "quant": "int8", "parity": {"accuracy": 0.79}, "size_bytes": 1000,
                        "latency": device}]})
    student_file = {"format": "tflite", "quant": "int8", "size_bytes": 100,
                    "latency": [{"batch": 1, "threads": 1, "p50_ms": 0.005}]}
    write(run / "check" / "check.json", {
        "parents": [{"artifact": str(run / "quantize"), "latency": [{"batch": 1, "threads": 0, "p50_ms": 0.7}]}],
        "candidates": [{**student_file, "parity": {"accuracy": 0.97}}]})
    write(run / "check_target" / "check.json", {
        "parents": [{"artifact": str(run / "quantize"), "latency": []}],
        "candidates": [{**student_file, "parity": {"accuracy": 0.9}}]})

    rows = {row["model"]: row for row in headline_rows(run)}
    assert rows["teacher adapted"]["latency_ms"] == 9.0
    assert rows[TEACHER]["latency_ms"] == 9.0  # same graph as the adapted teacher
    assert rows[TEACHER]["target_accuracy"] == 0.3 and rows[TEACHER]["params"] == 3_000_000
    assert rows["student (distilled, pruned, QAT; Keras)"]["latency_ms"] == 0.7
    student = rows["deployed student: tflite int8"]  # one row, an accuracy from each domain's check
    assert (student["source_accuracy"], student["target_accuracy"], student["latency_ms"]) == (0.97, 0.9, 0.005)
    deployed = rows["deployed adapted teacher: tflite int8"]
    assert deployed["latency_ms"] == 0.2 and deployed["target_accuracy"] == 0.79  # 1 thread preferred
