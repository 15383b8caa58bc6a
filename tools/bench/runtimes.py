"""onnxruntime against LiteRT on the same model, float and int8, at 1, 2 and all threads.

    python tools/bench/runtimes.py --keras ARTIFACT [--calibration-data DIR]     # export fp32 + int8 TFLite and ONNX
    python tools/bench/runtimes.py --make efficientnet_lite0 --data DIR [--img-size 224]   # make the Keras model first
    python tools/bench/runtimes.py --models FILE_OR_EXPORT_ARTIFACT ...           # already exported files

From a Keras artifact (any training or compression stage's ``--out``; ``--make`` fine-tunes a head
on a backbone for one epoch first, enough for a real model whose latency is measured) it exports
four files with ``edgexfer.api.export``: TFLite and ONNX, each ``--quant none`` and ``int8`` (int8
calibrated on the artifact's training images, or on ``--calibration-data``; a QAT artifact carries
its ranges). Each file is then timed in its own fresh process by ``edgexfer.api.benchmark`` (LiteRT
with XNNPACK, onnxruntime's CPU provider): batch 1 and batch ``--batch``, every thread count of
``--threads`` (0 = all cores). On up to ``--agreement-images`` test images of ``--data`` (default:
the artifact's dataset) it also measures each file's accuracy and the top-1 agreement of the two
runtimes at the same precision, so a faster runtime is not a different model.
Results: ``tools/bench/results/runtimes[_NAME].json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import call_in_subprocess, markdown_table, save

FILES = [("tflite", "none"), ("tflite", "int8"), ("onnx", "none"), ("onnx", "int8")]
PRECISION = {"none": "fp32", "int8": "int8"}
RUNTIME = {"tflite": "LiteRT", "onnx": "onnxruntime"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------- run in fresh processes (call_in_subprocess)


def make_keras(spec: dict) -> None:
    """A real model to time: a head on ``spec['backbone']`` trained for one epoch (phase 1 only)."""
    from edgexfer import api

    artifact = api.finetune(
        spec["data"],
        spec["out"],
        backbone=spec["backbone"],
        weights=spec["weights"],
        img_size=spec["img_size"],
        epochs=1,
        fine_tune_epochs=0,
        max_train_images=spec["max_train_images"],
        early_stopping_patience=0,
    )
    print(
        json.dumps(
            {
                "artifact": str(artifact.path),
                "test_accuracy": artifact.metrics["test_accuracy"],
                "params": artifact.metrics["params"],
            }
        )
    )


def export_all(spec: dict) -> None:
    """fp32 and int8 TFLite and ONNX of one Keras artifact; a failed conversion is recorded, not fatal."""
    from edgexfer import api

    exported = {}
    for fmt, quant in FILES:
        key = f"{fmt}_{quant}"
        log(f"export {key}")
        try:
            artifact = api.export(
                spec["keras"],
                Path(spec["work"]) / key,
                fmt,
                quant,
                calibration_data=spec["calibration_data"] if quant == "int8" else None,
            )
            exported[key] = {
                "path": str(artifact.path),
                "size_bytes": artifact.metrics["size_bytes"],
                "conversion_seconds": artifact.metrics["conversion_seconds"],
            }
        except Exception as exc:  # noqa: BLE001 - reported in the results
            exported[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            log(f"export {key} failed: {exported[key]['error']}")
    print(json.dumps(exported))


def time_model(spec: dict) -> None:
    """Latency rows of one model (``edgexfer.api.benchmark``), then its predictions on test images."""
    import numpy as np

    from edgexfer import api
    from edgexfer.evaluate import latency as lat

    settings = lat.LatencySettings(
        warmup=spec["warmup"],
        runs=spec["runs"],
        batch_size=spec["batch"],
        threads=tuple(spec["threads"]),
        max_seconds=spec["max_seconds"],
    )
    result = api.benchmark([spec["model"]], out=spec["out"], latency=settings)
    predictions = None
    if spec.get("data"):
        from edgexfer.data import load_arrays, scan_image_folder
        from edgexfer.data.subset import stratified_subset
        from edgexfer.runtime import load_model

        model = load_model(spec["model"], num_threads=lat.resolve_threads(0))
        dataset = scan_image_folder(spec["data"], class_names=model.label_names, seed=spec["seed"])
        samples = stratified_subset(dataset.split(spec["split"]), spec["images"], seed=spec["seed"])
        pixels, labels = load_arrays(samples, model.preprocessing)
        probs = model.predict_proba(pixels, batch_size=32)
        np.save(spec["probs"], probs)
        predictions = {
            "probs": spec["probs"],
            "labels": labels.tolist(),
            "accuracy": float((probs.argmax(1) == labels).mean()),
        }
    print(
        json.dumps(
            {
                "rows": result["rows"],
                "sizes": result["sizes"],
                "environment": result["environment"],
                "latency_settings": result["latency_settings"],
                "predictions": predictions,
            }
        )
    )


# ---------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--keras", help="a Keras artifact to export (fp32 + int8, TFLite + ONNX)")
    source.add_argument("--make", metavar="BACKBONE", help="fine-tune a head on BACKBONE (1 epoch) on --data first")
    source.add_argument("--models", nargs="+", help="exported .tflite/.onnx files or export artifacts")
    parser.add_argument(
        "--data",
        help="labelled image folder: --make trains on it; accuracy and agreement on its "
        "test split (default: the Keras artifact's dataset)",
    )
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--img-size", type=int, default=224, help="--make: input size")
    parser.add_argument("--make-images", type=int, default=300, help="--make: training images")
    parser.add_argument(
        "--calibration-data", default=None, help="int8 calibration folder (default: the artifact's data)"
    )
    parser.add_argument("--threads", default="1,2,0", help="thread counts, 0 = all cores")
    parser.add_argument("--batch", type=int, default=8, help="the batch size timed besides 1")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=10.0, help="max timed seconds per row")
    parser.add_argument("--agreement-images", type=int, default=200, help="0: skip accuracy and agreement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="keep exported files here (default: a temporary folder)")
    parser.add_argument("--name", default=None, help="results file runtimes_<NAME>.json (default runtimes.json)")
    args = parser.parse_args()
    from edgexfer.evaluate.latency import parse_threads

    threads = list(parse_threads(args.threads))
    if args.make and not args.data:
        parser.error("--make needs --data")

    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_runtimes_"))
    work = root / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    made, exported, warnings = None, {}, []
    try:
        keras = args.keras
        if args.make:
            weights = "imagenet" if args.make.startswith("efficientnet_lite") else "none"
            log(f"making a {args.make} model ({weights} weights, {args.img_size}px)")
            made = call_in_subprocess(
                __file__,
                "make_keras",
                {
                    "data": args.data,
                    "out": str(work / "keras"),
                    "backbone": args.make,
                    "weights": weights,
                    "img_size": args.img_size,
                    "max_train_images": args.make_images,
                },
            )
            keras = made["artifact"]
        if keras and _is_qat(keras):
            warnings.append(
                f"{keras} is quantization-aware: its fp32 export keeps the fake-quant ops (not a "
                "float model); for a float baseline pass the artifact before QAT (e.g. prune's)"
            )
            log(warnings[-1])
        if keras:
            exported = call_in_subprocess(
                __file__, "export_all", {"keras": keras, "work": str(work), "calibration_data": args.calibration_data}
            )
            models = {key: e["path"] for key, e in exported.items() if "path" in e}
        else:
            models = {
                f"{Path(m).parent.name}/{Path(m).name}" if Path(m).is_file() else Path(m).name: m for m in args.models
            }
        data = args.data or (_dataset_of(keras) if keras else None)
        timings = {}
        for key, path in models.items():
            log(f"timing {key}")
            timings[key] = call_in_subprocess(
                __file__,
                "time_model",
                {
                    "model": path,
                    "out": str(work / "benchmark" / key),
                    "threads": threads,
                    "batch": args.batch,
                    "runs": args.runs,
                    "max_seconds": args.max_seconds,
                    "warmup": 5,
                    "seed": args.seed,
                    "data": data if args.agreement_images else None,
                    "split": args.split,
                    "images": args.agreement_images,
                    "probs": str(work / f"{key}_probs.npy"),
                },
            )
        agreement = _agreement(timings)
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)

    rows = [dict(row, file=key) for key, t in timings.items() for row in t["rows"]]
    table = _table(rows, timings)
    print(table)
    save(
        f"runtimes_{args.name}" if args.name else "runtimes",
        {
            "source": {"keras": keras, "made": made} if keras else {"models": args.models},
            "exported": exported,
            "data": data,
            "split": args.split,
            "threads": threads,
            "batch": args.batch,
            "rows": rows,
            "accuracy": {k: (t["predictions"] or {}).get("accuracy") for k, t in timings.items()},
            "agreement": agreement,
            "summary": _summary(rows),
            "latency_settings": next(iter(timings.values()))["latency_settings"] if timings else None,
            "environment": next(iter(timings.values()))["environment"] if timings else None,
            "warnings": warnings,
            "table": table,
            "kept_files": str(work) if args.work else None,
        },
    )


def _is_qat(artifact: str) -> bool:
    from edgexfer.artifact import Artifact

    return str((Artifact(artifact).manifest.quantization or {}).get("mode", "")).lower() in ("qat", "pqat")


def _dataset_of(artifact: str) -> str | None:
    from edgexfer.artifact import Artifact

    path = (Artifact(artifact).manifest.dataset or {}).get("path")
    return path if path and Path(path).is_dir() else None


def _agreement(timings: dict) -> dict:
    """Top-1 agreement and max |Δp| of LiteRT and onnxruntime at the same precision."""
    import numpy as np

    result = {}
    kinds = {(t["rows"][0]["format"], t["rows"][0]["quant"]): t for t in timings.values() if t["rows"]}
    for quant in ("none", "int8"):
        a, b = kinds.get(("tflite", quant)), kinds.get(("onnx", quant))
        if not (a and b and a["predictions"] and b["predictions"]):
            continue
        pa, pb = np.load(a["predictions"]["probs"]), np.load(b["predictions"]["probs"])
        result[PRECISION[quant]] = {
            "images": len(pa),
            "top1_agreement": float((pa.argmax(1) == pb.argmax(1)).mean()),
            "max_abs_prob_diff": float(np.abs(pa - pb).max()),
        }
    return result


def _summary(rows: list[dict]) -> list[dict]:
    """onnxruntime p50 / LiteRT p50 per precision, thread count and batch (> 1: LiteRT faster)."""
    out = []
    by = {(r["format"], r["quant"], r["threads"], r["batch"]): r for r in rows if r["threads"] is not None}
    order = {"none": 0, "int8": 1}
    for (fmt, quant, threads, batch), row in sorted(
        by.items(), key=lambda kv: (order.get(kv[0][1], 2), kv[0][2] == 0, kv[0][2], kv[0][3])
    ):  # fp32 first; "all" threads last
        other = by.get(("onnx", quant, threads, batch))
        if fmt == "tflite" and other:
            out.append(
                {
                    "precision": PRECISION.get(quant, quant),
                    "threads": threads,
                    "threads_used": row["threads_used"],
                    "batch": batch,
                    "litert_p50_ms": row["p50_ms"],
                    "onnxruntime_p50_ms": other["p50_ms"],
                    "onnxruntime_over_litert": round(other["p50_ms"] / row["p50_ms"], 2),
                }
            )
    return out


def _table(rows: list[dict], timings: dict) -> str:
    from edgexfer.evaluate.formatting import macs

    header = ["file", "runtime", "size", "MACs", "threads", "batch", "p50 ms", "p90 ms", "images/s", "accuracy"]
    body = []
    for row in rows:
        predictions = timings[row["file"]]["predictions"]
        threads = "all" if row["threads"] == 0 else row["threads"]
        body.append(
            [
                row["file"],
                row["runtime"],
                f"{row['size_bytes'] / 1e3:,.1f} kB",
                macs(row.get("macs")),  # counted on the file by the benchmark
                f"{threads} ({row['threads_used']})",
                row["batch"],
                f"{row['p50_ms']:.3f}",
                f"{row['p90_ms']:.3f}",
                f"{row['images_per_second']:,.0f}",
                f"{100 * predictions['accuracy']:.1f} %" if predictions else None,
            ]
        )
    summary = _summary(rows)
    lines = [markdown_table(header, body)]
    if summary:
        lines += [
            "",
            markdown_table(
                ["precision", "threads (used)", "batch", "LiteRT p50 ms", "onnxruntime p50 ms", "onnxruntime / LiteRT"],
                [
                    [
                        s["precision"],
                        f"{'all' if s['threads'] == 0 else s['threads']} ({s['threads_used']})",
                        s["batch"],
                        f"{s['litert_p50_ms']:.3f}",
                        f"{s['onnxruntime_p50_ms']:.3f}",
                        s["onnxruntime_over_litert"],
                    ]
                    for s in summary
                ],
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
