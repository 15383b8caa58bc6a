"""The distillation ablation: one change at a time against the reference recipe, same budget, same seeds.

    python tools/bench/distill_ablation.py --teacher ARTIFACT --data DIR \\
        [--arms reference no_teacher features flip flip_clean flip_x2 epochs_x2 T2 T8 alpha0.9] \\
        [--seeds 0 1 2] [--max-train-images 10000] [--name NAME]

The reference is ``distill`` as the recipes run it: Hinton KD (T 4, alpha 0.7), 30 epochs, lr 2e-3,
batch 64, no augmentation (the teacher's logits cached), ``--student`` (default cnn_medium) at
``--student-img-size`` (default 32). Every other arm changes exactly one thing. Each (arm, seed)
is one ``distill`` run in this process, scored as the float student's accuracy on the data's
test split (the same held-out images for every arm; ``metrics.json["student_accuracy"]``).
Results: ``tools/bench/results/distill_ablation[_NAME].json`` (written after every run; a rerun with the
same ``--work`` reads back the runs already measured) and a markdown table (mean ± std
over the seeds, and the change against the reference with the spread of the per-seed
differences, which share the seed and so the student's initialisation and batch order).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _common import markdown_table, save, spread

REFERENCE = {"temperature": 4.0, "alpha": 0.7, "epochs": 30, "learning_rate": 2e-3, "batch_size": 64}

# arm → (what it changes, the distill options it overrides)
ARMS: dict[str, tuple[str, dict]] = {
    "reference": ("Hinton KD, T 4, alpha 0.7, the reference epochs", {}),
    "no_teacher": ("hard labels only (alpha 0): the student without its teacher", {"alpha": 0.0}),
    "features": ("+ pooled-feature hint (feature_weight 1)", {"feature_weight": 1.0}),
    "flip": ("random flips on the student side, the teacher's logits under the same flip", {"augment": {"flip": True}}),
    "flip_clean": (
        "random flips on the student side, the teacher's logits of the plain image (computed once)",
        {"augment": {"flip": True}, "teacher_view": "clean"},
    ),
    "flip_x2": (
        "random flips, the teacher under the same flip, twice the schedule: the longer schedule augmentation asks for",
        {"augment": {"flip": True}, "epochs": "x2"},
    ),
    "epochs_x2": ("twice the schedule (epochs × 2)", {"epochs": "x2"}),
    "T2": ("temperature 2", {"temperature": 2.0}),
    "T8": ("temperature 8", {"temperature": 8.0}),
    "alpha0.9": ("alpha 0.9 (more weight on the soft targets)", {"alpha": 0.9}),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measured(arm: str, seed: int, metrics: dict) -> dict:
    """One run's row, from its artifact's metrics.json."""
    return {
        "arm": arm,
        "seed": seed,
        "accuracy": metrics["student_accuracy"],
        "held_out": {
            "teacher_accuracy": metrics["teacher_accuracy"],
            "eval_split": metrics["eval_split"],
            "eval_images": metrics["eval_images"],
        },
        "seconds": metrics["timings_seconds"]["total_seconds"],
    }


def summary(runs: list[dict]) -> str:
    """Per arm: mean ± std over its seeds, and the mean ± std of its per-seed difference to the
    reference (over the seeds both have)."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    by_arm = {arm: {r["seed"]: r for r in runs if r["arm"] == arm} for arm in arms}
    reference = by_arm["reference"]
    rows = []
    for arm in arms:
        accuracies = [r["accuracy"] for r in by_arm[arm].values()]
        differences = [r["accuracy"] - reference[s]["accuracy"] for s, r in by_arm[arm].items() if s in reference]
        delta = "—"
        if arm != "reference" and differences:
            delta = f"{statistics.fmean(differences) * 100:+.2f}"
            if len(differences) > 1:
                delta += f" ± {statistics.stdev(differences) * 100:.2f}"
        seconds = statistics.fmean(r["seconds"] for r in by_arm[arm].values())
        rows.append([arm, ARMS[arm][0], spread(accuracies), len(accuracies), delta, f"{seconds:.0f} s"])
    header = ["arm", "change", "student accuracy", "seeds", "Δ vs reference (points)", "time per run"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a fine-tuned Keras teacher artifact")
    parser.add_argument("--data", required=True, help="the teacher's image folder (with a test split)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--student", default="cnn_medium")
    parser.add_argument("--student-img-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=REFERENCE["epochs"], help="the reference's epochs")
    parser.add_argument("--max-train-images", type=int, default=None, help="seeded subset of the training split")
    parser.add_argument("--work", default="/tmp/edgexfer-ablation", help="where the artifacts go")
    parser.add_argument("--name", default="", help="results file suffix")
    args = parser.parse_args()
    if "reference" not in args.arms:
        args.arms.insert(0, "reference")

    from edgexfer import api

    reference_options = {**REFERENCE, "epochs": args.epochs}
    settings = {
        **reference_options,
        "student": args.student,
        "student_img_size": args.student_img_size,
        "max_train_images": args.max_train_images,
        "seeds": args.seeds,
    }
    name = f"distill_ablation{'_' + args.name if args.name else ''}"

    runs: list[dict] = []
    for arm in args.arms:
        change, overrides = ARMS[arm]
        options = {**reference_options, **overrides}
        if options["epochs"] == "x2":
            options["epochs"] = 2 * args.epochs
        for seed in args.seeds:
            where = Path(args.work) / f"{arm}_seed{seed}"
            if (where / "metrics.json").is_file():  # a rerun of a cut-short ablation resumes
                log(f"{arm} (seed {seed}): already measured in {where}, read back")
                runs.append(measured(arm, seed, json.loads((where / "metrics.json").read_text())))
                continue
            log(f"{arm} (seed {seed}): {change}")
            artifact = api.distill(
                args.teacher,
                args.data,
                where,
                student=args.student,
                student_img_size=args.student_img_size,
                max_train_images=args.max_train_images,
                seed=seed,
                **options,
            )
            runs.append(measured(arm, seed, artifact.metrics))
            log(f"{arm} (seed {seed}): {runs[-1]['accuracy']:.4f} in {runs[-1]['seconds']:.0f} s")
            table = summary(runs)  # saved after every run: a cut-short ablation keeps what it measured
            save(name, {"settings": {**settings, **runs[0]["held_out"]}, "runs": runs, "table": table})
    print(table)


if __name__ == "__main__":
    main()
