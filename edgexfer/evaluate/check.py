"""``check``: prove an exported model with numbers — parity with its Keras parent, size and
latency — and gate on them (``benchmark``, latency across formats without parity, is in
``edgexfer.evaluate.benchmark``; what both measure in ``edgexfer.evaluate.costs``).

``check_artifacts`` compares every exported file (``.tflite``, ``.onnx``, SavedModel) with
the nearest Keras model in its lineage on a labelled image folder: accuracy, top-1
agreement, max/mean absolute difference of the probabilities and per-class agreement. It
times LiteRT (XNNPACK) and onnxruntime (CPU, and CUDA where available) at batch 1 and batch
N for each thread count, and the Keras parent in TensorFlow as the float baseline. With
thresholds it is a gate: the result says which candidates failed and why. ``check.json`` and
``check.md`` are always written before a caller raises on a failed gate.

TensorFlow is imported only to run Keras parents and SavedModels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import MANIFEST, Artifact, sha256_path
from edgexfer.errors import ArtifactError, ConfigError, ParityError
from edgexfer.evaluate import latency as lat
from edgexfer.evaluate import peak
from edgexfer.evaluate.check_tables import render_check_markdown
from edgexfer.evaluate.config import CheckConfig
from edgexfer.evaluate.costs import (
    KERAS_SUFFIXES,
    KIND_BY_SUFFIX,
    Log,
    environment_block,
    file_size,
    latency_rows,
    now,
    quiet,
    tensorflow_placement,
    write_reports,
)
from edgexfer.evaluate.parity import gate_failures, parity_metrics
from edgexfer.keras_io import load_keras_model

CHECK_JSON = "check.json"
CHECK_MD = "check.md"


@dataclass
class _Candidate:
    artifact: Artifact
    kind: str  # tflite | onnx | saved_model
    parent: Artifact  # nearest Keras ancestor
    name: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def model_path(self) -> Path:
        return self.artifact.model_path


# --------------------------------------------------------------------------------- check


def check_artifacts(
    artifacts: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    split: str = "all",
    min_agreement: float | None = None,
    max_acc_drop: float | None = None,
    latency: lat.LatencySettings | None = None,
    measure_latency: bool = True,
    max_images: int | None = None,
    batch_size: int = 64,
    strict: bool = False,
    raise_on_failure: bool = False,
    log: Log | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Check exported artifacts against their Keras parents on the image folder ``data``.

    ``device`` (cpu | cuda | auto) is where onnxruntime runs the .onnx candidates: with
    ``cuda`` the session must really use CUDA (else ``ConfigError`` saying why), and each
    such candidate also gets ``parity_vs_cpu``, its agreement with a CPU session.
    Without TensorFlow (the runtime-only install) no Keras parent can be loaded: parity is then
    against the first exported file (``result["reference"]`` says so) and the gates apply to
    the others.

    ``split``: all | train | val | test of the folder (``all`` for a dedicated test folder).
    ``min_agreement`` / ``max_acc_drop`` make it a gate; a candidate failing either is marked
    ``passed: false`` with its ``failures``. ``check.json`` and ``check.md`` are written to
    ``out`` (default: ``<first artifact>/../check``) in every case; ``raise_on_failure``
    then raises ``ParityError`` (exit code 3) when any candidate failed, with the result as
    its ``result`` attribute. Returns the result dict (what ``check.json`` holds).
    """
    log = log or quiet
    if not artifacts:
        raise ConfigError("check needs at least one export artifact (the --out of edgexfer export)")
    CheckConfig.build(
        split=split,
        min_agreement=min_agreement,
        max_acc_drop=max_acc_drop,
        max_images=max_images,
        batch_size=batch_size,
        strict=strict,
        measure_latency=measure_latency,
    )
    from edgexfer.runtime import providers as prov

    prov.check_device(device)
    settings = latency or lat.LatencySettings()
    out_dir = Path(out) if out is not None else Path(artifacts[0]).parent / "check"
    keras_reference = _tensorflow_installed()
    gated = min_agreement is not None or max_acc_drop is not None
    if not keras_reference and gated and len(artifacts) < 2:
        raise ConfigError(
            "a gate (--min-agreement/--max-acc-drop) compares with the Keras parent, which needs "
            'TensorFlow: pip install "edgexfer[train]"; or pass a second exported file to compare with'
        )

    for path in artifacts:  # --device cuda that cannot work fails before anything is loaded
        where = Path(path)
        model_path = Artifact(where).model_path if where.is_dir() else where
        prov.preflight(device, [model_path.suffix.lower()], str(where))
    candidates = [_candidate(path, need_parent=keras_reference) for path in artifacts]
    _name_uniquely(candidates)
    label_names = candidates[0].artifact.manifest.label_names
    for candidate in candidates[1:]:
        if candidate.artifact.manifest.label_names != label_names:
            raise ConfigError(
                f"{str(candidate.artifact.path)!r} has other classes than "
                f"{str(candidates[0].artifact.path)!r}; check models of one task together"
            )

    samples, dataset = _test_samples(data, candidates[0].artifact, split, strict, max_images)
    log(f"test data: {len(samples)} images of {len(label_names)} classes from {data} ({split})")
    pixels = _PixelCache(samples)
    labels = np.array([s.label for s in samples], dtype=int)

    # Runtime candidates first: they need no TensorFlow.
    probs: dict[int, np.ndarray] = {}
    placements: dict[int, Any] = {}
    vs_cpu: dict[int, dict[str, Any]] = {}
    threads0 = lat.resolve_threads(settings.threads[0])
    for index, candidate in enumerate(candidates):
        if candidate.kind in ("tflite", "onnx"):
            model, placements[index] = prov.load_on_device(candidate.artifact.path, device, num_threads=threads0)
            log(
                f"predicting with {candidate.name} ({candidate.kind}, {placements[index].provider} on "
                f"{placements[index].device})"
            )
            probs[index] = model.predict_proba(pixels.uint8(model.preprocessing), batch_size)
            if placements[index].device != "cpu":  # the GPU session against a CPU session of the same file
                cpu_model, _ = prov.load_on_device(candidate.artifact.path, "cpu", num_threads=threads0)
                cpu_probs = cpu_model.predict_proba(pixels.uint8(cpu_model.preprocessing), batch_size)
                vs_cpu[index] = _session_parity(probs[index], cpu_probs)

    tf_threads = lat.set_tensorflow_threads(settings.threads[0]) if measure_latency and keras_reference else None
    parents: dict[Path, dict[str, Any]] = {}
    keras_models: dict[Path, Any] = {}
    for candidate in candidates if keras_reference else []:
        key = candidate.parent.path.resolve()
        if key in parents:
            continue
        log(f"predicting with the Keras parent {candidate.parent.path}")
        keras_model = load_keras_model(candidate.parent.model_path)
        keras_models[key] = keras_model
        preprocessing = candidate.parent.manifest.preprocessing
        parent_probs = keras_model.predict(pixels.normalized(preprocessing), batch_size=batch_size, verbose=0)
        parents[key] = {"artifact": candidate.parent, "probs": np.asarray(parent_probs, np.float32)}
    for index, candidate in enumerate(candidates):
        if candidate.kind == "saved_model":
            log(f"predicting with {candidate.name} (SavedModel, TensorFlow)")
            serve = lat.load_saved_model_signature(candidate.model_path)
            x = pixels.normalized(candidate.artifact.manifest.preprocessing)
            probs[index] = np.concatenate(
                [_first_output(serve(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
            )

    rows = []
    for index, candidate in enumerate(candidates):
        reference = parents[candidate.parent.path.resolve()]["probs"] if keras_reference else probs[0]
        parity = parity_metrics(reference, probs[index], labels, label_names)
        is_reference = not keras_reference and index == 0  # agrees with itself by construction: not gated
        failures = [] if is_reference else gate_failures(parity, min_agreement=min_agreement, max_acc_drop=max_acc_drop)
        rows.append(_candidate_row(candidate, parity, failures))
        if is_reference:
            rows[-1]["reference"] = True
        if index in placements:
            rows[-1]["placement"] = placements[index].to_dict()
        if index in vs_cpu:
            rows[-1]["parity_vs_cpu"] = vs_cpu[index]

    parent_rows = []
    for parent in parents.values():
        accuracy = float((parent["probs"].argmax(1) == labels).mean()) if len(labels) else float("nan")
        parent_rows.append(
            {
                "name": parent["artifact"].path.name,
                "artifact": str(parent["artifact"].path),
                "stage": parent["artifact"].manifest.stage,
                "accuracy": accuracy,
                **file_size(parent["artifact"].model_path, parent["artifact"]),
                "latency": [],
            }
        )

    if measure_latency:
        for index, candidate in enumerate(candidates):
            x = pixels.normalized(candidate.artifact.manifest.preprocessing)
            rows[index]["latency"] = latency_rows(
                candidate.kind, candidate.model_path, x, settings, model=candidate.name, log=log, device=device
            )
        for row, (key, parent) in zip(parent_rows, parents.items()):
            x = pixels.normalized(parent["artifact"].manifest.preprocessing)
            log(f"timing the Keras parent {row['name']}")
            row["latency"] = lat.measure(
                lat.keras_runs(keras_models[key]),
                x,
                settings,
                model=row["name"],
                runtime="keras-tensorflow",
                threads=tf_threads,
                threads_used=tf_threads or lat.resolve_threads(0),
                **tensorflow_placement().to_dict(),
            )
        for row in rows if keras_reference else []:
            parent_row = next(p for p in parent_rows if p["artifact"] == row["parent"]["path"])
            _add_speedups(row["latency"], parent_row["latency"])
    _add_macs(rows, parent_rows, keras_models)

    result = {
        "passed": all(row["passed"] for row in rows),
        "gated": gated,
        "thresholds": {"min_agreement": min_agreement, "max_acc_drop": max_acc_drop},
        "failed": [row["name"] for row in rows if not row["passed"]],
        "data": str(Path(data)),
        "split": split,
        "n": int(len(labels)),
        "skipped_files": [str(p) for p, _ in dataset.skipped],
        "label_names": list(label_names),
        "candidates": rows,
        "parents": parent_rows,
        "reference": {"kind": "keras"}
        if keras_reference
        else {
            "kind": "export",
            "name": rows[0]["name"],
            "why": "TensorFlow is not installed (runtime-only install), so no Keras parent can be loaded: parity "
            f"is against the first exported file, {rows[0]['name']}",
        },
        "device": device,
        "latency_settings": settings.to_dict() if measure_latency else None,
        "environment": environment_block(tf_threads),
        "created_at": now(),
    }
    result["report"] = write_reports(result, out_dir, CHECK_JSON, CHECK_MD, render_check_markdown)
    log(f"wrote {result['report']['json']} and {result['report']['markdown']}")
    if raise_on_failure:
        error = gate_error(result)
        if error is not None:
            raise error
    return result


def gate_error(result: dict[str, Any]) -> ParityError | None:
    """The ``ParityError`` (exit code 3) for a failed check result, else ``None``."""
    if result.get("passed", True):
        return None
    parts = [f"{row['name']}: {'; '.join(row['failures'])}" for row in result["candidates"] if not row["passed"]]
    error = ParityError(
        f"check failed for {len(parts)} of {len(result['candidates'])} model(s) — "
        + " | ".join(parts)
        + f" (report: {result['report']['markdown']})"
    )
    error.result = result  # type: ignore[attr-defined]
    return error


def _tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported (the ``train`` extra), without importing it."""
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def _session_parity(probs: np.ndarray, cpu_probs: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement and max/mean |Δp| of one file's GPU session against its CPU session."""
    diff = np.abs(probs - cpu_probs)
    return {
        "agreement": float((probs.argmax(1) == cpu_probs.argmax(1)).mean()) if len(probs) else float("nan"),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
    }


def _candidate(path: str | os.PathLike[str], need_parent: bool = True) -> _Candidate:
    path = Path(path)
    if path.is_file() and (path.parent / MANIFEST).is_file():
        path = path.parent  # a model file inside an export artifact
    if path.is_file():
        raise ArtifactError(
            f"{str(path)!r} is a bare model file; check compares an export artifact "
            "with its Keras parent: pass the --out directory of edgexfer export"
        )
    artifact = Artifact(path)
    model_path = artifact.model_path
    if model_path.suffix in KERAS_SUFFIXES:
        raise ArtifactError(
            f"{str(artifact.path)!r} holds a Keras model ({model_path.name}); check compares "
            "exported models with their Keras parent: pass export artifacts "
            "(edgexfer export ARTIFACT --format tflite --out DIR)"
        )
    kind = KIND_BY_SUFFIX.get(model_path.suffix.lower()) or ("saved_model" if model_path.is_dir() else None)
    if kind is None:
        raise ArtifactError(
            f"{str(artifact.path)!r} holds {model_path.name}, which check cannot run; "
            "export to tflite, onnx or saved_model"
        )
    if not need_parent:  # runtime-only install: compared with the other exported files, not with Keras
        return _Candidate(artifact, kind, None)  # type: ignore[arg-type]
    parent, warnings = keras_ancestor(artifact)
    return _Candidate(artifact, kind, parent, warnings=warnings)


def keras_ancestor(artifact: Artifact) -> tuple[Artifact, list[str]]:
    """The nearest artifact in ``artifact``'s lineage that holds a Keras model, and warnings
    for every link whose recorded sha256 no longer matches the parent's model file."""
    if not artifact.manifest.parent:
        raise ArtifactError(
            f"{str(artifact.path)!r} records no parent (manifest.parent); check needs the "
            "Keras artifact it was exported from"
        )
    warnings = []
    chain = artifact.lineage()
    for child, parent in zip(chain, chain[1:]):
        recorded = (child.manifest.parent or {}).get("sha256")
        try:
            actual = sha256_path(parent.model_path)
        except ArtifactError:
            actual = None
        if recorded and actual and recorded != actual:
            warnings.append(
                f"{parent.path} changed since {child.path.name} was made from it (sha256 "
                f"{actual[:12]}… ≠ recorded {recorded[:12]}…); parity is against the current file"
            )
        try:
            is_keras = parent.model_path.suffix in KERAS_SUFFIXES
        except ArtifactError:
            is_keras = False
        if is_keras:
            return parent, warnings
    last = chain[-1].manifest.parent
    gone = last and not (Path(last["path"]) / MANIFEST).is_file()
    where = f" (its parent {last['path']!r} no longer exists)" if gone else ""
    raise ArtifactError(
        f"no Keras model in the lineage of {str(artifact.path)!r}{where}; check compares "
        "exported models with the Keras model they came from"
    )


def _name_uniquely(candidates: list[_Candidate]) -> None:
    names = [c.artifact.path.name for c in candidates]
    for candidate, name in zip(candidates, names):
        candidate.name = name if names.count(name) == 1 else f"{candidate.artifact.path.parent.name}/{name}"


def _test_samples(data, artifact: Artifact, split: str, strict: bool, max_images: int | None):
    from edgexfer.evaluate.splits import scan_domain

    manifest = artifact.manifest
    # Carved with the seed and fractions the run's training data was split with (the lineage's
    # record), so ``test`` holds the same images here as in every evaluate stage of the run; split
    # "all" takes every image, so nothing is carved (and no scikit-learn is needed on the runtime install).
    dataset = scan_domain(artifact, data, strict=strict, carve=split != "all")
    names = ("train", "val", "test") if split == "all" else (split,)
    samples = sorted((s for name in names for s in dataset.split(name)), key=lambda s: str(s.path))
    if not samples:
        raise ConfigError(f"split {split!r} of {str(data)!r} has no images; use --split all")
    if max_images and len(samples) > max_images:
        from edgexfer.data.subset import stratified_subset

        samples = stratified_subset(samples, max_images, seed=manifest.seed or 0)
    return samples, dataset


class _PixelCache:
    """Decoded uint8 images and preprocessed input per preprocessing spec (usually one)."""

    def __init__(self, samples):
        self.samples = samples
        self._uint8: dict[str, np.ndarray] = {}
        self._float: dict[str, np.ndarray] = {}

    @staticmethod
    def _key(preprocessing) -> str:
        return json.dumps(preprocessing.to_dict(), sort_keys=True)

    def uint8(self, preprocessing) -> np.ndarray:
        from edgexfer.data import load_arrays

        key = json.dumps([preprocessing.input_size, preprocessing.resize, preprocessing.color])
        if key not in self._uint8:
            self._uint8[key] = load_arrays(self.samples, preprocessing)[0]
        return self._uint8[key]

    def normalized(self, preprocessing) -> np.ndarray:
        from edgexfer.runtime import normalize

        key = self._key(preprocessing)
        if key not in self._float:
            self._float[key] = normalize(self.uint8(preprocessing), preprocessing)
        return self._float[key]


def _first_output(outputs: dict) -> np.ndarray:
    return np.asarray(next(iter(outputs.values())).numpy(), dtype=np.float32)


def _candidate_row(candidate: _Candidate, parity: dict[str, Any], failures: list[str]) -> dict[str, Any]:
    manifest = candidate.artifact.manifest
    config = manifest.config or {}
    quantization = manifest.quantization or {}
    size = file_size(candidate.model_path, candidate.artifact)
    parent_size = file_size(candidate.parent.model_path, candidate.parent)["size_bytes"] if candidate.parent else None
    return {
        "name": candidate.name,
        "artifact": str(candidate.artifact.path),
        "format": config.get("format", candidate.kind),
        "quant": config.get("quant", quantization.get("mode", "none")),
        "io_type": quantization.get("io_type", (quantization.get("input") or {}).get("dtype")),
        "model_file": candidate.model_path.name,
        "parent": {
            "path": str(candidate.parent.path),
            "stage": candidate.parent.manifest.stage,
            "model_file": candidate.parent.model_path.name,
        }
        if candidate.parent
        else None,
        "parity": parity,
        **size,
        "parent_size_bytes": parent_size,
        "size_ratio": round(size["size_bytes"] / parent_size, 4) if parent_size else None,
        "passed": not failures,
        "failures": failures,
        "warnings": candidate.warnings + list((manifest.extra or {}).get("warnings", [])),
        "latency": [],
    }


def _add_macs(rows: list[dict[str, Any]], parent_rows: list[dict[str, Any]], keras_models: dict[Path, Any]) -> None:
    """``macs`` of every model (counted on its file, else on its Keras parent) and, on each
    latency row, the GMAC/s it ran at next to this machine's matmul peak (``evaluate.peak``)."""
    from edgexfer.evaluate.macs import keras_macs, model_file_macs

    by_parent = {row["artifact"]: keras_macs(model) for row, model in zip(parent_rows, keras_models.values())}
    for row in parent_rows:
        row["macs"] = by_parent.get(row["artifact"])
    for row in rows:
        counted = model_file_macs(Path(row["artifact"]) / row["model_file"])
        row["macs"] = counted or by_parent.get((row.get("parent") or {}).get("path"))
    for row in [*parent_rows, *rows]:
        peak.achieved(row["macs"], row["latency"])


def _add_speedups(rows: list[dict[str, Any]], keras_rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_keras``: Keras p50 / this p50 at the same batch size (same process)."""
    by_batch = {row["batch"]: row for row in keras_rows}
    for row in rows:
        base = by_batch.get(row["batch"])
        if base and row["p50_ms"] > 0:
            row["speedup_vs_keras"] = round(base["p50_ms"] / row["p50_ms"], 3)
