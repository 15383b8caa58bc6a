"""adapt killed mid-training and resumed, against an uninterrupted run with the same seed.

    python tools/bench/adapt_resume.py TEACHER SOURCE TARGET [--method coral --bn frozen]
        [--kill-after 4] [--max-source-images N] [--name digits]

Three ``edgexfer adapt`` processes with the same options: one uninterrupted; one SIGKILLed
(no clean-up runs) once ``--kill-after`` epochs are checkpointed (during the next epoch); the
same command again, which resumes. Reported: the epoch the rerun resumed from (its own words),
wall times, accuracy of both artifacts on the labelled TARGET folder (adapt never reads its
labels; the evaluation does) and whether their weights are identical. Results:
``tools/bench/results/adapt_resume_NAME.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import markdown_table, save
from scaleout import edgexfer, kill_when, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher")
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--name", default="digits")
    parser.add_argument("--method", default="coral")
    parser.add_argument("--bn", default="frozen")
    parser.add_argument("--learning-rate", default="0.001")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--kill-after", type=int, default=4, help="epochs checkpointed before the kill")
    parser.add_argument("--max-source-images", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="where the artifacts go (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="adapt-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    options = [
        "--source",
        args.source,
        "--target",
        args.target,
        "--method",
        args.method,
        "--bn",
        args.bn,
        "--learning-rate",
        args.learning_rate,
        "--seed",
        args.seed,
        *(["--max-source-images", str(args.max_source_images)] if args.max_source_images else []),
    ]
    results: dict = {"teacher": args.teacher, "options": options, "arms": {}}

    full = work / "uninterrupted"
    wall, _ = run(edgexfer("adapt", args.teacher, *options, "--out", str(full)))
    results["arms"]["uninterrupted"] = {"wall_seconds": wall}

    out = work / "killed"
    command = edgexfer("adapt", args.teacher, *options, "--out", str(out))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = kill_when(process, out, args.method, args.kill_after)
    first = round(time.perf_counter() - start, 1)
    wall, log = run(command)
    said = re.findall(r"resuming from epoch \d+ of \d+", " ".join(log.split()))
    results["arms"]["killed + rerun"] = {
        "killed_after": killed_at,
        "killed_run_seconds": first,
        "wall_seconds": wall,
        "said": said,
    }

    from edgexfer.artifact import Artifact
    from edgexfer.evaluate.domains import evaluate_domains
    from edgexfer.keras_io import load_keras_model

    for name, path in (("uninterrupted", full), ("killed + rerun", out)):
        arm = results["arms"][name]
        metrics = Artifact(path).metrics
        arm["target_accuracy"] = evaluate_domains(path, {"target": args.target})["domains"]["target"]["accuracy"]
        arm["adapt_seconds"] = metrics["timings_seconds"]["adapt_seconds"]
        arm["checkpoint_seconds"] = metrics["timings_seconds"].get("checkpoint_seconds")
        arm["resumed"] = metrics.get("resumed")
        arm["history"] = metrics["history"]
    a = load_keras_model(full / "model.h5").get_weights()
    b = load_keras_model(out / "model.h5").get_weights()
    results["identical_weights"] = len(a) == len(b) and all((x == y).all() for x, y in zip(a, b))
    rows = [
        [
            name,
            arm["target_accuracy"],
            arm["wall_seconds"],
            arm.get("killed_run_seconds", ""),
            " ".join(arm.get("said", [])),
        ]
        for name, arm in results["arms"].items()
    ]
    results["table"] = markdown_table(["arm", "target acc", "wall s", "killed run s", "rerun said"], rows)
    print(results["table"], f"\nidentical weights: {results['identical_weights']}")
    save(f"adapt_resume_{args.name}", results)


if __name__ == "__main__":
    sys.exit(main())
