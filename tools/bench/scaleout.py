"""Scale-out and fault tolerance: 2 workers on localhost against one process; kill and resume.

    python bench/scaleout.py DATA [--name uci] [--arms finetune,distill,resume,mw-resume]

DATA is an image folder (e.g. ``edgexfer data prepare uci-digits DATA``). Every arm runs the
``edgexfer`` CLI in fresh processes with the same data, split, seed and global batch:

* ``finetune``: ``edgexfer finetune`` (cnn_small from scratch, both phases, feature cache) as
  one process, then as 2 workers (``tools/launch_local.py 2 -- ... --strategy multi-worker``);
* ``distill``: ``edgexfer distill`` of the single-process finetune artifact into cnn_tiny, the
  same two ways;
* ``resume``: the single-process finetune killed (SIGKILL) once phase 2 has completed
  ``--kill-after`` epochs, then the same command again; compared with the uninterrupted run;
* ``mw-resume``: the 2-worker finetune with worker 1 killed (SIGKILL) at the same point (the
  chief then fails in its next all-reduce and the launcher stops), then relaunched.

Reported: test accuracy, per-worker shard sizes, wall time, step time and the bytes
all-reduced per step (from ``metrics.json["distributed"]``), the epoch a rerun resumed from.
On one machine's shared cores two workers are not expected to be faster: every step adds a
gRPC all-reduce between two processes competing for the same cores. Results:
``bench/results/scaleout_NAME.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import markdown_table, save

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is tools/bench/scaleout.py)
FINETUNE = [
    "--backbone",
    "cnn_small",
    "--weights",
    "none",
    "--img-size",
    "32",
    "--epochs",
    "6",
    "--fine-tune-epochs",
    "6",
    "--unfreeze-layers",
    "20",
    "--batch-size",
    "32",
    "--learning-rate",
    "0.01",
    "--fine-tune-learning-rate",
    "0.003",
    "--early-stopping",
    "0",
    "--seed",
    "0",
]
DISTILL = [
    "--student",
    "cnn_tiny",
    "--epochs",
    "8",
    "--batch-size",
    "32",
    "--learning-rate",
    "0.01",
    "--early-stopping",
    "0",
    "--seed",
    "0",
]


def edgexfer(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgexfer", *args]


def launch(workers: int, command: list[str], logs: Path) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "launch_local.py"), str(workers), "--logs", str(logs), "--", *command]


def run(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(
            f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return round(wall, 1), done.stdout + done.stderr


def summary(out: Path, wall: float) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    accuracy = metrics.get("test_accuracy", metrics.get("student_accuracy"))
    return {
        "test_accuracy": accuracy,
        "wall_seconds": wall,
        "distributed": metrics.get("distributed"),
        "workers": manifest["extra"].get("workers"),
        "resumed": metrics.get("resumed"),
        "timings_seconds": metrics.get("timings_seconds"),
    }


def checkpoint_progress(out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from edgexfer.train.resume import checkpoint_dir

    try:
        return json.loads((checkpoint_dir(out) / "info.json").read_text()).get("progress", {})
    except (OSError, ValueError):
        return {}


def kill_when(process: subprocess.Popen, out: Path, phase: str, epochs: int, victim_pid: int | None = None) -> dict:
    """SIGKILL ``victim_pid`` (default: ``process``) once ``phase`` has completed ``epochs`` epochs."""
    while process.poll() is None:
        progress = checkpoint_progress(out).get(phase, {})
        if progress.get("epochs_done", 0) >= epochs:
            os.kill(victim_pid or process.pid, signal.SIGKILL)
            process.wait()
            return progress
        time.sleep(0.2)
    raise SystemExit(f"the run ended before {phase} reached {epochs} epochs")


def worker_pids(launcher_pid: int) -> list[int]:
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--name", default="uci")
    parser.add_argument("--arms", default="finetune,distill,resume,mw-resume")
    parser.add_argument("--kill-after", type=int, default=3, help="phase 2 epochs completed before the kill")
    args = parser.parse_args()
    arms = args.arms.split(",")
    work = Path(tempfile.mkdtemp(prefix="scaleout-"))
    data = str(args.data)
    results: dict = {"data": data, "finetune_options": FINETUNE, "distill_options": DISTILL, "arms": {}}
    rows = []

    single = work / "ft-single"
    wall, _ = run(edgexfer("finetune", data, "--out", str(single), *FINETUNE))
    results["arms"]["finetune single"] = summary(single, wall)
    if "finetune" in arms:
        out = work / "ft-2w"
        wall, _ = run(
            launch(
                2,
                edgexfer("finetune", data, "--out", str(out), *FINETUNE, "--strategy", "multi-worker"),
                work / "logs-ft",
            )
        )
        results["arms"]["finetune 2 workers"] = summary(out, wall)
    if "distill" in arms:
        out = work / "d-single"
        wall, _ = run(edgexfer("distill", str(single), data, "--out", str(out), *DISTILL))
        results["arms"]["distill single"] = summary(out, wall)
        out = work / "d-2w"
        wall, _ = run(
            launch(
                2,
                edgexfer("distill", str(single), data, "--out", str(out), *DISTILL, "--strategy", "multi-worker"),
                work / "logs-d",
            )
        )
        results["arms"]["distill 2 workers"] = summary(out, wall)
    if "resume" in arms:
        out = work / "ft-killed"
        command = edgexfer("finetune", data, "--out", str(out), *FINETUNE)
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_at = kill_when(process, out, "phase2", args.kill_after)
        first = time.perf_counter() - start
        wall, log = run(command)
        said = re.findall(r"resuming from epoch \d+ of \d+", " ".join(log.split()))
        results["arms"]["finetune killed + rerun"] = {
            **summary(out, wall),
            "killed_after": killed_at,
            "first_run_seconds": round(first, 1),
            "said": said,
        }
    if "mw-resume" in arms:
        out = work / "ft-2w-killed"
        command = launch(
            2, edgexfer("finetune", data, "--out", str(out), *FINETUNE, "--strategy", "multi-worker"), work / "logs-mwk"
        )
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        pids = worker_pids(process.pid)
        killed_at = kill_when(process, out, "phase2", args.kill_after, victim_pid=pids[-1] if pids else None)
        wall, log = run(command)
        said = re.findall(r"resuming from epoch \d+ of \d+", " ".join(log.split()))
        results["arms"]["finetune 2 workers, worker 1 killed + rerun"] = {
            **summary(out, wall),
            "killed_after": killed_at,
            "said": said,
        }

    for name, arm in results["arms"].items():
        dist = arm.get("distributed") or {}
        step = dist.get("step_seconds")
        rows.append(
            [
                name,
                arm.get("workers"),
                dist.get("worker_images"),
                arm["test_accuracy"],
                arm["wall_seconds"],
                json.dumps(step) if isinstance(step, dict) else step,
                json.dumps(dist.get("allreduce_bytes_per_step")),
                json.dumps(arm.get("resumed") or {}),
            ]
        )
    table = markdown_table(
        ["arm", "workers", "images per worker", "test acc", "wall s", "step s", "all-reduce bytes/step", "resumed"],
        rows,
    )
    results["table"] = table
    print(table)
    save(f"scaleout_{args.name}", results)


if __name__ == "__main__":
    main()
