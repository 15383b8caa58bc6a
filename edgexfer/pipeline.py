"""``edgexfer run PIPELINE.yaml``: the stages and their configs in one file, run in order,
resumable.

A pipeline file names its datasets and its stages::

    name: digits
    data:
      source: {dataset: mnist-5k}        # a bundled dataset, prepared under the run dir
      target: {path: /my/images}         # or any image folder
    stages:
      finetune: {data: source, backbone: efficientnet_lite0, img_size: 64}
      adapt:    {parent: finetune, source: source, target: target, method: pseudo-label}
      export:   {parent: adapt, format: tflite, quant: int8}

A stage's ``type`` defaults to its name. Keys that name earlier stages (``parent``,
``teacher``…) and datasets (``data``, ``source``…) are resolved; every other key is the
stage's own option, validated before anything runs. Each stage writes
``RUN_DIR/<stage>``; a stage re-runs only when its artifact is missing or its hash (type,
options, the hashes of the stages it reads, the data it reads) changed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgexfer.config import did_you_mean
from edgexfer.errors import ConfigError, EdgexferError
from edgexfer.train.common import tensorboard_logging

STATE_FILE = "pipeline-state.json"
EVENTS_FILE = "events.jsonl"
TOP_LEVEL_KEYS = ("name", "description", "run_dir", "data", "stages")
DATA_SPEC_KEYS = ("dataset", "path", "limit", "seed", "source")


# ---------------------------------------------------------------------------- stage table


@dataclass(frozen=True)
class StageType:
    """How a pipeline stage calls the API: which keys name stages or data, how to validate
    the rest, and how to run."""

    name: str
    run: Callable[..., Any]
    validate: Callable[[dict], Any]
    stage_keys: tuple[str, ...] = ()  # keys whose value is an earlier stage's name
    stage_list_keys: tuple[str, ...] = ()  # keys whose value is a list of stage names
    data_keys: tuple[str, ...] = ()  # keys whose value is a dataset name or a folder
    data_map_keys: tuple[str, ...] = ()  # keys whose value lists datasets (or maps NAME: folder)
    required: tuple[str, ...] = ()
    writes_artifact: bool = True
    summary: str = ""

    @property
    def reference_keys(self) -> tuple[str, ...]:
        return self.stage_keys + self.stage_list_keys + self.data_keys + self.data_map_keys


def _finetune(refs, options, out, ctx):
    from edgexfer.config import FinetuneConfig
    from edgexfer.train.finetune import finetune

    return finetune(refs["data"], out, FinetuneConfig.build(**options), progress=ctx.progress, log=ctx.log)


def _adapt(refs, options, out, ctx):
    from edgexfer.train.adapt import adapt

    source = refs.get("source")  # absent for the source-free method (shot)
    return adapt(refs["parent"], source, refs["target"], out, progress=ctx.progress, log=ctx.log, **options)


def _fuse(refs, options, out, ctx):
    from edgexfer.train.fuse import fuse

    source = refs.get("source_model") or options.pop("source_model_spec")
    extra = {key: refs[key] for key in ("val_data", "curve_data") if refs.get(key)}
    return fuse(source, refs["finetuned"], out, progress=ctx.progress, log=ctx.log, **extra, **options)


def _distill(refs, options, out, ctx):
    from edgexfer.compress import api as compress

    if refs.get("unlabelled"):
        options = {**options, "unlabelled": str(refs["unlabelled"])}
    return compress.distill(refs["teacher"], refs["data"], out, progress=ctx.progress, log=ctx.log, **options)


def _prune(refs, options, out, ctx):
    from edgexfer.compress import api as compress

    return compress.prune(refs["parent"], refs["data"], out, progress=ctx.progress, log=ctx.log, **options)


def _quantize(refs, options, out, ctx):
    from edgexfer.compress import api as compress

    return compress.quantize(refs["parent"], refs["data"], out, progress=ctx.progress, log=ctx.log, **options)


def _export(refs, options, out, ctx):
    from edgexfer.export.stage import export_stage

    options = dict(options)
    fmt = options.pop("format")
    return export_stage(
        refs["parent"],
        out,
        fmt,
        options.pop("quant", None),
        calibration_data=refs.get("calibration_data"),
        log=ctx.log,
        **options,
    )


def _check(refs, options, out, ctx):
    from edgexfer.evaluate.check import check_artifacts, gate_error

    result = check_artifacts(refs["artifacts"], refs["data"], out=out, log=ctx.log, **options)
    error = gate_error(result)
    if error is not None:
        raise error
    return result


def _evaluate(refs, options, out, ctx):
    from edgexfer.evaluate.domains import evaluate_domains

    domains = refs["domains"]
    try:
        result = evaluate_domains(refs["parent"], domains, **options)
    except ConfigError as exc:
        raise ConfigError(f"stage {out.name!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _validator(model_path: str, *, drop: tuple[str, ...] = ()):
    """Validate options against a pydantic config model (imported lazily by dotted path)."""

    def validate(options: dict) -> Any:
        import importlib

        module, name = model_path.rsplit(".", 1)
        model = getattr(importlib.import_module(module), name)
        values = {k: v for k, v in options.items() if k not in drop}
        # Data references resolved by the pipeline that the config also declares (fuse's
        # val_data) are validated with a stand-in folder, since they are paths only at run time.
        for key, value in options.get("__refs__", {}).items():
            if key in model.model_fields:
                values[key] = value
        values.pop("__refs__", None)
        return model.build(**values)

    return validate


def _validate_adapt(options: dict) -> Any:
    from edgexfer.train.adapt import source_problem

    config = _validator("edgexfer.train.adapt.AdaptConfig")(options)
    problem = source_problem(config.method, "source" in options.get("__refs__", {}))
    if problem:
        raise ConfigError(problem)
    return config


def _validate_export(options: dict) -> None:
    from edgexfer.export.formats import FORMATS, check_format_quant

    options = {k: v for k, v in options.items() if k != "__refs__"}
    if "format" not in options:
        raise ConfigError(f"export needs 'format' ({', '.join(FORMATS)})")
    unknown = set(options) - {"format", "quant", "calibration_images", "opset", "io_type"}
    if unknown:
        raise ConfigError(
            f"export: unknown option {sorted(unknown)[0]!r}; allowed: format, quant, "
            "calibration_images, opset, io_type, parent, calibration_data"
        )
    check_format_quant(options["format"], options.get("quant") or "none")


def _validate_check(options: dict) -> None:
    allowed = {"split", "min_agreement", "max_acc_drop", "max_images", "batch_size", "strict", "measure_latency"}
    unknown = set(options) - allowed - {"__refs__"}
    if unknown:
        raise ConfigError(
            f"check: unknown option {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(allowed))}, artifacts, data"
        )


def _validate_evaluate(options: dict) -> None:
    unknown = set(options) - {"split", "batch_size", "top_k", "strict", "class_map", "measure_latency", "__refs__"}
    if unknown:
        raise ConfigError(
            f"evaluate: unknown option {sorted(unknown)[0]!r}; allowed: split, batch_size, top_k, "
            "strict, class_map, measure_latency, parent, domains"
        )
    if "split" in options:
        from edgexfer.evaluate.splits import resolve_splits

        resolve_splits(options["split"], options.get("__refs__", {}).get("domains", {}), where="split")


# The data keys whose labels a stage trains on (or selects on); the others (adapt's target,
# distill's unlabelled, export's calibration_data) read images only.
LABELLED_DATA_KEYS = {
    "finetune": ("data",),
    "adapt": ("source",),
    "fuse": ("val_data",),
    "distill": ("data",),
    "prune": ("data",),
    "quantize": ("data",),
}


def _labelled_ancestry(parent: str, earlier: list[Stage]) -> list[dict[str, str]]:
    """The data references whose labels ``parent`` or any stage it was made from trained on."""
    by_name = {stage.name: stage for stage in earlier}
    seen, todo, used = set(), [parent], []
    while todo:
        stage = by_name.get(todo.pop())
        if stage is None or stage.name in seen:
            continue
        seen.add(stage.name)
        used += [stage.refs[key] for key in LABELLED_DATA_KEYS.get(stage.type.name, ()) if key in stage.refs]
        for key in stage.type.stage_keys:
            if isinstance(stage.refs.get(key), str):
                todo.append(stage.refs[key])
        for key in stage.type.stage_list_keys:
            todo.extend(stage.refs.get(key, []))
    return used


def _evaluate_defaults(options: dict, refs: dict, earlier: list[Stage]) -> dict:
    """An evaluate stage scores a domain the model (or an ancestor) trained on on its held-out
    test split only, the others on all their images, unless ``split`` says otherwise; and it
    times the model (batch 1) for the report's accuracy-latency plane."""
    used = _labelled_ancestry(refs["parent"], earlier)
    trained = [name for name, ref in refs["domains"].items() if ref in used]
    split = options.get("split")
    defaults = {name: ("test" if name in trained else "all") for name in refs["domains"]}
    if isinstance(split, dict):
        defaults.update(split)
    elif isinstance(split, str):
        defaults = dict.fromkeys(refs["domains"], split)
    return {
        **options,
        "split": defaults,
        "trained_domains": trained,
        "measure_latency": options.get("measure_latency", True),
    }


