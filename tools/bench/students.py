"""The student table: each student distilled from one teacher, QAT-trained, exported int8, timed.

    python tools/bench/students.py --teacher ARTIFACT --data DIR \\
        --students cnn_small lite0_b3 lite0_b3:0.5 [--img-size 32] [--epochs 6] [--seeds 0 1 2] [--name NAME]

Every student (``NAME`` or ``NAME:WIDTH``) goes through the same recipe with the same seeds:
``distill`` (Hinton, T=4, alpha 0.7; pretrained students start from ImageNet Lite0) →
``quantize --mode qat`` → ``export tflite int8``. Then one ``benchmark`` call times every int8
file in this process with LiteRT at batch 1 and 1 thread (rows of one run compare), and reports
the achieved GMAC/s next to this machine's float32 matmul peak. Accuracy is the int8 TFLite
model's on the artifact's held-out test split (measured by the QAT stage), per seed and as mean ±
sample std over ``--seeds``; size, MACs and latency are the first seed's file's (the others differ
in weights only).
Results: ``tools/bench/results/students[_NAME].json``, a markdown table on stdout, and the
Pareto plot of int8 accuracy against latency (``students[_NAME].png``, the report's own figure).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, markdown_table, save, spread


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a fine-tuned Keras teacher artifact")
    parser.add_argument("--data", required=True, help="the teacher's image folder")
    parser.add_argument("--students", nargs="+", required=True, help="NAME or NAME:WIDTH, e.g. lite0_b3:0.5")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per latency row")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one distill + QAT per student and seed")
    parser.add_argument("--work", default="/tmp/edgexfer-students", help="where the artifacts go")
    parser.add_argument("--name", default="", help="results file suffix")
    args = parser.parse_args()

    from edgexfer import api
    from edgexfer.evaluate.latency import LatencySettings

    work = Path(args.work)
    rows, exported = [], {}
    for entry in args.students:
        name, _, width = entry.partition(":")
        label = f"{name}×{width}" if width else name
        per_seed = []
        for seed in args.seeds:
            # seed 0 keeps the directory the one-seed table used, so its runs compare
            where = work / (label.replace("×", "_w") + (f"_seed{seed}" if seed else ""))
            per_seed.append(train_student(api, args, name, width, label, seed, where))
        first, tflite = per_seed[0]
        exported[label] = tflite
        int8 = [row["int8_accuracy"] for row, _ in per_seed]
        rows.append(
            {
                **first,
                "seeds": args.seeds,
                "int8_accuracy_by_seed": int8,
                "float_accuracy_by_seed": [row["float_accuracy"] for row, _ in per_seed],
                "int8_accuracy_mean": statistics.fmean(int8),
                "int8_accuracy_std": statistics.stdev(int8) if len(int8) > 1 else None,
            }
        )
    log("timing every int8 file: LiteRT, batch 1, 1 thread")
    bench = api.benchmark(
        [a.path for a in exported.values()],
        out=work / "benchmark",
        latency=LatencySettings(warmup=20, runs=args.runs, batch_size=1, threads=(1,), max_seconds=20.0),
    )
    for row, timing in zip(rows, bench["rows"]):  # one row per file (batch 1, 1 thread), in order
        row.update(
            latency_p50_ms=timing["p50_ms"],
            gmacs=timing.get("gmacs"),
            peak_gmacs=timing.get("peak_gmacs"),
            fraction_of_peak=timing.get("fraction_of_peak"),
        )
    header = ["student", "params", "MACs", "int8 size", "p50 ms (1 thr)", "GMAC/s", "of peak", "int8 acc", "float acc"]
    table = markdown_table(
        header,
        [
            [
                r["student"],
                f"{r['params']:,}",
                f"{r['macs'] / 1e6:.2f} M",
                f"{r['int8_bytes'] / 1e3:.0f} kB",
                f"{r['latency_p50_ms']:.3f}",
                r["gmacs"],
                f"{r['fraction_of_peak']:.1%}" if r.get("fraction_of_peak") is not None else None,
                spread(r["int8_accuracy_by_seed"]),
                spread(r["float_accuracy_by_seed"]),
            ]
            for r in rows
        ],
    )
    print(table)
    settings = {k: getattr(args, k) for k in ("img_size", "epochs", "qat_epochs", "learning_rate", "runs", "seeds")}
    name = f"students{'_' + args.name if args.name else ''}"
    save(name, {"settings": settings, "rows": rows, "table": table})
    held_out = f"the {rows[0]['eval_split']} split ({rows[0]['eval_images']:,} images)"
    pareto_plot(rows, exported, RESULTS / f"{name}.png", held_out)


def train_student(api, args, name: str, width: str, label: str, seed: int, where: Path) -> tuple[dict, object]:
    """distill → QAT → int8 TFLite for one student and seed: its row (without latency) and the export."""
    started = time.perf_counter()
    log(f"{label} (seed {seed}): distill ({args.epochs} epochs at {args.img_size} px)")
    student = api.distill(
        args.teacher,
        args.data,
        where / "distill",
        student=name,
        student_width=float(width) if width else None,
        student_img_size=args.img_size,
        epochs=args.epochs,
        batch_size=64,
        learning_rate=args.learning_rate,
        temperature=4.0,
        alpha=0.7,
        seed=seed,
    )
    distill_seconds = time.perf_counter() - started
    log(f"{label} (seed {seed}): QAT ({args.qat_epochs} epoch)")
    qat = api.quantize(
        student.path,
        args.data,
        where / "qat",
        mode="qat",
        epochs=args.qat_epochs,
        batch_size=64,
        learning_rate=1e-4,
        compare_ptq=False,
        seed=seed,
    )
    tflite = api.export(qat.path, where / "tflite", "tflite", "int8")
    from edgexfer.evaluate.macs import tflite_macs

    row = {
        "student": label,
        "weights": student.manifest.weights,
        "params": student.metrics["params"],
        "macs": tflite_macs(tflite.model_path),
        "int8_bytes": tflite.metrics["size_bytes"],
        "fp32_tensors": tflite.metrics.get("fp32_tensor_count"),
        "float_accuracy": student.metrics["student_accuracy"],
        "int8_accuracy": qat.metrics["qat_int8_tflite_accuracy"],
        "teacher_accuracy": student.metrics["teacher_accuracy"],
        "eval_split": student.metrics["eval_split"],
        "eval_images": student.metrics["eval_images"],
        "distill_seconds": round(distill_seconds, 1),
        "distill_qat_export_seconds": round(time.perf_counter() - started, 1),
    }
    return row, tflite


def pareto_plot(rows: list[dict], exported: dict, path: Path, domain: str) -> None:
    """Every int8 student on the accuracy-latency plane, its Pareto front dashed (the report's figure)."""
    from edgexfer.evaluate.report.plots import plot_road
    from edgexfer.evaluate.road import Model

    models = [
        Model(
            name=row["student"],
            stage="distill",
            kind="TFLite int8",
            path=exported[row["student"]].model_path,
            bytes=row["int8_bytes"],
            params=row["params"],
            macs=row["macs"],
            latency_ms=row["latency_p50_ms"],
            accuracy={domain: {"value": row["int8_accuracy_mean"]}},
        )
        for row in rows
    ]
    plot_road(models, domain, path, title="int8 students: accuracy against LiteRT latency (batch 1, 1 thread)")
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
