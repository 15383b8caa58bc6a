"""Few labels of the target domain: mnist-5k → uci-digits, with the public API, in one process.

    python tools/bench/fewshot.py SOURCE_ARTIFACT SOURCE_DATA TARGET_DATA [--work DIR] [--per-class 1 5 10 50]
                                  [--seeds 0 1 2] [--name fewshot_digits]
    python tools/bench/fewshot.py merge NAME RESULT.json[:SEED,...] ...   # one file from per-seed runs

For every N labelled uci-digits images per class and every seed:

- (a) ``finetune --init SOURCE_ARTIFACT --per-class N`` (the source-domain model, retrained);
- (b) ``finetune --per-class N`` from ImageNet (same backbone, size and schedule);
- (c) (a) plus ``--unlabelled`` the other uci images of the labelled pool (self-training);
- the fusion of (a) with its source model, ``fuse --alpha auto --keep-source 0.01
  --val-images labelled``: α is selected on the N labelled uci images per class (the only
  target labels a few-label user has) and the source model's held-out mnist-5k test split;
  the whole curve is also drawn on the held-out uci images (reported, never selected on).

Target accuracy is on one fixed held-out part of uci-digits (``--held-out`` of it, stratified,
seed 12345), the same images for every N, seed and arm; they are never trained on (the folder
is written as train/ and test/ splits, and ``--per-class`` holds the test split out). The
source model's held-out mnist images are its own test split (as its run carved it), which
it never trained on. At the end the best few-label model is exported to int8 TFLite (calibrated on
unlabelled uci images) and checked against its Keras parent on the held-out uci images.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from _common import save

BATCH = 32
PHASE1_EPOCHS = 10  # the head on cached features: cheap
PHASE2_STEPS = 40  # about this many phase-2 gradient steps at every N (at least 3 epochs)
PSEUDO = dict(pseudo_rounds=1, pseudo_epochs=2)  # self-training: 1 round, 2 epochs over labelled + pseudo


def schedule(per_class: int, classes: int = 10) -> dict:
    from edgexfer.train.fewshot import fill_epoch

    steps_per_epoch = math.ceil(len(fill_epoch([None] * (per_class * classes), BATCH)) / BATCH)
    return dict(
        epochs=PHASE1_EPOCHS, fine_tune_epochs=max(3, math.ceil(PHASE2_STEPS / steps_per_epoch)), batch_size=BATCH
    )


def split_folder(source: Path, dest: Path, held_out: float, seed: int) -> dict:
    """``dest/{train,test}/<class>/`` copies of ``source``'s images, ``held_out`` of each class in test."""
    from edgexfer.data import scan_image_folder

    if (dest / "done.json").is_file():
        return json.loads((dest / "done.json").read_text())
    shutil.rmtree(dest, ignore_errors=True)
    dataset = scan_image_folder(source, val_fraction=0.0, test_fraction=held_out, seed=seed)
    counts = {}
    for split in ("train", "test"):
        for sample in dataset.split(split):
            name = dataset.class_names[sample.label]
            target = dest / split / name / sample.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample.path, target)
        counts[split] = len(dataset.split(split))
    (dest / "done.json").write_text(json.dumps(counts))
    return counts


def mean_std(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "runs": [round(v, 4) for v in values],
    }


def summarize(runs: list[dict], fusions: list[dict]) -> dict:
    """Mean ± std over seeds of every arm at every N, and of the chosen fusion."""
    summary: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        for n in sorted({r["per_class"] for r in runs}):
            values = [r["target_accuracy"] for r in runs if r["arm"] == arm and r["per_class"] == n]
            if values:
                summary.setdefault(arm, {})[str(n)] = {
                    **mean_std(values),
                    "seeds": sorted(r["seed"] for r in runs if r["arm"] == arm and r["per_class"] == n),
                }
    fusion_summary = {}
    for n in sorted({f["per_class"] for f in fusions}):
        chosen = [f for f in fusions if f["per_class"] == n]
        fusion_summary[str(n)] = {
            "seeds": [f["seed"] for f in chosen],
            "alpha": [f["chosen_alpha"] for f in chosen],
            "target_held_out": mean_std([f["chosen"]["target_held_out"] for f in chosen]),
            "source_held_out": mean_std([f["chosen"]["source"] for f in chosen]),
            "target_held_out_at_alpha_0": mean_std([f["at_alpha_0"]["target_held_out"] for f in chosen]),
            "source_held_out_at_alpha_0": mean_std([f["at_alpha_0"]["source"] for f in chosen]),
            "best_target_held_out_on_curve": mean_std([max(f["curves"]["target_held_out"]) for f in chosen]),
        }
    return {"summary": summary, "fusion_summary": fusion_summary}


