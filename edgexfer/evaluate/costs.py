"""What ``check`` and ``benchmark`` both measure of a model file and how they record it: its
size (and gzip size), its latency rows on a device for each thread count, where TensorFlow
places a Keras model, the machine it ran on, and the two report files (JSON and Markdown).

TensorFlow is imported only to time SavedModels and to ask where it places a model.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, json_default, library_versions
from edgexfer.evaluate import latency as lat
from edgexfer.tempfiles import write_text_atomically

KERAS_SUFFIXES = (".keras", ".h5")
KIND_BY_SUFFIX = {".tflite": "tflite", ".onnx": "onnx"}

Log = Callable[[str], None]


def quiet(_message: str) -> None:
    return None


def file_size(path: Path, artifact: Artifact | None = None) -> dict[str, int]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    size = sum(f.stat().st_size for f in files)
    recorded = (artifact.metrics if artifact is not None else {}).get("gzip_bytes")
    if recorded and (artifact.metrics.get("size_bytes") == size):
        gz = int(recorded)
    else:
        gz = sum(len(gzip.compress(f.read_bytes(), compresslevel=6)) for f in files)
    return {"size_bytes": int(size), "gzip_bytes": int(gz)}


def latency_rows(
    kind: str,
    model_path: Path,
    x: np.ndarray,
    settings: lat.LatencySettings,
    *,
    model: str,
    log: Log,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Latency rows of one exported model on ``device`` (cpu | cuda | auto), each naming its
    provider and device. cpu: every thread count on the CPU runtime; cuda: onnxruntime CUDA only
    (``ConfigError`` when it is not in use, and for .tflite); auto: the CPU rows, plus CUDA rows
    when onnxruntime's CUDA provider starts. SavedModels run in TensorFlow."""
    from edgexfer.runtime import providers as prov

    rows: list[dict[str, Any]] = []
    if kind == "saved_model":
        log(f"timing {model} (TensorFlow)")
        threads = lat.set_tensorflow_threads(settings.threads[0])
        return lat.measure(
            lat.saved_model_runs(model_path),
            x,
            settings,
            model=model,
            runtime="saved_model-tensorflow",
            threads=threads,
            threads_used=threads or lat.resolve_threads(0),
            **tensorflow_placement().to_dict(),
        )
    if device != "cuda" or kind == "tflite":
        for threads in settings.threads:
            label = lat.runtime_label(kind)
            log(f"timing {model} on {label}, {threads or 'all'} thread(s)")
            runs, placement = lat.runtime_runs_on(model_path, "cpu" if device == "auto" else device, threads)
            rows += lat.measure(
                runs,
                x,
                settings,
                model=model,
                runtime=label,
                threads=threads,
                threads_used=lat.resolve_threads(threads),
                **placement.to_dict(),
            )
    if kind == "onnx" and (device == "cuda" or (device == "auto" and prov.ORT_CUDA in lat.ort_providers())):
        log(f"timing {model} on onnxruntime CUDA")
        runs, placement = lat.runtime_runs_on(model_path, device, None)
        if placement.provider != prov.ORT_CUDA:  # auto: the provider is installed but did not start
            log(f"onnxruntime's CUDA provider did not start ({prov.cuda_unavailable_reason()}); CUDA skipped")
        else:
            rows += lat.measure(
                runs,
                x,
                settings,
                model=model,
                runtime=lat.runtime_label(kind, lat.ORT_CUDA),
                threads=None,
                threads_used=None,
                **placement.to_dict(),
            )
    return rows


def environment_block(tf_threads: int | None) -> dict[str, Any]:
    try:
        providers = lat.ort_providers()
    except ImportError:
        providers = []
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": lat.resolve_threads(0),
        "onnxruntime_providers": providers,
        "tensorflow_intra_op_threads": tf_threads,
        "versions": library_versions(),
    }


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_reports(
    result: dict[str, Any], out_dir: Path, json_name: str, md_name: str, render: Callable[[dict[str, Any]], str]
) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / json_name, out_dir / md_name
    report = {"json": str(json_path), "markdown": str(md_path)}
    write_text_atomically(json_path, json.dumps({**result, "report": report}, indent=2, default=json_default) + "\n")
    write_text_atomically(md_path, render({**result, "report": report}))
    return report


def tensorflow_placement():
    """Where TensorFlow places a Keras model by default: its first GPU if it sees one, else the CPU
    (a ``runtime.providers.Placement``)."""
    from edgexfer.runtime import providers as prov
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    gpus = tf.config.list_logical_devices("GPU")
    return prov.Placement(prov.TENSORFLOW_PROVIDER, "gpu:0" if gpus else "cpu")
