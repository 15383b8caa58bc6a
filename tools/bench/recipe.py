"""One pipeline recipe end to end, timed: wall time, CPU time, peak memory and every stage's numbers.

    python tools/bench/recipe.py models/fashion-mnist.yaml --run-dir /tmp/f60 [--name fashion60k]
    python tools/bench/recipe.py models/fashion-mnist.yaml --run-dir /tmp/f60 --collect [--time-log F]

The first form runs ``edgexfer run RECIPE --run-dir DIR`` in a child process (a fresh run dir: an
existing one is refused, since a resumed run would time only what was left) and measures it from
outside: wall seconds, user and system CPU seconds and the peak RSS of the largest process, from
``os.wait4``. ``--collect`` only reads a run that already finished; ``--time-log`` then takes the
timing from the stderr of ``/usr/bin/time -v edgexfer run ...``.

What it records, in ``tools/bench/results/recipe_<name>.json`` and as a markdown table: each
stage's wall seconds (the run's own ``events.jsonl``), its headline accuracy and size (the stage's
``metrics.json``) and the check's parity and gate (``check/check.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from _common import markdown_table, save

# The metrics worth a column: the first key present in a stage's metrics.json wins.
ACCURACY_KEYS = ("test_accuracy", "accuracy_after", "qat_int8_tflite_accuracy")
SIZE_KEYS = ("size_bytes", "model_bytes")


def run_recipe(recipe: str, run_dir: Path) -> dict:
    """Run the recipe in a child process; its wall time, CPU time and peak RSS."""
    command = [sys.executable, "-m", "edgexfer", "run", recipe, "--run-dir", str(run_dir)]
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"edgexfer run exited with {code}; the run dir {run_dir} shows how far it got")
    return {
        "wall_seconds": round(wall, 1),
        "user_seconds": round(usage.ru_utime, 1),
        "system_seconds": round(usage.ru_stime, 1),
        "max_rss_kb": usage.ru_maxrss,  # kB on Linux: the largest process of the run
        "timed_by": "os.wait4 on the edgexfer run process",
    }


def time_log(path: Path) -> dict:
    """The same numbers from the stderr of ``/usr/bin/time -v``."""
    text = path.read_text()

    def field(label: str) -> str:
        match = re.search(rf"^\s*{re.escape(label)}: (.+)$", text, re.M)
        if match is None:
            raise SystemExit(f"{path}: no {label!r} line; pass the stderr of /usr/bin/time -v")
        return match.group(1).strip()

    parts = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    wall = sum(value * 60**i for i, value in enumerate(reversed(parts)))
    return {
        "wall_seconds": round(wall, 1),
        "user_seconds": float(field("User time (seconds)")),
        "system_seconds": float(field("System time (seconds)")),
        "max_rss_kb": int(field("Maximum resident set size (kbytes)")),
        "exit_status": int(field("Exit status")),
        "timed_by": "/usr/bin/time -v",
    }


def collect(run_dir: Path) -> dict:
    """Every stage's wall seconds, accuracy and size, and the check's rows, from the run dir."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    ends = {e["stage"]: e for e in events if e.get("event") == "stage_end"}
    stages = {}
    for name, end in ends.items():
        metrics_file = run_dir / name / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        stages[name] = {
            "seconds": end.get("seconds"),
            "accuracy": next((metrics[k] for k in ACCURACY_KEYS if metrics.get(k) is not None), None),
            "size_bytes": next((metrics[k] for k in SIZE_KEYS if metrics.get(k) is not None), None),
            "params": metrics.get("params"),
            "macs": metrics.get("macs"),
            "metrics": metrics,
        }
    check_file = run_dir / "check" / "check.json"
    check = json.loads(check_file.read_text()) if check_file.is_file() else None
    if check is not None:
        check = {
            "passed": check.get("passed"),
            "thresholds": check.get("thresholds"),
            "split": check.get("split"),
            "n": check.get("n"),
            "rows": [
                {
                    "name": row["name"],
                    "format": row.get("format"),
                    "quant": row.get("quant"),
                    "size_bytes": row.get("size_bytes"),
                    "macs": row.get("macs"),
                    "parity": row.get("parity"),
                    "passed": row.get("passed"),
                    "latency": row.get("latency"),
                }
                for row in check.get("candidates", [])
            ],
        }
    return {"stages": stages, "check": check}


def table(stages: dict) -> str:
    rows = [
        [
            name,
            f"{s['accuracy'] * 100:.2f} %" if isinstance(s["accuracy"], float) else "",
            f"{s['size_bytes'] / 1000:,.0f} kB" if s["size_bytes"] else "",
            f"{s['seconds'] / 60:.1f} min" if s["seconds"] is not None else "",
        ]
        for name, s in stages.items()
    ]
    return markdown_table(["stage", "accuracy", "model size", "wall"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a pipeline YAML (or a shipped recipe's name)")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--name", default=None, help="results name (default: the recipe's file stem)")
    parser.add_argument("--collect", action="store_true", help="only read a finished run")
    parser.add_argument("--time-log", type=Path, default=None, help="with --collect: /usr/bin/time -v's stderr")
    parser.add_argument("--note", default=None, help="recorded with the results (e.g. what else ran)")
    args = parser.parse_args()

    if args.collect:
        timing = time_log(args.time_log) if args.time_log else {}
    else:
        if args.run_dir.exists():
            parser.error(f"--run-dir {args.run_dir} exists: a resumed run would time only the stages left")
        timing = run_recipe(args.recipe, args.run_dir)
    result = {**timing, "recipe": args.recipe, "run_dir": str(args.run_dir), "note": args.note, **collect(args.run_dir)}
    print(table(result["stages"]))
    if "wall_seconds" in timing:
        print(f"whole recipe: {timing['wall_seconds'] / 60:.1f} min wall, peak RSS {timing['max_rss_kb'] / 1e6:.2f} GB")
    save(f"recipe_{args.name or Path(args.recipe).stem}", result)


if __name__ == "__main__":
    main()