def merge(files: list[str], name: str) -> None:
    """One result file from several runs of this script (e.g. one per seed, run side by side);
    a file's ``--keep-seeds`` filter is given as FILE:SEED,SEED."""
    runs, fusions, parts, int8 = [], [], [], None
    for spec in files:
        path, _, seeds = spec.partition(":")
        data = json.loads(Path(path).read_text())
        keep = {int(x) for x in seeds.split(",")} if seeds else None
        runs += [r for r in data["runs"] if keep is None or r["seed"] in keep]
        fusions += [f for f in data["fusions"] if keep is None or f["seed"] in keep]
        int8 = int8 or data.get("int8")
        parts.append({"file": path, "seeds": sorted(keep) if keep else "all", "command": data["command"]})
        base = data
    keys = ("pair", "source_artifact", "source_model", "held_out", "source_only", "schedule", "self_training")
    save(
        name,
        {
            "merged_from": parts,
            **{key: base[key] for key in keys},
            **summarize(runs, fusions),
            "runs": sorted(runs, key=lambda r: (r["seed"], r["per_class"], r["arm"])),
            "fusions": sorted(fusions, key=lambda f: (f["seed"], f["per_class"])),
            "int8": int8,
        },
    )


def main() -> None:
    import sys

    if sys.argv[1:2] == ["merge"]:
        merge(sys.argv[3:], sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source_artifact")
    parser.add_argument("source_data", help="the source model's labelled folder (mnist-5k)")
    parser.add_argument("target_data", help="the target folder (uci-digits)")
    parser.add_argument("--work", default="/tmp/fewshot/bench")
    parser.add_argument("--per-class", type=int, nargs="+", default=[1, 5, 10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["init", "imagenet", "init_unlabelled"])
    parser.add_argument("--held-out", type=float, default=0.4)
    parser.add_argument("--fuse-seed", type=int, default=None, help="the seed fused at every N (default: the first)")
    parser.add_argument(
        "--fuse-all-seeds-at", type=int, nargs="*", default=[10], help="N where every seed is fused (else the first)"
    )
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--name", default="fewshot_digits")
    args = parser.parse_args()

    from edgexfer import api
    from edgexfer.artifact import Artifact

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = Artifact(args.source_artifact)
    target = work / "uci-split"
    split_counts = split_folder(Path(args.target_data), target, args.held_out, seed=12345)
    started = time.perf_counter()
    baseline = api.evaluate(source.path, target / "test")["accuracy"]
    mnist = api.evaluate(source.path, args.source_data, split="test")  # its own held-out split
    source_on_mnist, mnist_count = mnist["accuracy"], mnist["n"]
    print(f"source model: held-out uci {baseline:.4f}, held-out mnist {source_on_mnist:.4f}", flush=True)

    arms = {
        "init": lambda n, seed: dict(init=str(source.path), per_class=n, seed=seed, **schedule(n)),
        "imagenet": lambda n, seed: dict(
            backbone=source.manifest.backbone,
            img_size=source.manifest.preprocessing.input_size,
            per_class=n,
            seed=seed,
            **schedule(n),
        ),
        "init_unlabelled": lambda n, seed: dict(
            init=str(source.path), per_class=n, seed=seed, unlabelled=str(target / "train"), **schedule(n), **PSEUDO
        ),
    }
    runs: list[dict] = []
    fusions: list[dict] = []
    best: tuple[float, str] | None = None

    def fused_here(n: int, seed: int) -> bool:
        first = args.fuse_seed if args.fuse_seed is not None else args.seeds[0]
        return seed == first or n in args.fuse_all_seeds_at

    def write(final: bool = False) -> None:
        save(
            args.name,
            {
                "complete": final,
                "pair": "mnist-5k → uci-digits",
                "source_artifact": str(source.path),
                "source_model": {
                    "backbone": source.manifest.backbone,
                    "input_size": source.manifest.preprocessing.input_size,
                },
                "held_out": {"uci_digits": split_counts, "mnist_test": mnist_count},
                "source_only": {"target_held_out": baseline, "source_held_out": source_on_mnist},
                "schedule": {str(n): schedule(n) for n in args.per_class},
                "self_training": PSEUDO,
                **summarize(runs, fusions),
                "runs": runs,
                "fusions": fusions,
                "int8": int8,
                "total_seconds": round(time.perf_counter() - started, 1),
            },
        )

    int8 = None
    # Seeds outermost: if the run is cut short, whole seeds are complete.
    for seed in args.seeds:
        for n in args.per_class:
            for arm in args.arms:
                out = work / "runs" / f"{arm}-n{n}-s{seed}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                artifact = api.finetune(target, out, **arms[arm](n, seed))
                m = artifact.metrics
                run = {
                    "arm": arm,
                    "per_class": n,
                    "seed": seed,
                    "target_accuracy": m["test_accuracy"],
                    "held_out_images": m["splits"]["test"],
                    "labelled_images": m["few_labels"]["labelled"],
                    "seconds": round(time.perf_counter() - t0, 1),
                    "options": arms[arm](n, seed),
                }
                if "self_training" in m["history"]:
                    run["pseudo_labels"] = [r["pseudo_labels"] for r in m["history"]["self_training"]["rounds"]]
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "options"}), flush=True)
                if best is None or m["test_accuracy"] > best[0]:
                    best = (m["test_accuracy"], str(out))
                write()
                if arm == "init" and fused_here(n, seed):
                    t0 = time.perf_counter()
                    fused = api.fuse(
                        source.path,
                        out,
                        work / "runs" / f"fused-n{n}-s{seed}",
                        alpha="auto",
                        val_data=f"target={target}",
                        val_images="labelled",
                        source_data=f"source={args.source_data}",
                        keep_source=0.01,
                        curve_data={"target_held_out": str(target / "test")},
                        seed=seed,
                    )
                    curve = json.loads((fused.path / "alpha_curve.json").read_text())
                    alpha = fused.metrics["alpha"]
                    index = curve["alphas"].index(alpha)
                    fusion = {
                        "per_class": n,
                        "seed": seed,
                        "alphas": curve["alphas"],
                        "curves": curve["curves"],
                        "rule": curve["rule"],
                        "chosen_alpha": alpha,
                        "chosen": {name: values[index] for name, values in curve["curves"].items()},
                        "at_alpha_0": {
                            name: values[curve["alphas"].index(0.0)] for name, values in curve["curves"].items()
                        },
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                    fusions.append(fusion)
                    print(
                        json.dumps({k: fusion[k] for k in ("per_class", "seed", "chosen_alpha", "chosen")}), flush=True
                    )
                    if fusion["chosen"]["target_held_out"] > best[0]:
                        best = (fusion["chosen"]["target_held_out"], str(fused.path))
                    write()
                # Keep the disk small: only the best model so far stays (for the int8 export).
                for done in (work / "runs").iterdir():
                    if done.is_dir() and str(done) != best[1]:
                        shutil.rmtree(done, ignore_errors=True)

    if not args.no_int8 and best is not None:
        t0 = time.perf_counter()
        exported = api.export(
            best[1], work / "runs" / "best-int8", "tflite", "int8", calibration_data=str(target / "train")
        )
        result = api.check([exported.path], target / "test", split="all", measure_latency=False)
        int8 = {"keras_artifact": best[1], "check": result, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({"int8": int8}, default=str)[:2000], flush=True)
    write(final=True)


if __name__ == "__main__":
    main()
