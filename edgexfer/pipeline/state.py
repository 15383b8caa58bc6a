"""A run directory's record of itself: the state file (each stage's hash, status, output and
time; what resume reads) and the JSON-lines event log."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from edgexfer.errors import ConfigError
from edgexfer.pipeline.load import Pipeline, load_pipeline
from edgexfer.tempfiles import write_text_atomically

STATE_FILE = "pipeline-state.json"
EVENTS_FILE = "events.jsonl"


class EventLog:
    """The run's JSON-lines event log."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "event": event, **fields}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


def load_state(run_dir: Path, pipeline: Pipeline) -> dict[str, Any]:
    """The state of ``run_dir`` for ``pipeline`` (a new one for a new run directory); refuses a
    directory of another pipeline or one that is not a run directory."""
    path = run_dir / STATE_FILE
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("pipeline") != pipeline.name:
            raise ConfigError(
                f"run directory {str(run_dir)!r} belongs to pipeline {state.get('pipeline')!r}, not "
                f"{pipeline.name!r}; choose another --run-dir or remove that directory"
            )
        state["file"] = str(pipeline.path)
        return state
    if run_dir.exists() and any(p for p in run_dir.iterdir() if p.name not in (EVENTS_FILE,)):
        raise ConfigError(
            f"run directory {str(run_dir)!r} exists and is not an edgexfer run; choose another "
            "--run-dir so nothing of yours is overwritten"
        )
    return {"pipeline": pipeline.name, "file": str(pipeline.path), "stages": {}}


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    write_text_atomically(run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def rebuild_report(run_dir: str | Path) -> dict[str, str]:
    """Rebuild a run's report from its state file and the files its stages wrote."""
    from edgexfer.evaluate.report import write_report

    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory of `edgexfer run` (no {STATE_FILE})")
    state = json.loads(state_path.read_text())
    pipeline = load_pipeline(state["file"], run_dir=run_dir) if Path(state["file"]).is_file() else None
    order = [s.name for s in pipeline.stages] if pipeline else list(state["stages"])
    types = {s.name: s.type.name for s in pipeline.stages} if pipeline else {}
    failed = next((name for name, s in state["stages"].items() if s.get("status") == "failed"), None)
    return write_report(
        run_dir, pipeline_name=state["pipeline"], stage_order=order, stage_types=types, stopped_at=failed, state=state
    )
