"""``edgexfer reproduce ARTIFACT|RUN_DIR``: re-run the stage that made an artifact and compare.

An artifact's manifest records the stage call that wrote it (``extra["invocation"]``, see
``edgexfer.provenance``): the function, its arguments as it received them (configs with all
their fields, absolute paths), a digest of every input (the parent's model file, the data
folder's files) and the machine. ``reproduce`` checks that the inputs are still there and
unchanged, calls the stage again into a temporary directory, and compares:

- Keras models: every weight tensor, bit for bit (``max_abs_diff`` when not);
- exported files (TFLite, ONNX, SavedModel): the bytes; when they differ, the outputs of the
  two files on images of the stage's data (max |Δprobability|, top-1 agreement);
- every accuracy in ``metrics.json``, and the other files of the artifact (bytes).

When the result differs it says what differs between then and now that could explain it:
edgexfer/TensorFlow/… versions, CPU model and instruction-set extensions, CPU and thread
counts, oneDNN and other environment switches, GPUs. A missing or changed input is not a
failure of determinism: it is a one-line error naming the input (exit code 2).

A pipeline run directory (``edgexfer run``) is reproduced stage by stage: each artifact is
re-made from the original artifacts it read, so a difference is pinned to one stage.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import MANIFEST, METRICS, Artifact, library_versions, sha256_path
from edgexfer.errors import ArtifactError, ConfigError, DataError
from edgexfer.keras_io import load_keras_model

# Exit code of `edgexfer reproduce` when the re-run differs (2: bad input, 3: a parity gate).
EXIT_DIFFERS = 4
# Images of the stage's data the two exported files are run on when their bytes differ.
OUTPUT_COMPARISON_IMAGES = 256
# Files of an artifact compared by content besides the model (the manifest holds times and paths).
_NOT_COMPARED = {MANIFEST, METRICS}


def reproduce(
    target: str | Path, *, work_dir: str | Path | None = None, log: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Reproduce an artifact, or every artifact of a pipeline run directory; see the module docstring.

    Returns ``{"identical": bool, "stages": [per-artifact result], "seconds": total}``.
    """
    from edgexfer.pipeline import STATE_FILE

    target = Path(target)
    log = log or (lambda *_: None)
    work_dir = _work_dir(work_dir)
    if (target / STATE_FILE).is_file():
        return reproduce_run(target, work_dir=work_dir, log=log)
    started = time.perf_counter()
    result = reproduce_artifact(target, work_dir=work_dir, log=log)
    return {
        "target": str(target),
        "identical": result["identical"],
        "stages": [result],
        "seconds": round(time.perf_counter() - started, 1),
    }