STAGE_TYPES: dict[str, StageType] = {
    stage.name: stage
    for stage in (
        StageType(
            "finetune",
            _finetune,
            _validator("edgexfer.config.FinetuneConfig"),
            data_keys=("data",),
            required=("data",),
            summary="fine-tune a pretrained backbone on an image folder",
        ),
        StageType(
            "adapt",
            _adapt,
            _validate_adapt,
            stage_keys=("parent",),
            data_keys=("source", "target"),
            required=("parent", "target"),  # source: every method but shot (_validate_adapt)
            summary="unsupervised domain adaptation to unlabelled target images",
        ),
        StageType(
            "fuse",
            _fuse,
            _validator("edgexfer.train.fuse.FuseConfig", drop=("source_model_spec",)),
            stage_keys=("source_model", "finetuned"),
            data_keys=("val_data",),
            data_map_keys=("curve_data",),
            required=("finetuned",),
            summary="weight-space interpolation of a source and a fine-tuned model",
        ),
        StageType(
            "distill",
            _distill,
            _validator("edgexfer.compress.config.DistillConfig"),
            stage_keys=("teacher",),
            data_keys=("data", "unlabelled"),
            required=("teacher", "data"),
            summary="knowledge distillation into a student",
        ),
        StageType(
            "prune",
            _prune,
            _validator("edgexfer.compress.config.PruneConfig"),
            stage_keys=("parent",),
            data_keys=("data",),
            required=("parent", "data"),
            summary="magnitude pruning while fine-tuning",
        ),
        StageType(
            "quantize",
            _quantize,
            _validator("edgexfer.compress.config.QuantizeConfig"),
            stage_keys=("parent",),
            data_keys=("data",),
            required=("parent", "data"),
            summary="QAT or PTQ settings",
        ),
        StageType(
            "export",
            _export,
            _validate_export,
            stage_keys=("parent",),
            data_keys=("calibration_data",),
            required=("parent",),
            summary="TFLite / ONNX / SavedModel with labels and preprocessing inside",
        ),
        StageType(
            "check",
            _check,
            _validate_check,
            stage_list_keys=("artifacts",),
            data_keys=("data",),
            required=("artifacts", "data"),
            writes_artifact=False,
            summary="parity with the Keras parent, size and latency",
        ),
        StageType(
            "evaluate",
            _evaluate,
            _validate_evaluate,
            stage_keys=("parent",),
            data_map_keys=("domains",),
            required=("parent", "domains"),
            writes_artifact=False,
            summary="accuracy on several domains and the gap",
        ),
    )
}


