"""The report opens with the answer, read from the files a run's stages wrote.

A synthetic run directory (the JSON files the stages write, no TensorFlow): the summary names
the deployed files and compares them with the fine-tuned teacher; every accuracy says which
images it was measured on; the headline, the report and the check agree; a run that stopped
half way says which stages are missing.
"""

import json
import re

from edgexfer.demo import headline_rows
from edgexfer.evaluate.report import write_report

ORDER = ["finetune", "source_only", "adapt", "quantize", "student", "export_tflite", "check", "check_target"]
TYPES = {
    "finetune": "finetune",
    "source_only": "evaluate",
    "adapt": "adapt",
    "quantize": "quantize",
    "student": "evaluate",
    "export_tflite": "export",
    "check": "check",
    "check_target": "check",
}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def keras_stage(run, name, parent, params, size, macs=None):
    write(
        run / name / "manifest.json",
        {
            "stage": name,
            "model_file": "model.h5",
            "label_names": ["0", "1"],
            "parent": {"path": str(run / parent)} if parent else None,
        },
    )
    metrics = {"params": params, "peak_rss_mb": 1331.6, "alpha": 0.0, "test_accuracy": 0.986}
    write(run / name / "metrics.json", {**metrics, **({"macs": macs} if macs else {})})
    (run / name / "model.h5").write_bytes(b"x" * size)


def evaluation(run, name, model, source, target, macs, p50):
    write(
        run / name / "evaluate.json",
        {
            "artifact": str(run / model),
            "reference": "source",
            "max_gap": source - target,
            "domains": {
                "source": {
                    "data": str(run / "data/source"),
                    "split": "test",
                    "n": 500,
                    "accuracy": source,
                    "labels_used_for_training": True,
                    "confusion_matrix": [[250, 0], [1, 249]],
                },
                "target": {
                    "data": str(run / "data/target"),
                    "split": "all",
                    "n": 1797,
                    "accuracy": target,
                    "labels_used_for_training": False,
                },
            },
            "macs": macs,
            "latency": [{"batch": 1, "threads": 0, "threads_used": 2, "p50_ms": p50}],
        },
    )


def make_run(tmp_path, finished=ORDER):
    run = tmp_path / "run"
    (run / "data/source").mkdir(parents=True)
    (run / "data/target").mkdir(parents=True)
    keras_stage(run, "finetune", None, 3_400_000, 14_000_000)
    keras_stage(run, "adapt", "finetune", 3_400_000, 14_000_000, macs=25_100_000)
    keras_stage(run, "quantize", "adapt", 40_000, 200_000)
    evaluation(run, "source_only", "finetune", 0.986, 0.41, 25_000_000, 9.0)
    evaluation(run, "student", "quantize", 0.972, 0.80, 600_000, 0.7)
    write(
        run / "export_tflite" / "manifest.json",
        {
            "stage": "export",
            "model_file": "model.tflite",
            "parent": {"path": str(run / "quantize")},
            "config": {"format": "tflite", "quant": "int8"},
        },
    )
    (run / "export_tflite" / "model.tflite").write_bytes(b"not a real flatbuffer")
    for name, domain, n, accuracy in (("check", "source", 500, 0.972), ("check_target", "target", 1797, 0.79)):
        write(
            run / name / "check.json",
            {
                "data": str(run / "data" / domain),
                "split": "test" if domain == "source" else "all",
                "n": n,
                "passed": True,
                "candidates": [
                    {
                        "name": "export_tflite",
                        "artifact": str(run / "export_tflite"),
                        "format": "tflite",
                        "quant": "int8",
                        "size_bytes": 61_000,
                        "macs": 600_000,
                        "parity": {"accuracy": accuracy, "agreement": 0.99},
                        "latency": [{"batch": 1, "threads": 1, "threads_used": 1, "p50_ms": 0.05}],
                    }
                ],
                "parents": [
                    {
                        "name": "quantize",
                        "artifact": str(run / "quantize"),
                        "accuracy": accuracy,
                        "size_bytes": 200_000,
                        "latency": [],
                    }
                ],
            },
        )
    write(
        run / "seeds.json",
        {
            "seeds": [0, 1, 2],
            "metrics": {  # as `demo --seeds` names the headline's figures
                "export_tflite (TFLite int8) · target accuracy": {
                    "mean": 0.79,
                    "std": 0.005,
                    "values": [0.785, 0.79, 0.795],
                }
            },
        },
    )
    state = {
        "pipeline": "digits",
        "file": "digits.yaml",
        "stages": {name: {"status": "done", "seconds": 12.5} for name in finished},
    }
    write(run / "pipeline-state.json", state)
    return run, state


