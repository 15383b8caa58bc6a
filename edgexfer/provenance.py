"""What a stage was called with, recorded in its artifact so ``edgexfer reproduce`` can call it again.

A stage's entry point (the function that receives a built config) is wrapped with
:func:`recorded`. While it runs, the call (function, arguments as it received them, paths
made absolute, configs as their full field values) is held in a context variable, and
``ArtifactWriter.commit`` stores it in ``manifest.extra["invocation"]`` together with:

- ``inputs``: every path argument that existed, with a content digest: the sha256 of an
  input artifact's model file, or of a data folder's files (names and bytes), so a changed
  folder is told apart from a failure of determinism;
- ``environment``: what decides whether floating-point results repeat bit for bit: CPU
  model and instruction-set extensions, CPU and thread counts, oneDNN, GPUs.

This module imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgexfer.artifact import MANIFEST, Artifact, extra_at_commit, sha256_path
from edgexfer.errors import ArtifactError

# Arguments that do not change what a stage computes (callbacks, progress bars).
NOT_RECORDED = frozenset({"progress", "log"})
# CPU features that change which kernels TensorFlow / XNNPACK / oneDNN pick, and so the
# order of floating-point operations.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)
# Environment variables that change threading or kernels.
ENV_VARS = (
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "TF_DETERMINISTIC_OPS",
    "CUDA_VISIBLE_DEVICES",
    "EDGEXFER_LOGICAL_CPUS",
)

_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("edgexfer_invocation", default=None)


def recorded(function: Callable) -> Callable:
    """Record each call of a stage entry point for the artifact it writes (see module docstring).

    The wrapped function must take the output directory as ``out``.
    """
    signature = inspect.signature(function)
    name = f"{function.__module__}:{function.__qualname__}"

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments: dict[str, Any] = {}
        for key, value in bound.arguments.items():
            kind = signature.parameters[key].kind
            if key in NOT_RECORDED or key == "out":
                continue
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update({k: encode(v) for k, v in value.items() if k not in NOT_RECORDED})
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[key] = encode(value, path_parameter=_is_path_parameter(signature.parameters[key]))
        record = {
            "function": name,
            "arguments": arguments,
            "out": str(Path(bound.arguments["out"]).resolve()),
            "cwd": os.getcwd(),
            "started": time.time(),
        }
        token = _CURRENT.set(record)
        try:
            with extra_at_commit(_record_invocation):
                return function(*args, **kwargs)
        finally:
            _CURRENT.reset(token)

    return wrapper


def current_invocation() -> dict[str, Any] | None:
    """The record of the stage call in progress, completed with inputs and environment, or None.

    Asked for when an artifact is committed (``artifact.extra_at_commit``); a commit for another
    directory than the call's ``out`` (a helper artifact a stage writes on the side) gets no record.
    """
    record = _CURRENT.get()
    if record is None:
        return None
    record = dict(record)
    record["seconds"] = round(time.time() - record.pop("started"), 3)
    record["inputs"] = input_digests(record["arguments"])
    record["environment"] = environment()
    return record


def matches_out(record: dict[str, Any], out: str | os.PathLike[str]) -> bool:
    return record.get("out") == str(Path(out).resolve())


def _record_invocation(manifest, out: Path) -> None:
    """Put the stage call in progress in the manifest of the artifact it writes to ``out``."""
    record = current_invocation()
    if record is not None and matches_out(record, out):
        manifest.extra = {**manifest.extra, "invocation": {**record, "stage": manifest.stage}}


# ---------------------------------------------------------------------------- arguments


def _is_path_parameter(parameter: inspect.Parameter) -> bool:
    """A parameter that takes a folder or artifact (``data_dir``, ``model: str | Path``)."""
    return parameter.name.endswith("_dir") or any(word in str(parameter.annotation) for word in ("Path", "PathLike"))


def encode(value: Any, path_parameter: bool = False) -> Any:
    """A JSON form of an argument that :func:`decode` turns back into an equal one.

    A string becomes an absolute path when it names something that exists and either looks
    like a path or is the value of a ``path_parameter``.
    """
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        cls = type(value)
        return {"$config": f"{cls.__module__}:{cls.__qualname__}", "values": value.model_dump(mode="json")}
    if isinstance(value, os.PathLike):
        return {"$path": str(Path(value).resolve())}
    if isinstance(value, str):
        is_path = _names_existing_path(value) or (path_parameter and bool(value) and os.path.exists(value))
        return {"$path": str(Path(value).resolve())} if is_path else value
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return {"$unreplayable": f"{type(value).__name__}: {value!r}"[:200]}


def decode(value: Any) -> Any:
    import importlib

    from edgexfer.errors import ArtifactError

    if isinstance(value, dict):
        if "$config" in value:
            module, qualname = value["$config"].split(":", 1)
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            return cls.model_validate(value["values"])
        if "$path" in value:
            return value["$path"]
        if "$unreplayable" in value:
            raise ArtifactError(
                f"the stage was called with an argument edgexfer cannot record "
                f"({value['$unreplayable']}); it cannot be re-run from its manifest"
            )
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _names_existing_path(value: str) -> bool:
    """A string argument is a path when it names something that exists and looks like a path
    (a bare word such as ``coral`` is an option even if a folder of that name is in the cwd)."""
    return bool(value) and (os.sep in value or value.startswith(".")) and os.path.exists(value)


def recorded_paths(arguments: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(argument name, absolute path)`` of every path in recorded arguments, including the
    fields of a config that name existing paths (relative ones against the current directory)."""
    if isinstance(arguments, dict):
        if "$path" in arguments:
            yield prefix, arguments["$path"]
            return
        if "$config" in arguments:
            yield from _config_paths(arguments["values"], prefix)
            return
        for key, value in arguments.items():
            yield from recorded_paths(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(arguments, list):
        for index, value in enumerate(arguments):
            yield from recorded_paths(value, f"{prefix}[{index}]")


def _config_paths(values: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(values, str) and _names_existing_path(values):
        yield prefix, str(Path(values).resolve())
    elif isinstance(values, dict):
        for key, value in values.items():
            yield from _config_paths(value, f"{prefix}.{key}")
    elif isinstance(values, list):
        for index, value in enumerate(values):
            yield from _config_paths(value, f"{prefix}[{index}]")


# ---------------------------------------------------------------------------- inputs


def input_digests(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    return [describe_input(name, path) for name, path in recorded_paths(arguments)]


def describe_input(argument: str, path: str) -> dict[str, Any]:
    """What an input path held: an artifact (its model file's sha256), a folder or a file."""
    target = Path(path)
    entry: dict[str, Any] = {"argument": argument, "path": path}
    if not target.exists():
        return {**entry, "kind": "missing"}
    if target.is_dir() and (target / MANIFEST).is_file():
        try:
            artifact = Artifact(target)
            return {
                **entry,
                "kind": "artifact",
                "stage": artifact.manifest.stage,
                "sha256": sha256_path(artifact.model_path),
            }
        except ArtifactError:
            pass
    if target.is_dir():
        return {**entry, "kind": "folder", **folder_digest(target)}
    return {**entry, "kind": "file", "sha256": sha256_path(target)}


_FOLDER_DIGESTS: dict[tuple, dict[str, Any]] = {}


def folder_digest(folder: Path) -> dict[str, Any]:
    """File count and sha256 of a folder's files (relative names and bytes).

    Memoised per process on (path, count, total size, newest mtime): the pipeline's stages read
    the same folders many times. Hidden files and directories are included: a dataset's
    marker file counts like any other.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    stats = [p.stat() for p in files]
    key = (str(folder), len(files), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))
    if key not in _FOLDER_DIGESTS:
        import hashlib

        digest = hashlib.sha256()
        for item in files:
            digest.update(item.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(item.read_bytes()).digest())
        _FOLDER_DIGESTS[key] = {"files": len(files), "sha256": digest.hexdigest()}
    return dict(_FOLDER_DIGESTS[key])


# ---------------------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    """What decides whether floating-point results repeat bit for bit on this machine."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "isa": _isa_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(Exception):
            info["tf_threads"] = {
                "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            }
            info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    framework_config = sys.modules.get("tensorflow.python.framework.config")
    if framework_config is not None and hasattr(framework_config, "is_op_determinism_enabled"):
        info["op_determinism"] = bool(framework_config.is_op_determinism_enabled())
    return info


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, _, value = line.partition(":")
        first[key.strip()] = value.strip()
    return first


def _cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or "unknown"


def _isa_flags() -> list[str]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [flag for flag in ISA_FLAGS if flag in flags]