# ---------------------------------------------------------------------------- loading


@dataclass
class Stage:
    name: str
    type: StageType
    options: dict[str, Any]
    refs: dict[str, Any]  # reference key -> stage name(s) / data name / {name: data}
    line: int


@dataclass
class Pipeline:
    name: str
    path: Path
    data: dict[str, dict[str, Any]]
    stages: list[Stage]
    run_dir: Path
    text_sha256: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"no stage {name!r}{did_you_mean(name, [s.name for s in self.stages])}; "
            f"stages: {', '.join(s.name for s in self.stages)}"
        )


def load_pipeline(path: str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None) -> Pipeline:
    """Read, override (``--set key=value``) and validate a pipeline file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {str(path)!r} does not exist")
    from edgexfer.safe_yaml import read_text

    text = read_text(path, "pipeline file")
    try:
        from edgexfer.safe_yaml import load as safe_load_yaml

        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = safe_load_yaml(text, str(path))  # bounded alias expansion, no recursion
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    lines = _line_numbers(node)
    where = lambda *keys: f"{path}:{_line_of(lines, keys)}"  # noqa: E731
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping with 'name', 'data' and 'stages'")
    for override in overrides or []:
        _apply_override(raw, override)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{where(key)}: unknown key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}; "
                f"allowed: {', '.join(TOP_LEVEL_KEYS)}"
            )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: 'name' is required (a short name of this pipeline)")
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where('data')}: 'data' maps dataset names to {{dataset: NAME}} or {{path: DIR}}")
    for data_name, spec in data.items():
        _check_data_spec(data_name, spec, where("data", data_name))
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise ConfigError(
            f"{where('stages') if 'stages' in raw else path}: 'stages' must map stage names to "
            "their options, in the order they run"
        )
    stages: list[Stage] = []
    for stage_name, options in stages_raw.items():
        stages.append(_parse_stage(str(stage_name), options or {}, stages, data, lines, path))
    directory = Path(run_dir or raw.get("run_dir") or Path("runs") / name)
    return Pipeline(
        name=name,
        path=path,
        data=data,
        stages=stages,
        run_dir=directory,
        text_sha256=hashlib.sha256(text.encode()).hexdigest(),
        lines=lines,
    )


def _parse_stage(name: str, options: Any, earlier: list[Stage], data: dict, lines: dict, path: Path) -> Stage:
    line = _line_of(lines, ("stages", name))
    here = f"{path}:{line}: stage {name!r}"
    if not isinstance(options, dict):
        raise ConfigError(f"{here}: options must be a mapping")
    options = dict(options)
    type_name = options.pop("type", name)
    if type_name not in STAGE_TYPES:
        raise ConfigError(
            f"{here}: unknown stage type {type_name!r}{did_you_mean(type_name, STAGE_TYPES)}; "
            f"types: {', '.join(STAGE_TYPES)} (set 'type:' when the name is not a type)"
        )
    stage_type = STAGE_TYPES[type_name]
    for key in stage_type.required:
        if key not in options:
            raise ConfigError(f"{here}: {type_name} needs {key!r}")
    earlier_names = [s.name for s in earlier]
    refs: dict[str, Any] = {}

    def stage_ref(key: str, value: Any) -> str:
        key_line = _line_of(lines, ("stages", name, key))
        if not isinstance(value, str) or value not in earlier_names:
            hint = did_you_mean(str(value), earlier_names)
            raise ConfigError(
                f"{path}:{key_line}: stage {name!r}: {key}={value!r} is not an earlier stage{hint}; "
                f"earlier stages: {', '.join(earlier_names) or 'none'}"
            )
        return value

    for key in stage_type.stage_keys:
        if key in options:
            value = options.pop(key)
            if (
                type_name == "fuse"
                and key == "source_model"
                and isinstance(value, str)
                and value.startswith("imagenet:")
            ):
                options["source_model_spec"] = value  # the pretrained backbone itself, not a stage
                continue
            refs[key] = stage_ref(key, value)
    for key in stage_type.stage_list_keys:
        if key in options:
            values = options.pop(key)
            values = values if isinstance(values, list) else [values]
            refs[key] = [stage_ref(key, value) for value in values]
    for key in stage_type.data_keys:
        if key in options:
            refs[key] = _data_ref(
                options.pop(key), data, f"{path}:{_line_of(lines, ('stages', name, key))}: stage {name!r}: {key}"
            )
    for key in stage_type.data_map_keys:
        if key in options:
            values = options.pop(key)
            if not isinstance(values, (list, dict)) or not values:
                raise ConfigError(f"{here}: {key!r} lists dataset names (or maps NAME: DIR)")
            items = values.items() if isinstance(values, dict) else ((v, v) for v in values)
            refs[key] = {str(k): _data_ref(v, data, f"{here}: {key}") for k, v in items}
    if type_name == "fuse" and "source_model" not in refs and "source_model_spec" not in options:
        raise ConfigError(f"{here}: fuse needs 'source_model': an earlier stage or imagenet:<backbone>")
    try:
        stand_ins = {key: "<folder>" for key in stage_type.data_keys if key in refs}
        stand_ins.update({key: dict.fromkeys(refs[key], "<folder>") for key in stage_type.data_map_keys if key in refs})
        stage_type.validate({**options, "__refs__": stand_ins})
    except ConfigError as exc:
        raise ConfigError(f"{here}: {exc}") from None
    if type_name == "evaluate":
        options = _evaluate_defaults(options, refs, earlier)
    if type_name == "check" and "split" not in options:
        # A check on a domain its models trained on scores the held-out test split, as evaluate does.
        used = [ref for artifact in refs.get("artifacts", []) for ref in _labelled_ancestry(artifact, earlier)]
        if refs.get("data") in used:
            options["split"] = "test"
    return Stage(name=name, type=stage_type, options=options, refs=refs, line=line)


def _data_ref(value: Any, data: dict, where: str) -> dict[str, str]:
    """A dataset named in ``data:`` or a literal folder path."""
    if isinstance(value, str) and value in data:
        return {"data": value}
    if isinstance(value, str) and ("/" in value or Path(value).exists()):
        return {"path": value}
    raise ConfigError(
        f"{where}={value!r} is neither a dataset of 'data:'{did_you_mean(str(value), data)} "
        f"nor a folder path; datasets: {', '.join(data) or 'none'}"
    )


def _check_data_spec(name: str, spec: Any, where: str) -> None:
    if not isinstance(spec, dict) or ("dataset" in spec) == ("path" in spec):
        raise ConfigError(f"{where}: dataset {name!r} needs exactly one of 'dataset: NAME' (bundled) or 'path: DIR'")
    for key in spec:
        if key not in DATA_SPEC_KEYS:
            raise ConfigError(f"{where}: dataset {name!r}: unknown key {key!r}{did_you_mean(key, DATA_SPEC_KEYS)}")


def _apply_override(raw: dict, override: str) -> None:
    """``--set stages.finetune.epochs=3`` (or ``finetune.epochs=3``); the value is YAML."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: use KEY=VALUE, e.g. finetune.epochs=3")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    if parts[0] not in TOP_LEVEL_KEYS and parts[0] in (raw.get("stages") or {}):
        parts = ["stages", *parts]
    target = raw
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            if part in target:
                raise ConfigError(f"--set {override!r}: {part!r} is not a mapping")
            known = list(target)
            raise ConfigError(f"--set {override!r}: no {part!r}{did_you_mean(part, known)}; have: {', '.join(known)}")
        target = target[part]
    from edgexfer.safe_yaml import load as safe_load_yaml

    target[parts[-1]] = safe_load_yaml(value, f"--set {override!r}")


