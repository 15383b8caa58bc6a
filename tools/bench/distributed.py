"""tf.distribute: MirroredStrategy over two logical CPU devices against the default strategy.

    python tools/bench/distributed.py DATA [--img-size 64 --epochs 10 --fine-tune-epochs 5 --unfreeze-layers 30]
                                     [--max-train-images N] [--arms default,mirrored[,default-split]]

Each arm is ``edgexfer.api.finetune`` (EfficientNet-Lite0, ImageNet) in a fresh process, with the
same data, split, seed and options:

* ``default``: ``--strategy default`` on the whole CPU (one device);
* ``mirrored``: ``--strategy mirrored`` with ``EDGEXFER_LOGICAL_CPUS=2``: the CPU split into two
  logical devices, one replica each; the global batch is split between them and the gradients
  summed, so the maths is the default arm's up to the order of float additions;
* ``default-split`` (optional): ``--strategy default`` on the split CPU, to tell the cost of the
  split from the cost of mirroring.

Reported per arm: test and val accuracy, training time (phase 1, phase 2, total), wall time,
peak RSS, replicas in sync; and between the arms: the accuracy difference, the top-1 agreement
of their test predictions, and whether the difference is within two binomial standard errors of
the test accuracy. Results: ``tools/bench/results/distributed[_NAME].json`` and a markdown table. What
a multi-GPU or multi-worker run needs is in the results' ``notes`` (and printed).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import call_in_subprocess, markdown_table, save

from edgexfer.keras_io import load_keras_model

ARMS = {  # name: (strategy, EDGEXFER_LOGICAL_CPUS)
    "default": ("default", 0),
    "mirrored": ("mirrored", 2),
    "default-split": ("default", 2),
}

NOTES = [
    "Multi-GPU, one machine: `edgexfer finetune DATA --strategy mirrored` mirrors over every visible GPU "
    "(choose them with CUDA_VISIBLE_DEVICES; EDGEXFER_LOGICAL_CPUS is for GPU-less machines only). "
    "--batch-size is the global batch, split across the replicas: raise it with the GPU count to keep "
    "each GPU busy, and the learning rate with it (linear scaling), or the per-replica batch shrinks.",
    "Phase 1 computes the frozen backbone's features once (a predict, distributed by the strategy) and "
    "trains the head on them; phase 2 and the other stages are where more replicas pay off.",
    "Multi-worker: `--strategy multi-worker` (tf.distribute.MultiWorkerMirroredStrategy) on every "
    'machine, each with TF_CONFIG = {"cluster": {"worker": ["host0:port", "host1:port", ...]}, '
    '"task": {"type": "worker", "index": i}}; the workers must reach each other on those ports, '
    "start the same command with the same options and seed, and read the same data folder (the same "
    "path on each, e.g. a shared mount): each trains on its own shard of the training split. Worker 0 "
    "is the chief and the only one that writes --out. tools/launch_local.py N -- edgexfer ... starts N "
    "workers on one machine; bench/scaleout.py measures them (README, Scale-out).",
    "Batch statistics: BatchNorm stays in inference mode during fine-tuning here, so no cross-replica "
    "BatchNorm synchronisation is needed; a stage that trains BatchNorm would need SyncBatchNormalization "
    "to match a single-device run.",
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def arm(spec: dict) -> None:
    """One fine-tuning run (fresh process; EDGEXFER_LOGICAL_CPUS set by the caller)."""
    import os

    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()  # splits the CPU per EDGEXFER_LOGICAL_CPUS before the runtime starts
    from edgexfer import api
    from edgexfer.data import scan_image_folder
    from edgexfer.evaluate.evaluator import predict_samples
    from edgexfer.train.common import peak_rss_mb

    start = time.perf_counter()
    artifact = api.finetune(spec["data"], spec["out"], **spec["options"])
    wall = round(time.perf_counter() - start, 2)
    peak = round(peak_rss_mb(), 1)
    m = artifact.metrics
    dataset = scan_image_folder(spec["data"], class_names=artifact.manifest.label_names, seed=spec["options"]["seed"])
    probs, labels = predict_samples(
        load_keras_model(artifact.model_path), dataset.split("test"), artifact.manifest.preprocessing, 64
    )
    print(
        json.dumps(
            {
                "strategy": spec["options"]["strategy"],
                "logical_cpus": os.environ.get("EDGEXFER_LOGICAL_CPUS"),
                "cpu_devices": [d.name for d in tf.config.list_logical_devices("CPU")],
                "replicas": artifact.manifest.extra.get("replicas"),
                "test_accuracy": m["test_accuracy"],
                "val_accuracy": m["val_accuracy"],
                "timings_seconds": m["timings_seconds"],
                "wall_seconds": wall,
                "peak_rss_mb": peak,
                "splits": m["splits"],
                "history": m.get("history"),
                "test_predictions": probs.argmax(1).tolist(),
                "test_labels": labels.tolist(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a labelled image folder, e.g. mnist-5k from `edgexfer data prepare`")
    parser.add_argument("--arms", default="default,mirrored", help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--logical-cpus", type=int, default=2, help="logical CPU devices of the split arms")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--unfreeze-layers", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch (split across replicas)")
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="results file distributed_<NAME>.json (default distributed.json)")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if len(arms) < 2 or any(a not in ARMS for a in arms):
        parser.error(f"--arms {args.arms!r}: at least two of {', '.join(ARMS)}")

    options = dict(
        backbone=args.backbone,
        img_size=args.img_size,
        epochs=args.epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        unfreeze_layers=args.unfreeze_layers,
        batch_size=args.batch_size,
        max_train_images=args.max_train_images,
        seed=args.seed,
        early_stopping_patience=0,
    )
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        for name in arms:
            strategy, cpus = ARMS[name]
            cpus = args.logical_cpus if cpus else 0
            log(f"arm {name}: --strategy {strategy}, EDGEXFER_LOGICAL_CPUS={cpus}")
            results[name] = call_in_subprocess(
                __file__,
                "arm",
                {"data": args.data, "out": str(tmp / name), "options": dict(options, strategy=strategy)},
                env={"EDGEXFER_LOGICAL_CPUS": cpus},
            )
            log(f"arm {name}: test accuracy {results[name]['test_accuracy']:.4f} in {results[name]['wall_seconds']} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = arms[0]
    comparisons = {}
    for name in arms[1:]:
        a, b = results[base], results[name]
        n = len(a["test_labels"])
        p = a["test_accuracy"]
        se = math.sqrt(max(p * (1 - p), 1e-12) / n)
        diff = b["test_accuracy"] - p
        agree = sum(x == y for x, y in zip(a["test_predictions"], b["test_predictions"])) / n
        comparisons[f"{name} vs {base}"] = {
            "test_accuracy_difference_points": round(100 * diff, 2),
            "test_images": n,
            "standard_error_points": round(100 * se, 2),
            "within_2_standard_errors": abs(diff) <= 2 * se,
            "top1_agreement": round(agree, 4),
            "training_time_ratio": round(
                b["timings_seconds"]["total_train_seconds"] / a["timings_seconds"]["total_train_seconds"], 2
            ),
        }
    for r in results.values():
        r.pop("test_labels")
        r["test_predictions"] = (
            "".join(str(v) for v in r["test_predictions"])
            if all(v < 10 for v in r["test_predictions"])
            else r["test_predictions"]
        )

    header = [
        "arm",
        "strategy",
        "CPU devices",
        "replicas",
        "test accuracy",
        "val accuracy",
        "phase 1 (features + head) / phase 2 / total training",
        "wall",
        "peak RSS",
    ]
    rows = []
    for name, r in results.items():
        t = r["timings_seconds"]
        rows.append(
            [
                name,
                r["strategy"],
                len(r["cpu_devices"]),
                r["replicas"],
                f"{100 * r['test_accuracy']:.2f} %",
                f"{100 * r['val_accuracy']:.2f} %",
                f"{_s(t, 'feature_extraction_seconds')} + {_s(t, 'phase1_seconds')} / {_s(t, 'phase2_seconds')}"
                f" / {_s(t, 'total_train_seconds')}",
                f"{r['wall_seconds']:.0f} s",
                f"{r['peak_rss_mb']:,.0f} MB",
            ]
        )
    table = markdown_table(header, rows)
    print(table)
    print(json.dumps(comparisons, indent=1))
    print("\n".join(f"- {note}" for note in NOTES))
    save(
        f"distributed_{args.name}" if args.name else "distributed",
        {
            "data": args.data,
            "options": options,
            "arms": results,
            "comparisons": comparisons,
            "table": table,
            "notes": NOTES,
        },
    )


def _s(timings: dict, key: str) -> str:
    return f"{timings[key]:.0f} s" if key in timings else "—"


if __name__ == "__main__":
    main()
