"""MediaPipe Tasks' ImageClassifier against ``edgexfer predict`` on the same exported files.

    python bench/mediapipe_client.py --keras runs/demo/quantize --data runs/demo/data/target \
        --mediapipe-python .venv-mediapipe/bin/python [--name digits]

From the Keras artifact (the demo's QAT student: ``runs/demo/quantize``) it exports with
``edgexfer.api.export`` (as the demo's ``export_tflite`` stage does) a float TFLite file and int8 files
with each ``--io-type`` (uint8, the
default; int8; float32), then on every image of ``--data`` (class sub-folders give the true
labels, used only to report accuracy):

- ``edgexfer predict`` (``load_model(...).predict_files``) and MediaPipe's ``ImageClassifier``
  (``tools/mediapipe_classify.py`` in the mediapipe environment) on the files, each decoding and
  resizing them itself, and on the same decoded pixels: top-1 agreement and max |Δscore|;
- the same file with edgexfer's own metadata entry removed, read by edgexfer's runtime from the
  standard metadata alone: identical predictions?
- accuracy of the int8 graph behind each I/O type (it must not change);
- latency per image of both runtimes at one thread, side by side: edgexfer with
  ``num_threads=1``, MediaPipe (no thread setting in its Python API) pinned to one core with
  ``taskset -c 0``; both classify decoded pixels already in memory, pre- and post-processing
  included.

Results: ``bench/results/mediapipe_client[_NAME].json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import markdown_table, save

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is tools/bench/mediapipe_client.py)
CLIENT = ROOT / "tools" / "mediapipe_classify.py"
EXPORTS = [
    ("float", "none", None),
    ("int8 (uint8 I/O)", "int8", "uint8"),
    ("int8 (int8 I/O)", "int8", "int8"),
    ("int8 (float32 I/O)", "int8", "float32"),
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mediapipe(python: str, model: Path, *args: str, pin: bool = False) -> dict:
    command = [python, str(CLIENT), str(model), *args]
    if pin:
        command = ["taskset", "-c", "0", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1]}  # the client's one-line reason
    return json.loads(done.stdout)


def compare(results: list[dict], labels: list[str], probs: np.ndarray) -> dict:
    top = [labels[i] for i in probs.argmax(1)]
    agree = float(np.mean([r["label"] == t for r, t in zip(results, top)]))
    delta = max(abs(r["scores"][name] - float(p)) for r, row in zip(results, probs) for name, p in zip(labels, row))
    return {"top1_agreement": round(agree, 4), "max_abs_score_delta": float(delta)}


def edgexfer_latency(model, pixels: np.ndarray, repeat: int) -> dict:
    for image in pixels[:5]:
        model.predict_proba(image[None])
    times = []
    for _ in range(repeat):
        for image in pixels:
            start = time.perf_counter()
            model.predict_proba(image[None])
            times.append((time.perf_counter() - start) * 1000)
    return {"median": float(np.median(times)), "p90": float(np.percentile(times, 90)), "calls": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", required=True, help="Keras artifact to export (the demo's quantize stage)")
    parser.add_argument("--data", required=True, help="image folder with class sub-folders (the target domain)")
    parser.add_argument("--mediapipe-python", required=True)
    parser.add_argument(
        "--calibration-data",
        default=None,
        help="int8 calibration images (default: as the export stage resolves them, like the demo's export_tflite)",
    )
    parser.add_argument("--latency-images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--name", default="")
    args = parser.parse_args()

    from edgexfer import api
    from edgexfer.runtime import load_model
    from edgexfer.runtime.images import list_image_files, load_images
    from edgexfer.runtime.metadata import TFLITE_METADATA_NAME
    from edgexfer.runtime.tflite_metadata import remove_metadata_entry

    data = Path(args.data)
    files = list_image_files(data)
    truth = [f.parent.name for f in files]
    work = Path(tempfile.mkdtemp(prefix="edgexfer-mediapipe-"))
    rows, result = (
        [],
        {"keras": str(Path(args.keras).resolve()), "data": str(data.resolve()), "images": len(files), "files": {}},
    )
    try:
        for name, quant, io_type in EXPORTS:
            log(f"export {name}")
            artifact = api.export(
                args.keras,
                work / name.replace(" ", "_"),
                "tflite",
                quant,
                io_type=io_type,
                calibration_data=args.calibration_data if quant == "int8" else None,
            )
            path = artifact.model_path
            model = load_model(path, num_threads=1)
            labels = model.label_names
            predictions = model.predict_files(files)
            pixels = load_images(files, model.preprocessing)
            probs = model.predict_proba(pixels)
            entry = {
                "size_bytes": path.stat().st_size,
                "io": artifact.manifest.quantization.get("io_type"),
                "input": artifact.manifest.quantization.get("input"),
                "edgexfer_accuracy": round(float(np.mean([p.label == t for p, t in zip(predictions, truth)])), 4),
            }
            stripped = work / f"{path.parent.name}-standard-only.tflite"
            stripped.write_bytes(remove_metadata_entry(path.read_bytes(), TFLITE_METADATA_NAME))
            alone = load_model(stripped, num_threads=1)
            alone_predictions = alone.predict_files(files)
            entry["standard_metadata_only"] = {
                "same_top1": float(np.mean([a.label == p.label for a, p in zip(alone_predictions, predictions)])),
                "max_abs_score_delta": float(np.abs(alone.predict_proba(pixels) - probs).max()),
            }

            np.save(work / "pixels.npy", pixels)
            log(f"mediapipe {name}")
            on_files = mediapipe(args.mediapipe_python, path, "--files", *map(str, files))
            if "error" in on_files:
                entry["mediapipe"] = on_files
                result["files"][name] = entry
                rows.append([name, entry["edgexfer_accuracy"], "rejected", None, None, None, None])
                log(f"  MediaPipe rejects it: {on_files['error']}")
                continue
            on_pixels = mediapipe(args.mediapipe_python, path, "--pixels", str(work / "pixels.npy"))
            entry["mediapipe_version"] = on_files["mediapipe"]
            entry["mediapipe_accuracy_files"] = round(
                float(np.mean([r["label"] == t for r, t in zip(on_files["results"], truth)])), 4
            )
            file_probs = np.array(
                [[dict(p.top_k)[label] for label in labels] for p in model.predict_files(files, top_k=len(labels))]
            )
            entry["files_vs_edgexfer_predict"] = compare(on_files["results"], labels, file_probs)
            entry["pixels_vs_edgexfer"] = compare(on_pixels["results"], labels, probs)

            subset = pixels[np.linspace(0, len(pixels) - 1, min(args.latency_images, len(pixels))).astype(int)]
            np.save(work / "latency.npy", subset)
            mp_latency = mediapipe(
                args.mediapipe_python,
                path,
                "--pixels",
                str(work / "latency.npy"),
                "--repeat",
                str(args.repeat),
                pin=True,
            )["latency_ms"]
            pinned = subprocess.run(
                [
                    "taskset",
                    "-c",
                    "0",
                    sys.executable,
                    "-c",
                    f"import json, sys, numpy as np; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    "import mediapipe_client as m; from edgexfer.runtime import load_model; "
                    f"print(json.dumps(m.edgexfer_latency(load_model({str(path)!r}, num_threads=1), "
                    f"np.load({str(work / 'latency.npy')!r}), {args.repeat:d})))",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            ex_latency = json.loads(pinned.stdout.strip().splitlines()[-1])
            entry["latency_ms_1_thread"] = {"edgexfer_litert": ex_latency, "mediapipe": mp_latency}
            result["files"][name] = entry
            rows.append(
                [
                    name,
                    entry["edgexfer_accuracy"],
                    entry["mediapipe_accuracy_files"],
                    entry["files_vs_edgexfer_predict"]["top1_agreement"],
                    f"{entry['pixels_vs_edgexfer']['top1_agreement']} / "
                    f"{entry['pixels_vs_edgexfer']['max_abs_score_delta']:.2g}",
                    f"{ex_latency['median']:.3f}",
                    f"{mp_latency['median']:.3f}",
                ]
            )
            log(f"  {rows[-1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(
        [
            "file",
            "edgexfer acc",
            "MediaPipe acc (files)",
            "top-1 agreement (files)",
            "agreement / max |Δscore| (same pixels)",
            "edgexfer ms (1 thread)",
            "MediaPipe ms (1 core)",
        ],
        rows,
    )
    result["table"] = table
    print(table)
    save("mediapipe_client" + (f"_{args.name}" if args.name else ""), result)


if __name__ == "__main__":
    main()