def report(run, state):
    paths = write_report(run, pipeline_name="digits", stage_order=ORDER, stage_types=TYPES, state=state)
    return (run / "report.md").read_text(), (run / "report.html").read_text(), paths


def test_the_summary_comes_first_and_names_what_is_deployed(tmp_path):
    md, page, _ = report(*make_run(tmp_path))
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert headings == ["Summary", "The whole road", "Cross-domain accuracy", "Lineage"]
    summary = md.split("## The whole road")[0]
    assert "**Deployed:** `export_tflite/model.tflite` (TFLite int8, 61 kB)" in summary
    # Against the fine-tuned teacher: accuracy per domain in points, and how much smaller and faster.
    assert (
        "| `export_tflite` | fine-tuned teacher `finetune` (= the source-only baseline) | −1.40 pts | +38.00 pts "
        "| 230× smaller | 180× faster" in summary
    )
    assert "source (test split, 500)" in summary and "target (target, all 1,797)" in summary
    assert "the held-out test split, 500 images, the same for every model" in summary
    assert "all 1,797 images (its labels were never used in training)" in summary
    # The spread over seeds next to the number it qualifies; every seed's value folded at the end.
    assert "| `export_tflite` (TFLite int8) | deployed | 97.20 % | 79.00 % ± 0.50 pts |" in summary
    assert "78.50 %, 79.00 %, 79.50 %" in md.split("<summary><b>Spread over seeds</b></summary>")[1]
    # The per-stage tables and confusion matrices are folded at the end, formatted by kind.
    assert md.index("<summary><b>Metrics of each stage</b></summary>") > md.index("## Lineage")
    assert "| peak rss mb | 1.33 GB |" in md and "| alpha | 0 |" in md
    # A Keras stage's own MAC count (metrics.json) reaches the road's table.
    assert "| `adapt` | Keras | `finetune` | — | — | 14 MB | — | 25.1 M | 3,400,000 |" in md
    # The parity tables show MACs next to size and latency (the check's count of each file).
    parity = md.split("<summary><b>Parity checks</b></summary>")[1]
    assert "| size | latency (batch 1) | MACs | threads |" in parity
    assert re.search(r"\| export_tflite \| tflite/int8 \|.*\| 600 k \| 1 \|", parity)
    assert not re.search(r"\b\d\.\d{4}\b", md), "a raw float with four decimals"
    # One self-contained HTML file: every image inline, the same sections.
    assert page.count("<img") >= 2 and 'src="data:image/png;base64,' in page
    assert not re.search(r'src="(?!data:)', page)
    assert page.index('id="summary"') < page.index('id="the-whole-road"') < page.index("<details")


def test_headline_report_and_check_agree_on_the_same_images(tmp_path):
    run, state = make_run(tmp_path)
    md, _, _ = report(run, state)
    rows = {row["model"]: row for row in headline_rows(run)}
    deployed, student = rows["export_tflite (TFLite int8)"], rows["quantize (Keras)"]
    check = json.loads((run / "check" / "check.json").read_text())
    assert deployed["source_accuracy"] == check["candidates"][0]["parity"]["accuracy"]
    # The Keras student's number is its evaluate stage's, on the same 500 held-out images the check used.
    student_eval = json.loads((run / "student" / "evaluate.json").read_text())["domains"]["source"]
    assert (student_eval["split"], student_eval["n"]) == (check["split"], check["n"])
    assert student["source_accuracy"] == student_eval["accuracy"] == check["parents"][0]["accuracy"]
    assert "| `quantize` | fine-tuned teacher" not in md  # only deployed files are compared
    assert deployed["macs"] == student["macs"] == 600_000  # an export runs its parent's graph


def test_a_run_that_stopped_half_way_says_which_stages_are_missing(tmp_path):
    run, state = make_run(tmp_path, finished=ORDER[:5])
    state["stages"]["export_tflite"] = {"status": "failed", "error": "ExportError: boom"}
    for name in ("export_tflite", "check", "check_target"):
        for path in (run / name).iterdir():
            path.unlink()
    write_report(
        run, pipeline_name="digits", stage_order=ORDER, stage_types=TYPES, state=state, stopped_at="export_tflite"
    )
    md = (run / "report.md").read_text()
    summary = md.split("## The whole road")[0]
    assert "**The run stopped at stage `export_tflite`**: ExportError: boom" in summary
    assert "**Missing** (3 of 8 stages not finished" in summary
    assert "`export_tflite` (failed), `check` (not run), `check_target` (not run)" in summary
    assert "**Deployed:**" not in summary  # nothing was exported yet
