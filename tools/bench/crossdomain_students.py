"""The int8 student of each pair's best adapted model, next to its Keras parent (3 seeds).

    python tools/bench/crossdomain_students.py WORK_DIR [--results crossdomain_shot_refit_all]
                                               [--row "shot (digits settings)"] [--seeds 0 1 2]
                                               [--name crossdomain_students]

WORK_DIR is the work folder of ``tools/bench/crossdomain.py``; ``--results`` names the result
file that run wrote (``tools/bench/results/NAME.json``): it says where each adapted model, source
folder and target folder is. For every pair and seed, the adapted model of ``--row`` (the best row
of that run on every pair) teaches the demo's student road (``models/digits.yaml``), run as the
CLI commands a user would type:

    edgexfer distill ADAPTED SOURCE --unlabelled TARGET --student cnn_small --student-img-size 32 \\
        --epochs 20 --scale 0.5 --low-res 0.125 --teacher-view clean --seed S --out d
    edgexfer prune d SOURCE --sparsity 0.5 --scale 0.5 --low-res 0.125 --unlabelled TARGET --seed S --out p
    edgexfer quantize p SOURCE --mode qat --scale 0.5 --low-res 0.125 --unlabelled TARGET --seed S --out q
    edgexfer export q --format tflite --quant int8 --out x

then ``check`` scores the int8 file and its Keras parent (``q``) on the target images and on the
source's held-out test split. Target labels are read only by ``check``. Work goes to
WORK_DIR/students and is reused when the script runs again.

``--source-free``: the road a team without the source data runs, reading neither a source image
nor a label (WORK_DIR/students-source-free):

    edgexfer distill ADAPTED --unlabelled TARGET --student cnn_small --student-img-size 32 \
        --epochs 20 --scale 0.5 --low-res 0.125 --teacher-view clean --seed S --out d
    edgexfer export d --format tflite --quant int8 --calibration-data TARGET --out x

``--epochs N`` changes distill's 20 epochs, ``--row`` the teacher; work then goes to a folder named after them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, markdown_table, save  # noqa: E402

AUGMENT = ["--scale", "0.5", "--low-res", "0.125"]


def edgexfer(*args: str | Path) -> None:
    command = [str(Path(sys.executable).parent / "edgexfer"), *map(str, args)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def student_road(
    adapted: str, source: str, target: str, seed: int, work: Path, source_free: bool = False, epochs: int = 20
) -> Path:
    """distill → prune → QAT → int8 TFLite in ``work`` (each step skipped when its artifact exists);
    ``source_free``: distill on the target images alone → int8 TFLite calibrated on them."""
    s = str(seed)
    steps = {
        "d": [
            "distill",
            adapted,
            *([] if source_free else [source]),
            "--unlabelled",
            target,
            "--student",
            "cnn_small",
            "--student-img-size",
            "32",
            "--epochs",
            str(epochs),
            *AUGMENT,
            "--teacher-view",
            "clean",
            "--seed",
            s,
        ],
        "p": ["prune", work / "d", source, "--sparsity", "0.5", *AUGMENT, "--unlabelled", target, "--seed", s],
        "q": ["quantize", work / "p", source, "--mode", "qat", *AUGMENT, "--unlabelled", target, "--seed", s],
        "x": ["export", work / "q", "--format", "tflite", "--quant", "int8"],
    }
    if source_free:
        del steps["p"], steps["q"]
        steps["x"] = ["export", work / "d", "--format", "tflite", "--quant", "int8", "--calibration-data", target]
    for name, args in steps.items():
        if not (work / name / "manifest.json").is_file():
            print(f"{work}: {args[0]}", file=sys.stderr)
            edgexfer(*args, "--out", work / name)
    return work / "x"


def scores(exported: Path, data: str, split: str) -> dict:
    from edgexfer import api

    row = api.check([exported], data, split=split, measure_latency=False)["candidates"][0]["parity"]
    return {
        "keras": round(row["reference_accuracy"], 4),
        "int8": round(row["accuracy"], 4),
        "agreement": round(row["agreement"], 4),
        "images": row["n"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--results", default="crossdomain_shot_refit_all")
    parser.add_argument("--row", default="shot (digits settings)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default=None, help="default: crossdomain_students[_source_free]")
    parser.add_argument("--source-free", action="store_true", help="distill on the target images alone")
    parser.add_argument("--epochs", type=int, default=20, help="distill's epochs")
    args = parser.parse_args()
    # The work folder (and the default result name) says what differs from the default road.
    road = ("students-source-free" if args.source_free else "students") + (
        f"-e{args.epochs}" if args.epochs != 20 else ""
    )
    if args.row != parser.get_default("row"):
        road += "-" + re.sub(r"[^a-z0-9]+", "-", args.row.lower()).strip("-")
    args.name = args.name or "crossdomain_" + road.replace("-", "_")
    started = time.perf_counter()
    bench = json.loads((RESULTS / f"{args.results}.json").read_text())
    pairs = {}
    for pair, entry in bench["pairs"].items():
        spec, runs = entry["spec"], entry["runs"][args.row]
        seeds = {}
        for seed in args.seeds:
            work = args.work / road / pair.replace(" → ", "_to_") / f"s{seed}"
            adapted = runs[str(seed)]["artifact"]
            exported = student_road(adapted, spec["source"], spec["target"], seed, work, args.source_free, args.epochs)
            seeds[seed] = {
                "adapted_target": runs[str(seed)]["accuracy"],
                "target": scores(exported, spec["target"], "all"),
                "source_test": scores(exported, spec["source"], "test"),
                "artifact": str(exported),
            }
        pairs[pair] = seeds

    def cell(pair: str, pick) -> str:
        return " / ".join(f"{100 * pick(pairs[pair][s]):.2f}" for s in args.seeds)

    lines = [
        [
            pair,
            cell(pair, lambda r: r["adapted_target"]),
            cell(pair, lambda r: r["target"]["keras"]),
            cell(pair, lambda r: r["target"]["int8"]),
            cell(pair, lambda r: r["source_test"]["int8"]),
        ]
        for pair in pairs
    ]
    header = ["pair", f"{args.row} (teacher), target", "student Keras, target", "student int8, target", "int8, source"]
    markdown = markdown_table(header, lines)
    print(markdown)
    save(
        args.name,
        {
            "settings": {
                "results": args.results,
                "row": args.row,
                "seeds": args.seeds,
                "road": road,
                "distill_epochs": args.epochs,
            },
            "pairs": pairs,
            "markdown": markdown,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
