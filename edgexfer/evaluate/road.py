"""The whole road of a run in one table: every Keras model and every exported file, with its
accuracy on each domain, size, batch-1 latency and MACs, read from the files the stages wrote.

The report's summary and Pareto plot and the demo's headline all read this one table, so
they agree; it measures nothing itself except MACs of ``.tflite`` files (LiteRT, no
TensorFlow). Where the run has a ``seeds.json`` (several seeds of the same run), its spread
is attached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgexfer.evaluate.latency import batch1_row

KERAS_SUFFIXES = (".h5", ".keras")
EXPORT_NAMES = {"tflite": "TFLite", "onnx": "ONNX", "saved_model": "SavedModel"}


@dataclass
class Model:
    """One model file of the run."""

    name: str  # its stage (the artifact directory's name)
    stage: str  # the stage type that made it (finetune, adapt, export …)
    kind: str  # "Keras" or e.g. "TFLite int8"
    path: Path
    parent: str | None = None  # the stage it was made from
    keras_parent: str | None = None  # exports: the Keras model they were converted from
    bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    macs_from: str | None = None  # how MACs were found, where not counted on this file
    latency_ms: float | None = None
    latency_threads: str | None = None
    latency_from: str | None = None  # the stage that timed it
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)  # domain → {value, n, split, by}

    @property
    def is_export(self) -> bool:
        return self.kind != "Keras"

    def acc(self, domain: str | None) -> float | None:
        return (self.accuracy.get(domain) or {}).get("value") if domain else None

    @property
    def label(self) -> str:
        """How the headline and ``seeds.json`` name this model: ``export_tflite (TFLite int8)``."""
        return f"{self.name} ({self.kind})"


@dataclass
class Domain:
    name: str
    data: str
    labels_used: bool | None = None  # did any training stage read this domain's labels
    split: str | None = None  # the part scored: test (held out) or all
    n: int | None = None


@dataclass
class Road:
    run_dir: Path
    models: dict[str, Model]
    domains: dict[str, Domain]
    target: str | None  # the domain the run adapts to (labels never used)
    evaluations: list[tuple[str, dict]]
    checks: list[tuple[str, dict]]
    seeds: dict[str, Any] | None = None

    @property
    def keras(self) -> list[Model]:
        return [m for m in self.models.values() if not m.is_export]

    @property
    def exports(self) -> list[Model]:
        return [m for m in self.models.values() if m.is_export]

    def deployed(self) -> list[Model]:
        """The exported files of the last Keras model that was exported (the end of the road)."""
        exported = [m for m in self.exports if m.keras_parent]
        if not exported:
            return []
        last = max((m.keras_parent for m in exported), key=lambda name: self._order(name))
        return [m for m in exported if m.keras_parent == last]

    def lineage(self, name: str | None) -> list[Model]:
        """``name`` and the models it was made from, newest first (a distilled student's parent is its teacher)."""
        chain, seen = [], set()
        while name and name in self.models and name not in seen:
            seen.add(name)
            chain.append(self.models[name])
            name = self.models[name].parent
        return chain

    def finetuned_teacher(self, name: str | None) -> Model | None:
        """The fine-tuned model the road to ``name`` started from."""
        return next((m for m in reversed(self.lineage(name)) if m.stage == "finetune"), None)

    def distillation_teacher(self, name: str | None) -> Model | None:
        """The teacher ``name`` was distilled from, if it was."""
        chain = self.lineage(name)
        for child, parent in zip(chain, chain[1:]):
            if child.stage == "distill":
                return parent
        return None

    def baseline(self) -> Model | None:
        """The source-only baseline: the model of the first evaluate stage."""
        for _, result in self.evaluations:
            model = self.models.get(Path(result["artifact"]).name)
            if model is not None:
                return model
        return None

    def seed_spread(self, model: Model, domain: str) -> dict[str, Any] | None:
        """``{mean, std, values}`` of this model's accuracy on ``domain`` over the seeds of
        ``seeds.json`` (keyed ``"<label> · source|target accuracy"``, as the headline names them)."""
        metrics = (self.seeds or {}).get("metrics") or {}
        role = "target" if domain == self.target else "source"
        found = metrics.get(f"{model.label} · {role} accuracy")
        return found if isinstance(found, dict) else None

    def _order(self, name: str) -> int:
        names = list(self.models)
        return names.index(name) if name in names else -1


def collect_road(run_dir: str | Path, stage_order: list[str] | None = None) -> Road:
    """Read every stage directory of ``run_dir`` (in ``stage_order``, else the state file's order)."""
    run_dir = Path(run_dir)
    order = stage_order or list(_read(run_dir / "pipeline-state.json").get("stages", {}))
    models: dict[str, Model] = {}
    evaluations, checks = [], []
    for name in order:
        folder = run_dir / name
        manifest = _read(folder / "manifest.json")
        if manifest and manifest.get("model_file"):
            models[name] = _model(name, folder, manifest)
        if (folder / "evaluate.json").is_file():
            evaluations.append((name, _read(folder / "evaluate.json")))
        if (folder / "check.json").is_file():
            checks.append((name, _read(folder / "check.json")))

    domains: dict[str, Domain] = {}
    for _, result in evaluations:
        for domain, row in result.get("domains", {}).items():
            known = domains.setdefault(domain, Domain(domain, row.get("data", "")))
            if "labels_used_for_training" in row:
                known.labels_used = bool(known.labels_used) or bool(row["labels_used_for_training"])
            known.split, known.n = row.get("split", result.get("split")), row.get("n")
    by_path = {_resolved(d.data): d.name for d in domains.values()}

    for stage, result in evaluations:
        model = models.get(Path(result["artifact"]).name)
        if model is None:
            continue
        for domain, row in result.get("domains", {}).items():
            model.accuracy[domain] = {
                "value": row.get("accuracy"),
                "n": row.get("n"),
                "split": row.get("split", result.get("split")),
                "by": stage,
            }
        if result.get("macs"):
            model.macs = int(result["macs"])
        _set_latency(model, result.get("latency") or [], stage)

    for stage, result in checks:
        domain = by_path.get(_resolved(result.get("data", ""))) or Path(result.get("data", "data")).name
        if domain not in domains:
            domains[domain] = Domain(domain, result.get("data", ""), split=result.get("split"), n=result.get("n"))
        cell = {"n": result.get("n"), "split": result.get("split"), "by": stage}
        for candidate in result.get("candidates", []):
            model = models.get(Path(candidate.get("artifact", candidate["name"])).name)
            if model is None:
                continue
            model.kind = f"{EXPORT_NAMES.get(candidate['format'], candidate['format'])} {candidate['quant']}"
            model.bytes = candidate.get("size_bytes", model.bytes)
            model.accuracy[domain] = {
                "value": candidate["parity"]["accuracy"],
                "agreement": candidate["parity"].get("agreement"),
                **cell,
            }
            if model.latency_ms is None:
                _set_latency(model, candidate.get("latency") or [], stage)
        for parent in result.get("parents", []):
            model = models.get(Path(parent["artifact"]).name)
            if model is None:
                continue
            model.accuracy.setdefault(domain, {"value": parent.get("accuracy"), **cell})
            if model.latency_ms is None:
                _set_latency(model, parent.get("latency") or [], stage)

    _fill_macs(models)
    target = next((d.name for d in domains.values() if d.labels_used is False), None)
    if target is None and evaluations:
        target = list(evaluations[0][1].get("domains", {}))[-1]
    seeds = _read(run_dir / "seeds.json") or None
    return Road(run_dir, models, domains, target, evaluations, checks, seeds)


def _model(name: str, folder: Path, manifest: dict) -> Model:
    from edgexfer.evaluate.macs import model_file_macs

    path = folder / manifest["model_file"]
    parent = Path(manifest["parent"]["path"]).name if manifest.get("parent") else None
    metrics = _read(folder / "metrics.json")
    keras = path.suffix in KERAS_SUFFIXES
    config = manifest.get("config") or {}
    kind = (
        "Keras"
        if keras
        else (
            f"{EXPORT_NAMES.get(config.get('format'), config.get('format') or path.suffix[1:])} "
            f"{config.get('quant') or 'none'}"
        )
    )
    size = path.stat().st_size if path.is_file() else None
    model = Model(
        name=name,
        stage=manifest.get("stage", name),
        kind=kind,
        path=path,
        parent=parent,
        bytes=size,
        params=metrics.get("params") or metrics.get("student_params"),
    )
    if not keras:
        model.keras_parent = parent
        model.macs = model_file_macs(path) or metrics.get("macs")
    else:
        model.macs = metrics.get("macs")  # distill, prune and quantize record theirs
    return model


def _fill_macs(models: dict[str, Model]) -> None:
    """An export runs its Keras parent's convolutions, and a Keras model those of its TFLite file:
    where one side was counted, the other takes its count (and says so)."""
    for model in models.values():
        if model.is_export and model.macs and model.keras_parent in models:
            parent = models[model.keras_parent]
            if parent.macs is None:
                parent.macs, parent.macs_from = model.macs, f"counted on {model.name}"
    for model in models.values():
        parent = models.get(model.keras_parent or "")
        if model.is_export and model.macs is None and parent is not None and parent.macs:
            model.macs, model.macs_from = parent.macs, f"counted on {parent.name}"


def _set_latency(model: Model, latency: list[dict], stage: str) -> None:
    row = batch1_row(latency)
    if row is None:
        return
    used = row.get("threads_used") or row.get("threads")
    model.latency_ms = row["p50_ms"]
    model.latency_threads = f"{used}" if row.get("threads") else f"{used} (runtime's own)"
    model.latency_from = stage


def _resolved(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return str(path)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
