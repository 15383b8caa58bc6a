"""`edgexfer run`: a tiny pipeline end to end, resumed, re-run in part, and failing cleanly."""

import json
import subprocess
import sys
import textwrap

import pytest

from edgexfer.errors import ConfigError
from edgexfer.pipeline import EVENTS_FILE, run_pipeline
from kit import make_color_folder

pytestmark = pytest.mark.integration

PIPELINE = """\
name: tiny
data:
  colors: {path: DATA}
stages:
  finetune:
    data: colors
    backbone: cnn_tiny
    weights: none
    img_size: 16
    epochs: 10
    fine_tune_epochs: 0
    learning_rate: 0.05
  export:
    parent: finetune
    format: tflite
    quant: none
  check:
    artifacts: [export]
    data: colors
    min_agreement: 0.99
"""


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_color_folder(tmp_path_factory.mktemp("colors") / "data")


def write(tmp_path, colors, text=PIPELINE):
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).replace("DATA", str(colors)))
    return path


def events(run_dir):
    return [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]


def test_run_resume_and_partial_rerun(tmp_path, colors):
    path, run_dir = write(tmp_path, colors), tmp_path / "run"
    first = run_pipeline(path, run_dir=run_dir, log=lambda *_: None)
    assert {name: r["status"] for name, r in first["stages"].items()} == {
        "finetune": "done",
        "export": "done",
        "check": "done",
    }
    assert (run_dir / "export" / "model.tflite").is_file() and (run_dir / "check" / "check.json").is_file()
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<h2>Summary</h2>" in html
    assert "**Deployed:** `export/model.tflite`" in (run_dir / "report.md").read_text()

    again = run_pipeline(path, run_dir=run_dir, log=lambda *_: None)
    assert {r["status"] for r in again["stages"].values()} == {"skipped"}

    changed = run_pipeline(path, run_dir=run_dir, overrides=["export.quant=fp16"], log=lambda *_: None)
    assert [changed["stages"][s]["status"] for s in ("finetune", "export", "check")] == ["skipped", "done", "done"]

    only = run_pipeline(path, run_dir=run_dir, overrides=["export.quant=fp16"], only="check", log=lambda *_: None)
    assert only["stages"]["check"]["status"] == "done" and only["stages"]["finetune"]["status"] == "not selected"
    kinds = [e["event"] for e in events(run_dir)]
    assert kinds.count("run_start") == 4 and "stage_skip" in kinds


def test_a_failed_stage_keeps_earlier_artifacts_and_the_report_says_where(tmp_path, colors):
    # An impossible gate makes the last stage fail (exit code 3 on the CLI).
    path = write(
        tmp_path, colors, PIPELINE.replace("min_agreement: 0.99", "min_agreement: 0.99\n    max_acc_drop: -0.5")
    )
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgexfer",
            "run",
            str(path),
            "--run-dir",
            str(run_dir),
            "--tensorboard",
            str(tmp_path / "tb"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 3, result.stderr[-1500:]
    assert "Traceback" not in result.stderr and "check failed" in result.stderr
    assert (run_dir / "finetune" / "model.h5").is_file() and (run_dir / "export" / "model.tflite").is_file()
    assert "The run stopped at stage `check`" in (run_dir / "report.md").read_text()
    assert list((tmp_path / "tb" / "finetune").rglob("events.out.tfevents.*"))  # TensorBoard logs per stage
    assert events(run_dir)[-1] == {**events(run_dir)[-1], "event": "run_end", "failed_stage": "check"}


def test_run_dir_of_another_pipeline_is_refused(tmp_path, colors):
    path, run_dir = write(tmp_path, colors), tmp_path / "run"
    run_pipeline(path, run_dir=run_dir, only=None, log=lambda *_: None, overrides=["check.min_agreement=0.5"])
    other = write(tmp_path, colors, PIPELINE.replace("name: tiny", "name: other"))
    with pytest.raises(ConfigError, match="belongs to pipeline 'tiny'"):
        run_pipeline(other, run_dir=run_dir, log=lambda *_: None)


def test_only_needs_the_parent_artifact(tmp_path, colors):
    with pytest.raises(ConfigError, match="run the pipeline up to 'finetune' first"):
        run_pipeline(write(tmp_path, colors), run_dir=tmp_path / "fresh", only="export", log=lambda *_: None)