def _work_dir(work_dir: str | Path | None) -> Path | None:
    """``--work-dir`` made absolute (the re-run may change directory) and created if missing."""
    if work_dir is None:
        return None
    path = Path(work_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--work-dir {str(work_dir)!r} is a file; pass a directory for the temporary re-runs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stage_out(run_dir: Path, name: str, recorded_out: str | None) -> Path:
    """Where a run's stage wrote its artifact. The state records ``out`` as the pipeline was
    given it, relative to the directory it ran in; from elsewhere, the stage's folder in the run."""
    candidates = [Path(recorded_out)] if recorded_out else []
    if recorded_out and not Path(recorded_out).is_absolute():
        candidates.append(run_dir / Path(recorded_out).name)
    candidates.append(run_dir / name)
    return next((path for path in candidates if (path / MANIFEST).is_file()), candidates[0])


def reproduce_run(
    run_dir: str | Path, *, work_dir: str | Path | None = None, log: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Each artifact a pipeline run wrote, re-made from the original artifacts it read."""
    from edgexfer.pipeline import STATE_FILE

    run_dir = Path(run_dir)
    log = log or (lambda *_: None)
    state = json.loads((run_dir / STATE_FILE).read_text())
    started = time.perf_counter()
    results, skipped = [], []
    for name, stage in state.get("stages", {}).items():
        out = _stage_out(run_dir, name, stage.get("out"))
        if stage.get("status") != "done" or not (out / MANIFEST).is_file():
            skipped.append(
                {
                    "stage": name,
                    "why": "wrote no artifact (evaluate/check: numbers about an artifact)"
                    if stage.get("status") == "done"
                    else f"status {stage.get('status')!r}",
                }
            )
            continue
        log(f"reproducing {name} …")
        result = reproduce_artifact(out, work_dir=work_dir, log=log)
        result["stage_name"] = name
        result["run_seconds"] = stage.get("seconds")
        results.append(result)
        log(f"{name}: {'identical' if result['identical'] else 'DIFFERS'} ({result['seconds']:.1f} s)")
    return {
        "target": str(run_dir),
        "identical": all(r["identical"] for r in results),
        "stages": results,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 1),
    }


def reproduce_artifact(
    path: str | Path, *, work_dir: str | Path | None = None, log: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Re-run the stage that wrote the artifact at ``path`` into a temporary directory and compare."""
    from edgexfer.provenance import decode, environment

    artifact = Artifact(path)
    record = artifact.manifest.extra.get("invocation")
    if not record:
        raise ArtifactError(
            f"{str(artifact.path)!r} does not record the stage call that made it (written before "
            "edgexfer recorded it, or by hand); re-run its stage with this edgexfer to make it "
            "reproducible"
        )
    _check_record_is_this_artifacts(artifact, record)
    check_inputs(artifact, record)
    function = _import(record["function"])
    arguments = decode(record["arguments"])
    parameters = inspect.signature(function).parameters
    quiet = {key: value for key, value in (("progress", False), ("log", lambda *_: None)) if key in parameters}

    scratch = Path(tempfile.mkdtemp(prefix="edgexfer-reproduce-", dir=work_dir))
    try:
        started = time.perf_counter()
        # Relative paths inside a config (a weights file, fuse's val_data) meant the directory
        # the stage ran in; run it there again when that directory still exists.
        where = record.get("cwd") if record.get("cwd") and Path(record["cwd"]).is_dir() else None
        with contextlib.chdir(where) if where else contextlib.nullcontext():
            again = function(**arguments, **quiet, out=scratch / artifact.path.name)
        seconds = round(time.perf_counter() - started, 1)
        again = again if isinstance(again, Artifact) else Artifact(scratch / artifact.path.name)
        comparison = compare_artifacts(artifact, again, data=_stage_data(record, artifact))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    now = environment()
    differences = explain(record.get("environment") or {}, now, artifact.manifest.versions, library_versions())
    identical = comparison["model"]["identical"] and not comparison["metrics"]["differing"]
    return {
        "artifact": str(artifact.path),
        "stage": artifact.manifest.stage,
        "identical": identical,
        "seconds": seconds,
        "original_seconds": record.get("seconds"),
        "comparison": comparison,
        "differences_then_now": differences,
        "explanation": _explanation(identical, comparison, differences),
    }


# ---------------------------------------------------------------------------- inputs


def check_inputs(artifact: Artifact, record: dict[str, Any]) -> None:
    """Every recorded input still exists and holds what it held; else a one-line error naming it."""
    from edgexfer.provenance import describe_input

    for recorded in record.get("inputs", []):
        if recorded.get("kind") == "missing":
            continue
        what = {"artifact": "input artifact", "folder": "data folder", "file": "input file"}[recorded["kind"]]
        name = f"{what} {recorded['path']!r} (argument {recorded['argument']!r})"
        if not Path(recorded["path"]).exists():
            error = ArtifactError if recorded["kind"] == "artifact" else DataError
            raise error(
                f"cannot reproduce {str(artifact.path)!r}: its {name} is gone; restore it (or reproduce "
                "from a copy that has it)"
            )
        now = describe_input(recorded["argument"], recorded["path"])
        if now.get("sha256") != recorded.get("sha256"):
            if recorded["kind"] == "folder":
                count = (
                    f"{recorded.get('files')} files then, {now.get('files')} now"
                    if recorded.get("files") != now.get("files")
                    else f"{now.get('files')} files, contents differ"
                )
                raise DataError(
                    f"cannot reproduce {str(artifact.path)!r}: its {name} changed since the artifact was "
                    f"made ({count}); a changed data folder, not a failure of determinism: restore the "
                    "data to reproduce"
                )
            if recorded["kind"] == "artifact":
                raise ArtifactError(
                    f"cannot reproduce {str(artifact.path)!r}: its {name} was re-made since (model "
                    f"sha256 {recorded['sha256'][:12]} then, {str(now.get('sha256'))[:12]} now); "
                    "reproduce that one first or re-run this stage on it"
                )
            raise DataError(f"cannot reproduce {str(artifact.path)!r}: its {name} changed since the artifact was made")


def _check_record_is_this_artifacts(artifact: Artifact, record: dict[str, Any]) -> None:
    """Refuse a call that belongs to another artifact: records written before they carried their
    ``stage`` could be inherited by a child stage through its parent's copied ``extra``."""
    stage = record.get("stage")
    if stage is None and Path(record.get("out", "")).resolve() != artifact.path.resolve():
        origin = Path(record.get("out", ""))
        stage = Artifact(origin).manifest.stage if (origin / MANIFEST).is_file() else None
    if stage is not None and stage != artifact.manifest.stage:
        raise ArtifactError(
            f"{str(artifact.path)!r} ({artifact.manifest.stage}) carries the recorded call of its "
            f"{stage} parent {record.get('out')!r}, not its own (written by an edgexfer that copied "
            "it); re-run this stage with this edgexfer to make it reproducible"
        )


def _import(dotted: str) -> Callable:
    module, qualname = dotted.split(":", 1)
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        raise ArtifactError(
            f"the stage function {dotted} recorded in the manifest does not exist in this "
            "edgexfer; reproduce with the version that wrote the artifact"
        ) from None
    return target


def _stage_data(record: dict[str, Any], artifact: Artifact) -> str | None:
    """A data folder the stage read, else the nearest ancestor's dataset (for comparing the
    outputs of two exported files)."""
    folders = [i["path"] for i in record.get("inputs", []) if i.get("kind") == "folder"]
    if folders:
        return folders[0]
    for ancestor in artifact.lineage():
        path = (ancestor.manifest.dataset or {}).get("path")
        if path and Path(path).is_dir():
            return path
    return None


# ---------------------------------------------------------------------------- comparing


def compare_artifacts(first: Artifact, second: Artifact, data: str | None = None) -> dict[str, Any]:
    """Model, accuracies and other files of two artifacts of the same stage."""
    model_a, model_b = first.model_path, second.model_path
    if model_a.suffix == ".h5":
        model = compare_keras_weights(model_a, model_b)
    elif model_a.suffix == ".keras":
        model = _compare_weight_lists(
            load_keras_model(model_a).get_weights(), load_keras_model(model_b).get_weights(), None
        )
    else:
        model = compare_exported(model_a, model_b, first, data)
    files = {}
    for item in sorted(p for p in first.path.iterdir() if p.is_file()):
        if item.name in _NOT_COMPARED or item == model_a:
            continue
        other = second.path / item.name
        files[item.name] = (
            "identical"
            if other.is_file() and sha256_path(item) == sha256_path(other)
            else ("differs" if other.is_file() else "missing")
        )
    return {"model": model, "metrics": compare_metrics(first.metrics, second.metrics), "files": files}


def keras_h5_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """``(layer/weight name, array)`` in the file's layer and weight order (``model.save`` .h5)."""
    import h5py

    arrays = []
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        for layer in group.attrs.get("layer_names", []):
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            for weight in group[layer].attrs.get("weight_names", []):
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                arrays.append((f"{layer}/{weight}", np.asarray(group[layer][weight])))
    return arrays


def compare_keras_weights(first: Path, second: Path) -> dict[str, Any]:
    a, b = keras_h5_weights(first), keras_h5_weights(second)
    return _compare_weight_lists([x for _, x in a], [x for _, x in b], [n for n, _ in a])


def _compare_weight_lists(a: list, b: list, names: list[str] | None) -> dict[str, Any]:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return {
            "kind": "keras",
            "identical": False,
            "tensors": len(a),
            "error": f"different architectures: {len(a)} tensors against {len(b)}",
        }
    differing, max_diff, worst = 0, 0.0, None
    for index, (x, y) in enumerate(zip(a, b)):
        if x.tobytes() != y.tobytes():
            differing += 1
            diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            if diff >= max_diff:
                max_diff, worst = diff, (names[index] if names else str(index))
    return {
        "kind": "keras",
        "identical": differing == 0,
        "tensors": len(a),
        "differing_tensors": differing,
        "max_abs_diff": max_diff,
        "largest_difference_in": worst,
    }


def compare_exported(first: Path, second: Path, artifact: Artifact, data: str | None) -> dict[str, Any]:
    """Bytes of two exported models; when they differ, their outputs on the stage's images."""
    a, b = sha256_path(first), sha256_path(second)
    result: dict[str, Any] = {
        "kind": first.suffix.lstrip(".") or first.name,
        "identical": a == b,
        "sha256": [a, b],
        "bytes": [_size(first), _size(second)],
    }
    result["bytes_identical"] = a == b
    if a != b and data and first.suffix in (".tflite", ".onnx"):
        # tf2onnx names tensors with a process-wide counter, so an ONNX file made after other
        # conversions in one process differs in names only: equal outputs count as identical.
        result["outputs"] = _compare_outputs(first, second, artifact, data)
        result["identical"] = result["outputs"].get("images", 0) > 0 and result["outputs"]["max_abs_diff"] == 0.0
    return result


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _compare_outputs(first: Path, second: Path, artifact: Artifact, data: str) -> dict[str, Any]:
    from edgexfer.runtime import load_model
    from edgexfer.runtime.images import list_image_files, load_images

    files = list_image_files(data)[:OUTPUT_COMPARISON_IMAGES]
    if not files:
        return {"images": 0}
    images = load_images(files, artifact.manifest.preprocessing)
    p, q = load_model(first).predict_proba(images), load_model(second).predict_proba(images)
    return {
        "images": len(files),
        "max_abs_diff": float(np.max(np.abs(p - q))),
        "top1_agreement": float(np.mean(p.argmax(1) == q.argmax(1))),
    }


def accuracies(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Every number in ``metrics.json`` whose key path names an accuracy (timings are not compared)."""
    found: dict[str, float] = {}
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "accuracy" in path.lower():
                found[path] = float(value)
            elif isinstance(value, (dict, list)):
                found.update(accuracies(value, path))
    elif isinstance(metrics, list):
        for index, value in enumerate(metrics):
            found.update(accuracies(value, f"{prefix}[{index}]"))
    return found


def compare_metrics(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    a, b = accuracies(first), accuracies(second)
    differing = {k: [a[k], b.get(k)] for k in a if b.get(k) != a[k]}
    deltas = [abs(x - y) for x, y in differing.values() if y is not None]
    return {"compared": len(a), "differing": differing, "max_abs_diff": max(deltas, default=0.0)}


# ---------------------------------------------------------------------------- explaining


def explain(
    then_env: dict[str, Any], now_env: dict[str, Any], then_versions: dict[str, str], now_versions: dict[str, str]
) -> list[str]:
    """What differs between the machine and libraries that made the artifact and these."""
    lines = []
    for name in sorted(set(then_versions) | set(now_versions)):
        if then_versions.get(name) != now_versions.get(name):
            lines.append(f"{name} {then_versions.get(name, 'absent')} then, {now_versions.get(name, 'absent')} now")
    labels = {
        "cpu_model": "CPU",
        "machine": "architecture",
        "cpu_count": "CPU count",
        "cpus_available": "CPUs available to the process",
        "tf_threads": "TensorFlow thread pools",
        "gpus": "GPUs",
        "env": "environment switches",
        "op_determinism": "TF op determinism",
        "python": "Python",
    }
    for key, label in labels.items():
        if key in then_env and key in now_env and then_env[key] != now_env[key]:
            lines.append(f"{label}: {then_env[key]} then, {now_env[key]} now")
    if "isa" in then_env and "isa" in now_env and then_env["isa"] != now_env["isa"]:
        lost = sorted(set(then_env["isa"]) - set(now_env["isa"]))
        gained = sorted(set(now_env["isa"]) - set(then_env["isa"]))
        lines.append(
            f"CPU instruction sets: {', '.join(lost) or 'none'} only then, {', '.join(gained) or 'none'} only now"
        )
    return lines


def _explanation(identical: bool, comparison: dict[str, Any], differences: list[str]) -> str:
    if identical:
        what = "bit-identical"
        if comparison["model"].get("bytes_identical") is False:
            why = (
                "ONNX tensor names come from a process-wide counter"
                if comparison["model"].get("kind") == "onnx"
                else "the outputs, what a runtime sees, were compared instead"
            )
            what = (
                f"identical outputs on {comparison['model']['outputs']['images']} images (the file bytes differ: {why})"
            )
        return what + (f" (although {'; '.join(differences)})" if differences else "")
    if differences:
        return "differs; what differs between then and now: " + "; ".join(differences)
    return (
        "differs on the same machine, libraries and thread counts: a non-deterministic step in this stage "
        "(please report it)"
    )
