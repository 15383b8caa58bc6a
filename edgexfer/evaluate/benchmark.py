"""``benchmark``: latency (p50/p90/p99), throughput and size of models across formats, thread
counts and devices, on random input at each model's own input size and preprocessing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import MANIFEST, Artifact
from edgexfer.errors import ConfigError
from edgexfer.evaluate import latency as lat
from edgexfer.evaluate import peak
from edgexfer.evaluate.check_tables import render_benchmark_markdown
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
from edgexfer.keras_io import load_keras_model

BENCHMARK_JSON = "benchmark.json"
BENCHMARK_MD = "benchmark.md"


def benchmark_models(
    models: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    latency: lat.LatencySettings | None = None,
    seed: int = 0,
    log: Log | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Latency (p50/p90/p99), throughput (images/s at batch 1 and N) and size of models.

    ``models``: ``.tflite``/``.onnx`` files or artifact directories (export artifacts, or
    Keras ones timed in TensorFlow). Input is random pixels at each model's input size,
    preprocessed with its own preprocessing. Every thread count of ``latency.threads``
    (0 = all cores) is measured on LiteRT/onnxruntime; onnxruntime CUDA is added where
    available. Writes ``benchmark.json`` and ``benchmark.md`` to ``out`` (default:
    ``<first model's artifact>/../benchmark``). ``device`` (cpu | cuda | auto): see
    ``edgexfer.evaluate.costs.latency_rows``; every row names its ``provider`` and ``device``.
    """
    from edgexfer.runtime import providers as prov

    prov.check_device(device)
    log = log or quiet
    if not models:
        raise ConfigError("benchmark needs at least one model (.tflite/.onnx file or artifact directory)")
    settings = latency or lat.LatencySettings()
    entries = [_benchmark_entry(Path(m)) for m in models]
    names = [e["name"] for e in entries]
    for entry in entries:
        if names.count(entry["name"]) > 1:
            entry["name"] = f"{entry['where'].parent.name}/{entry['name']}"
    out_dir = Path(out) if out is not None else entries[0]["where"].parent / "benchmark"

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    tf_threads = None
    for entry in entries:
        pre = entry["preprocessing"]
        from edgexfer.runtime import normalize

        pixels = rng.integers(
            0, 256, (settings.batch_size, pre.input_size, pre.input_size, pre.channels), dtype=np.uint8
        )
        x = normalize(pixels, pre)
        sizes.append(
            {
                "model": entry["name"],
                "path": str(entry["model_path"]),
                "format": entry["format"],
                "quant": entry["quant"],
                **file_size(entry["model_path"], entry.get("artifact")),
            }
        )
        if entry["kind"] == "keras":
            tf_threads = lat.set_tensorflow_threads(settings.threads[0])
            log(f"timing {entry['name']} (Keras, TensorFlow)")
            keras_model = load_keras_model(entry["artifact"].model_path)
            placement = tensorflow_placement()
            if device == "cuda" and placement.device == "cpu":
                raise ConfigError(
                    f"--device cuda: TensorFlow sees no GPU, so {entry['name']} (Keras) would run on "
                    "the CPU; use --device cpu or auto"
                )
            measured = lat.measure(
                lat.keras_runs(keras_model),
                x,
                settings,
                model=entry["name"],
                runtime="keras-tensorflow",
                threads=tf_threads,
                threads_used=tf_threads or lat.resolve_threads(0),
                **placement.to_dict(),
            )
        else:
            if entry["kind"] == "saved_model":
                tf_threads = lat.set_tensorflow_threads(settings.threads[0])
            measured = latency_rows(
                entry["kind"], entry["model_path"], x, settings, model=entry["name"], log=log, device=device
            )
        for row in measured:
            row.update(format=entry["format"], quant=entry["quant"], size_bytes=sizes[-1]["size_bytes"])
        sizes[-1]["macs"] = _benchmark_macs(entry, keras_model if entry["kind"] == "keras" else None)
        peak.achieved(sizes[-1]["macs"], measured)
        rows += measured

    result = {
        "models": [
            {
                k: str(v) if isinstance(v, Path) else v
                for k, v in e.items()
                if k in ("name", "model_path", "format", "quant", "kind")
            }
            for e in entries
        ],
        "rows": rows,
        "sizes": sizes,
        "latency_settings": settings.to_dict(),
        "device": device,
        "environment": environment_block(tf_threads),
        "created_at": now(),
    }
    result["report"] = write_reports(result, out_dir, BENCHMARK_JSON, BENCHMARK_MD, render_benchmark_markdown)
    log(f"wrote {result['report']['json']} and {result['report']['markdown']}")
    return result


def _benchmark_macs(entry: dict[str, Any], keras_model=None) -> int | None:
    """MACs per image of a benchmarked model: counted on its file, or on the Keras model."""
    from edgexfer.evaluate.macs import keras_macs, model_file_macs

    return keras_macs(keras_model) if keras_model is not None else model_file_macs(entry["model_path"])


def _benchmark_entry(path: Path) -> dict[str, Any]:
    from edgexfer.runtime import load_model

    artifact = None
    if path.is_dir():
        artifact = Artifact(path)
    elif path.is_file() and (path.parent / MANIFEST).is_file() and path.suffix.lower() in KIND_BY_SUFFIX:
        artifact = Artifact(path.parent)
        if artifact.model_path.resolve() != path.resolve():
            artifact = None  # a model file that is not the artifact's own: take it alone
    if artifact is not None:
        model_path = artifact.model_path
        manifest = artifact.manifest
        config = manifest.config or {}
        if model_path.suffix in KERAS_SUFFIXES:
            kind, fmt, quant = "keras", "keras", "none"
        else:
            kind = KIND_BY_SUFFIX.get(model_path.suffix.lower()) or "saved_model"
            fmt, quant = config.get("format", kind), config.get("quant", "none")
        return {
            "name": artifact.path.name,
            "where": artifact.path,
            "model_path": model_path,
            "kind": kind,
            "format": fmt,
            "quant": quant,
            "preprocessing": manifest.preprocessing,
            "artifact": artifact,
        }
    model = load_model(path)  # a bare file: the runtime checks it is a model and reads its metadata
    return {
        "name": path.name,
        "where": path.parent / path.stem,
        "model_path": path,
        "kind": model.backend,
        "format": model.manifest.get("format", model.backend),
        "quant": model.manifest.get("quant", "?"),
        "preprocessing": model.preprocessing,
    }
