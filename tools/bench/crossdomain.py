"""Cross-domain methods on three pairs with ONE set of defaults, 3 seeds, and their int8 exports.

    python tools/bench/crossdomain.py WORK_DIR [--seeds 0 1 2] [--img-size 64] [--target-images 600]
                                      [--source-images 1000] [--source-statistics-images N]
                                      [--methods M ...] [--name crossdomain] [--jobs 1]

Pairs (bundled data, ``edgexfer data prepare``): mnist-5k → uci-digits, uci-digits → mnist-5k,
mnist-5k → uci-digits-color (uci-digits, each digit in a random bright colour on a random dark
background; see ``edgexfer.data.bundled``). Targets are stratified subsets of ``--target-images``
images (``prepare_data(..., limit=N, seed=0)``), the same for every seed and method.

One teacher per SOURCE domain, trained once (seed 0) with the digits recipe's finetune stage
(``models/digits.yaml``): EfficientNet-Lite0 from ImageNet at ``--img-size``, 10 head epochs +
5 fine-tune epochs of the top 30 layers, ``augment: {scale: 0.5, low_res: 0.125}``. For the
source-free shot the source team prepares, once and with source data only, the same teacher
re-fitted under SOURCE BatchNorm statistics (``adapt --method adabn --output-stats source`` with
the source as both domains: 10 epochs of the top layers under per-domain statistics, on every source
training image, or on ``--source-statistics-images N`` of them), the model SHOT assumes; shot then
reads that model and the target images, nothing else.

The seed varies the ADAPTATION only: adapt's seed (its subset of ``--source-images`` source
training images, the batch order, DANN's domain classifier initialisation, SHOT's batch order).
Rows: source-only (the teacher), adabn, coral, dann, pseudo-label (each ``edgexfer adapt --method
M --seed S --max-source-images N`` from the teacher, defaults otherwise); shot (source-free, from
the source-statistics model, defaults); shot with SHOT's own digit-task settings (β 0.1, 30
epochs; same input); shot (teacher): shot straight from the teacher, as ``--method auto`` runs
it; coral → shot (the demo's road: shot with ``--bn frozen`` on that seed's coral model, whose
BatchNorm layers keep the model's own statistics). Target labels are read only to score. ``auto``
is the candidate that ``edgexfer.train.auto.choose_method`` (the rule of ``adapt --method auto``)
picks from the target predictions of adabn, coral, dann, pseudo-label, shot (teacher) and
coral → shot; "auto, without coral → shot" from the first five (what auto chose among before).

Then int8 TFLite (``edgexfer export --format tflite --quant int8``, calibrated on the target
images) of each pair's best row for every seed, checked against its Keras parent on the target
(``edgexfer check``). ``--methods`` runs a subset of the rows (``auto`` only when all of its
candidates ran). Work is kept in WORK_DIR and reused when the script runs again (a killed run
resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import call_in_subprocess, markdown_table, save  # noqa: E402

PAIRS = {
    "mnist-5k → uci-digits": ("mnist-5k", "uci-digits"),
    "uci-digits → mnist-5k": ("uci-digits", "mnist-5k"),
    "mnist-5k → uci-digits-color": ("mnist-5k", "uci-digits-color"),
}
METHODS = ("adabn", "coral", "dann", "pseudo-label", "shot", "shot (digits settings)", "shot (teacher)", "coral → shot")
# SHOT's own settings for its digit tasks (github.com/tim-learn/SHOT, digit/run.sh and uda_digit.py):
# β (cls_par) 0.1 and 30 epochs, against edgexfer's defaults of 0.3 (SHOT's object tasks) and 10
SHOT_DIGITS_SETTINGS = {"shot_weight": 0.1, "epochs": 30}
# what `adapt --method auto` chooses among (its shot runs from the model it is given: the teacher)
AUTO_CANDIDATES = {
    "auto": ("adabn", "coral", "dann", "pseudo-label", "shot (teacher)", "coral → shot"),
    "auto, without coral → shot": ("adabn", "coral", "dann", "pseudo-label", "shot (teacher)"),
}


def teacher_options(img_size: int) -> dict:
    return dict(
        backbone="efficientnet_lite0",
        weights="imagenet",
        img_size=img_size,
        epochs=10,
        fine_tune_epochs=5,
        unfreeze_layers=30,
        augment={"scale": 0.5, "low_res": 0.125},
        seed=0,
    )


def prepare(work: Path, img_size: int, target_images: int, statistics_images: int | None) -> dict:
    """Data folders and one teacher per source domain, and its source-statistics model re-fitted on
    ``statistics_images`` source images (all when ``None``); reused when present."""
    from edgexfer import api

    data = {}
    for name in sorted({name for pair in PAIRS.values() for name in pair}):
        data[name] = api.prepare_data(name, work / "data" / name)["path"]
        data[f"{name}:target"] = api.prepare_data(name, work / "data" / f"{name}-target", limit=target_images)["path"]
    teachers = {}
    for source in sorted({pair[0] for pair in PAIRS.values()}):
        out = work / "teachers" / source
        if not (out / "manifest.json").is_file():
            print(f"teacher on {source}", file=sys.stderr)
            api.finetune(data[source], out, **teacher_options(img_size))
        teachers[source] = str(out)
        # the source team's one-time preparation: the re-fit TRAINS the top layers for 10 epochs under
        # per-domain statistics, and on a subset it overfits (mnist-5k: 1,000 images 93 % val, all 98 %)
        count = "all" if statistics_images is None else str(statistics_images)
        statistics = work / "teachers" / f"{source}-source-statistics-{count}"
        if not (statistics / "manifest.json").is_file():
            print(f"source-statistics model on {source}", file=sys.stderr)
            api.adapt(
                out,
                data[source],
                data[source],
                statistics,
                method="adabn",
                output_stats="source",
                max_source_images=statistics_images,
                max_target_images=statistics_images,
            )
        teachers[f"{source}:source-statistics"] = str(statistics)
    return {"data": data, "teachers": teachers}


def _labelled_target(folder: str, artifact) -> tuple[np.ndarray, np.ndarray]:
    from edgexfer.data import load_arrays
    from edgexfer.data.class_map import scan_labelled

    dataset = scan_labelled(folder, artifact.manifest.label_names, {}, role="target")
    return load_arrays(dataset.all_samples(), artifact.manifest.preprocessing)


def run_pair(spec: dict) -> None:
    """Every method × seed on one pair (in its own process); prints the JSON result last."""
    from edgexfer import api
    from edgexfer.artifact import Artifact
    from edgexfer.train.auto import choose_method, target_probabilities

    work, teacher, source, target = Path(spec["work"]), Artifact(spec["teacher"]), spec["source"], spec["target"]
    images, labels = _labelled_target(target, teacher)
    accuracy = lambda probs: round(float((probs.argmax(1) == labels).mean()), 4)  # noqa: E731
    result = {"n_target": int(len(labels)), "source-only": accuracy(target_probabilities(teacher, images))}
    methods = spec["methods"]
    runs: dict = {method: {} for method in methods}
    auto: dict = {name: {} for name in auto_rows(methods)}
    for seed in spec["seeds"]:
        predictions = {}
        for method in methods:
            slug = (
                method.replace(" → ", "-then-")
                .replace(" (teacher)", "-teacher")
                .replace(" (digits settings)", "-digits")
            )
            out = work / f"{slug}-s{seed}"
            if not (out / "metrics.json").is_file():
                print(f"{spec['pair']}: {method} seed {seed}", file=sys.stderr)
                if method == "shot":  # source-free: the source-statistics model and the target only
                    api.adapt(spec["shot_input"], None, target, out, method="shot", seed=seed)
                elif method == "shot (digits settings)":
                    api.adapt(spec["shot_input"], None, target, out, method="shot", seed=seed, **SHOT_DIGITS_SETTINGS)
                elif method == "shot (teacher)":  # what auto's shot candidate runs
                    api.adapt(teacher.path, None, target, out, method="shot", seed=seed)
                elif method == "coral → shot":
                    api.adapt(runs["coral"][seed]["artifact"], None, target, out, method="shot", bn="frozen", seed=seed)
                else:
                    api.adapt(
                        teacher.path,
                        source,
                        target,
                        out,
                        method=method,
                        seed=seed,
                        max_source_images=spec["source_images"],
                    )
            artifact = Artifact(out)
            predictions[method] = target_probabilities(artifact, images)
            runs[method][seed] = {
                "accuracy": accuracy(predictions[method]),
                "seconds": artifact.metrics["timings_seconds"]["total_seconds"],
                "artifact": str(out),
            }
        best = max(methods, key=lambda m: runs[m][seed]["accuracy"])
        for name in auto:
            candidates = AUTO_CANDIDATES[name]
            choice = choose_method({method: predictions[method] for method in candidates})
            picked = runs[choice["picked"]][seed]["accuracy"]
            best_candidate = max(runs[m][seed]["accuracy"] for m in candidates)
            auto[name][seed] = {
                **choice,
                "accuracy": picked,
                "best_method": best,
                "picked_best": picked >= best_candidate,
            }
    print(json.dumps({**result, "runs": runs, "auto": auto}))


def export_int8(artifact: str, target: str, out: Path) -> dict:
    """int8 TFLite of ``artifact`` (calibrated on target images) and its target accuracy next to its Keras parent."""
    from edgexfer import api

    exported = out / "tflite-int8"
    if not (exported / "manifest.json").is_file():
        api.export(artifact, exported, "tflite", "int8", calibration_data=target)
    check = api.check([exported], target, measure_latency=False, out=out / "check")
    row = check["candidates"][0]["parity"]
    return {
        "artifact": artifact,
        "keras_accuracy": round(row["reference_accuracy"], 4),
        "int8_accuracy": round(row["accuracy"], 4),
        "loss_points": round(100 * (row["reference_accuracy"] - row["accuracy"]), 2),
        "agreement": round(row["agreement"], 4),
    }


def auto_rows(methods) -> list[str]:
    """The auto rows whose every candidate is among ``methods``."""
    return [name for name, candidates in AUTO_CANDIDATES.items() if set(candidates) <= set(methods)]


def mean_std(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4), "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--target-images", type=int, default=600)
    parser.add_argument("--source-images", type=int, default=1000)
    parser.add_argument(
        "--source-statistics-images",
        type=int,
        default=None,
        help="source images of the source-statistics re-fit (shot's input); default: all",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rows to run")
    parser.add_argument("--name", default="crossdomain")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="pairs run at once, one process each")
    args = parser.parse_args()
    if "coral → shot" in args.methods and "coral" not in args.methods:
        parser.error("the row 'coral → shot' adapts each seed's coral model: add 'coral' to --methods")
    started = time.perf_counter()
    setup = call_in_subprocess(
        __file__,
        "_prepare_json",
        {
            "work": str(args.work),
            "img_size": args.img_size,
            "target": args.target_images,
            "statistics_images": args.source_statistics_images,
        },
    )
    methods = [method for method in METHODS if method in args.methods]
    autos = auto_rows(methods)
    specs = {}
    for pair, (source, target) in PAIRS.items():
        specs[pair] = {
            "pair": pair,
            "work": str(args.work / "runs" / pair.replace(" → ", "_to_")),
            "teacher": setup["teachers"][source],
            "shot_input": setup["teachers"][f"{source}:source-statistics"],
            "source": setup["data"][source],
            "target": setup["data"][f"{target}:target"],
            "seeds": args.seeds,
            "source_images": args.source_images,
            "methods": methods,
        }
    # one process per pair, --jobs of them at once (each holds its own teacher and target images)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(
            zip(specs, pool.map(lambda spec: call_in_subprocess(__file__, "run_pair", spec), specs.values()))
        )
    pairs = {pair: {"spec": specs[pair], **results[pair]} for pair in PAIRS}

    table = {}
    for pair, res in pairs.items():
        rows = {"source-only": {"mean": res["source-only"], "std": 0.0, "values": [res["source-only"]]}}
        for method in methods:
            rows[method] = mean_std([res["runs"][method][str(s)]["accuracy"] for s in args.seeds])
        for name in autos:
            rows[name] = mean_std([res["auto"][name][str(s)]["accuracy"] for s in args.seeds])
        best = max(methods, key=lambda m: rows[m]["mean"])
        table[pair] = {
            "rows": rows,
            "best_method": best,
            "best_over_source_only_points": round(100 * (rows[best]["mean"] - res["source-only"]), 1),
            "auto_picks": {name: {s: res["auto"][name][str(s)]["picked"] for s in args.seeds} for name in autos},
            "auto_picked_best": {
                name: sum(res["auto"][name][str(s)]["picked_best"] for s in args.seeds) for name in autos
            },
        }

    exports = {}
    if not args.no_export:
        for pair, entry in table.items():
            method = entry["best_method"]
            for seed in args.seeds:
                artifact = pairs[pair]["runs"][method][str(seed)]["artifact"]
                exports[f"{method} {pair} seed {seed}"] = call_in_subprocess(
                    __file__, "_export_json", {"artifact": artifact, "target": pairs[pair]["spec"]["target"]}
                )

    header = ["method", *PAIRS]
    lines = []
    for method in ("source-only", *methods, *autos):
        cells = [method]
        for pair in PAIRS:
            row = table[pair]["rows"][method]
            cell = f"{100 * row['mean']:.1f}" + ("" if method == "source-only" else f" ± {100 * row['std']:.1f}")
            cells.append(f"**{cell}**" if method == table[pair]["best_method"] else cell)
        lines.append(cells)
    markdown = markdown_table(header, lines)
    print(markdown)
    save(
        args.name,
        {
            "settings": {
                "seeds": args.seeds,
                "img_size": args.img_size,
                "target_images": args.target_images,
                "source_images": args.source_images,
                "source_statistics_images": args.source_statistics_images or "all",
                "methods": methods,
                "jobs": args.jobs,
                "teacher": teacher_options(args.img_size),
            },
            "table": table,
            "pairs": {
                pair: {k: v for k, v in res.items() if k != "spec"} | {"spec": res["spec"]}
                for pair, res in pairs.items()
            },
            "exports": exports,
            "markdown": markdown,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


def _prepare_json(spec: dict) -> None:
    print(json.dumps(prepare(Path(spec["work"]), spec["img_size"], spec["target"], spec["statistics_images"])))


def _export_json(spec: dict) -> None:
    print(
        json.dumps(
            export_int8(
                spec["artifact"],
                spec["target"],
                Path(spec["artifact"]).parent / "exports" / Path(spec["artifact"]).name,
            )
        )
    )


if __name__ == "__main__":
    main()