def _line_numbers(node) -> dict[tuple, int]:
    """1-based line of every mapping key, by its path of keys (from yaml.compose)."""
    lines: dict[tuple, int] = {}

    def walk(current, prefix: tuple) -> None:
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                path = (*prefix, key_node.value)
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path)

    if node is not None:
        walk(node, ())
    return lines


def _line_of(lines: dict[tuple, int], keys: tuple) -> int:
    while keys and keys not in lines:
        keys = keys[:-1]
    return lines.get(keys, 1)


# ---------------------------------------------------------------------------- running


@dataclass
class RunContext:
    run_dir: Path
    progress: bool = False
    log: Callable[..., None] = print


class _Events:
    """The run's JSON-lines event log."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "event": event, **fields}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")


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
    state = _load_state(run_dir, pipeline)
    events = _Events(run_dir / EVENTS_FILE)
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
            _save_state(run_dir, state)
            try:
                with tensorboard_logging(Path(tensorboard) / stage.name if tensorboard else None):
                    stage.type.run(refs, dict(stage.options), out, ctx)
            except BaseException as exc:
                seconds = round(time.perf_counter() - stage_started, 1)
                message = str(exc) if isinstance(exc, EdgexferError) else f"{type(exc).__name__}: {exc}"
                state["stages"][stage.name] = {"hash": digest, "status": "failed", "out": str(out), "error": message}
                _save_state(run_dir, state)
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
            _save_state(run_dir, state)
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


def _load_state(run_dir: Path, pipeline: Pipeline) -> dict[str, Any]:
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


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(run_dir / STATE_FILE)


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
