"""Running a loaded pipeline: each stage in order, skipped when its artifact is up to date
(its hash: type, options, the hashes of the stages it reads, the data it reads), with the
state file and event log kept as it goes, and the run's report at the end."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgexfer.errors import ConfigError, EdgexferError
from edgexfer.pipeline.load import Pipeline, Stage, load_pipeline
from edgexfer.pipeline.state import EVENTS_FILE, EventLog, load_state, save_state
from edgexfer.train.common import tensorboard_logging


@dataclass
class RunContext:
    run_dir: Path
    progress: bool = False
    log: Callable[..., None] = print


def stage_hash(pipeline: Pipeline, stage: Stage, hashes: dict[str, str]) -> str:
    """What decides whether a stage's artifact is still valid."""
    refs: dict[str, Any] = {}
    for key, value in stage.refs.items():
        if key in stage.type.stage_keys:
            refs[key] = hashes[value]
        elif key in stage.type.stage_list_keys:
            refs[key] = [hashes[v] for v in value]
        elif key in stage.type.data_map_keys:
            refs[key] = {k: _data_identity(pipeline, v) for k, v in value.items()}
        else:
            refs[key] = _data_identity(pipeline, value)
    payload = {"type": stage.type.name, "options": stage.options, "refs": refs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _data_identity(pipeline: Pipeline, ref: dict[str, str]) -> Any:
    return pipeline.data[ref["data"]] if "data" in ref else {"path": str(Path(ref["path"]).resolve())}


def run_pipeline(
    path: str | Path,
    *,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    from_stage: str | None = None,
    only: str | None = None,
    progress: bool = False,
    log: Callable[..., None] = print,
    tensorboard: str | Path | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a pipeline; returns per-stage status, the run dir and the report path."""
    pipeline = load_pipeline(path, overrides, run_dir)
    if from_stage and only:
        raise ConfigError("use either --from or --only, not both")
    for name in (from_stage, only):
        if name:
            pipeline.stage(name)
    run_dir = pipeline.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir, pipeline)
    events = EventLog(run_dir / EVENTS_FILE)
    ctx = RunContext(run_dir=run_dir, progress=progress, log=log)

    events("run_start", pipeline=pipeline.name, file=str(pipeline.path), from_stage=from_stage, only=only)
    data_paths = _prepare_data(pipeline, run_dir, log)
    hashes: dict[str, str] = {}
    forced = False
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        for stage in pipeline.stages:
            digest = stage_hash(pipeline, stage, hashes)
            hashes[stage.name] = digest
            out = run_dir / stage.name
            recorded = state["stages"].get(stage.name, {})
            forced = forced or stage.name == from_stage
            if only and stage.name != only:
                results[stage.name] = {"status": "not selected"}
                continue
            up_to_date = (
                recorded.get("hash") == digest and recorded.get("status") == "done" and _output_exists(stage, out)
            )
            if up_to_date and not forced and stage.name != only:
                log(f"[dim]{stage.name}: up to date, skipped[/dim]")
                events("stage_skip", stage=stage.name, reason="up to date")
                results[stage.name] = {"status": "skipped", "out": str(out)}
                continue
            refs = _resolve_refs(stage, run_dir, data_paths, pipeline)
            log(f"[bold]{stage.name}[/bold] ({stage.type.name}): {stage.type.summary}")
            events("stage_start", stage=stage.name, type=stage.type.name, hash=digest)
            stage_started = time.perf_counter()
            state["stages"][stage.name] = {"hash": digest, "status": "running", "out": str(out)}
            save_state(run_dir, state)
            try:
                with tensorboard_logging(Path(tensorboard) / stage.name if tensorboard else None):
                    stage.type.run(refs, dict(stage.options), out, ctx)
            except BaseException as exc:
                seconds = round(time.perf_counter() - stage_started, 1)
                message = str(exc) if isinstance(exc, EdgexferError) else f"{type(exc).__name__}: {exc}"
                state["stages"][stage.name] = {"hash": digest, "status": "failed", "out": str(out), "error": message}
                save_state(run_dir, state)
                events(
                    "stage_fail",
                    stage=stage.name,
                    seconds=seconds,
                    error=message,
                    traceback=None if isinstance(exc, EdgexferError) else traceback.format_exc(limit=5),
                )
                results[stage.name] = {"status": "failed", "error": message}
                raise
            seconds = round(time.perf_counter() - stage_started, 1)
            state["stages"][stage.name] = {
                "hash": digest,
                "status": "done",
                "out": str(out),
                "seconds": seconds,
                "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
            save_state(run_dir, state)
            events("stage_end", stage=stage.name, seconds=seconds)
            results[stage.name] = {"status": "done", "out": str(out), "seconds": seconds}
    finally:
        wall = round(time.perf_counter() - started, 1)
        failed = next((name for name, r in results.items() if r["status"] == "failed"), None)
        events("run_end", seconds=wall, failed_stage=failed)
        summary = {
            "pipeline": pipeline.name,
            "run_dir": str(run_dir),
            "stages": results,
            "wall_seconds": wall,
            "failed_stage": failed,
        }
        if report:
            from edgexfer.evaluate.report import write_report

            try:
                summary.update(
                    write_report(
                        run_dir,
                        pipeline_name=pipeline.name,
                        stage_order=[s.name for s in pipeline.stages],
                        stage_types={s.name: s.type.name for s in pipeline.stages},
                        stopped_at=failed,
                        state=state,
                    )
                )
            except Exception as exc:  # a report must never hide the stage's own error
                events("report_fail", error=f"{type(exc).__name__}: {exc}")
                if failed is None:
                    raise
    return summary


def _output_exists(stage: Stage, out: Path) -> bool:
    if stage.type.writes_artifact:
        return (out / "manifest.json").is_file()
    return out.is_dir() and any(out.iterdir())


def _resolve_refs(stage: Stage, run_dir: Path, data_paths: dict[str, str], pipeline: Pipeline) -> dict[str, Any]:
    resolved: dict[str, Any] = {}
    for key, value in stage.refs.items():
        if key in stage.type.stage_keys:
            resolved[key] = _existing_output(pipeline.stage(value), run_dir, stage.name)
        elif key in stage.type.stage_list_keys:
            resolved[key] = [_existing_output(pipeline.stage(v), run_dir, stage.name) for v in value]
        elif key in stage.type.data_map_keys:
            resolved[key] = {k: _data_path(v, data_paths) for k, v in value.items()}
        else:
            resolved[key] = _data_path(value, data_paths)
    return resolved


def _existing_output(parent: Stage, run_dir: Path, child: str) -> str:
    out = run_dir / parent.name
    if not _output_exists(parent, out):
        raise ConfigError(
            f"stage {child!r} reads stage {parent.name!r}, whose output {str(out)!r} is missing; "
            f"run the pipeline up to {parent.name!r} first (drop --only, or use --from {parent.name})"
        )
    return str(out)


def _data_path(ref: dict[str, str], data_paths: dict[str, str]) -> str:
    return data_paths[ref["data"]] if "data" in ref else ref["path"]


def _prepare_data(pipeline: Pipeline, run_dir: Path, log) -> dict[str, str]:
    """Bundled datasets are prepared under ``RUN_DIR/data`` (a no-op when already there)."""
    from edgexfer.data.bundled import prepare_dataset

    paths: dict[str, str] = {}
    for name, spec in pipeline.data.items():
        if "path" in spec:
            folder = Path(spec["path"])
            if not folder.is_dir():
                raise ConfigError(f"dataset {name!r}: path {str(folder)!r} is not a directory")
            paths[name] = str(folder)
            continue
        folder = run_dir / "data" / name
        summary = prepare_dataset(
            spec["dataset"], folder, source=spec.get("source"), limit=spec.get("limit"), seed=spec.get("seed", 0)
        )
        if not summary.get("reused"):
            log(f"prepared {spec['dataset']} → {folder} ({summary.get('images')} images)")
        paths[name] = str(folder)
    return paths
