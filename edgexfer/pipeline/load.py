"""Loading a pipeline file (``edgexfer run PIPELINE.yaml``): the stages and their configs in one
file, validated with line numbers before anything runs.

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
``teacher``…) and datasets (``data``, ``source``…) are resolved; every other key is a field
of the stage's config model (``edgexfer.pipeline.stages``), validated before anything runs.
Each stage writes
``RUN_DIR/<stage>``; a stage re-runs only when its artifact is missing or its hash (type,
options, the hashes of the stages it reads, the data it reads) changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgexfer.config import did_you_mean
from edgexfer.errors import ConfigError
from edgexfer.pipeline.stages import LABELLED_DATA_KEYS, STAGE_TYPES, StageType

TOP_LEVEL_KEYS = ("name", "description", "run_dir", "data", "stages")
DATA_SPEC_KEYS = ("dataset", "path", "limit", "seed", "source")


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
    # Data references are folders only at run time: a stand-in for each is validated where the
    # stage's config declares it (fuse's val_data, export's calibration_data).
    stand_ins: dict[str, Any] = {key: "<folder>" for key in stage_type.data_keys if key in refs}
    stand_ins.update({key: dict.fromkeys(refs[key], "<folder>") for key in stage_type.data_map_keys if key in refs})
    try:
        stage_type.validate(options, stand_ins)
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
