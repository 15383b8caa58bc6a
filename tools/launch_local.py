#!/usr/bin/env python3
"""Start N training workers on this machine, each with its own TF_CONFIG, and wait for them.

    python tools/launch_local.py 2 -- edgexfer finetune DATA --out runs/ft --strategy multi-worker
    python tools/launch_local.py 2 --logs runs/ft-logs -- python -m edgexfer distill ... --strategy multi-worker

The command after ``--`` runs once per worker, unchanged; each worker gets
``TF_CONFIG={"cluster": {"worker": ["localhost:P0", ..., "localhost:PN-1"]}, "task": {"type":
"worker", "index": i}}`` with N free ports picked here. Worker 0 (the chief) prints to this
terminal; the others' output goes to ``--logs DIR/worker-i.log`` (default: a temporary
directory, deleted when every worker succeeded, kept and named otherwise). When a worker fails
the others are stopped (they would otherwise wait for it in the next all-reduce) and the exit
code is the first failure's. Ctrl-C stops them all; re-run the same line to resume from the
last completed epoch.

This is for trying the cluster path on one machine: on shared cores it is not faster than one
process. For several machines write TF_CONFIG per machine (README, "Scale-out").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free now (bound to port 0, then released)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def tf_configs(workers: int, ports: list[int]) -> list[str]:
    hosts = [f"localhost:{port}" for port in ports]
    return [json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}) for i in range(workers)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: launch_local.py N [--logs DIR] -- COMMAND ...  (the command goes after --)", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description="Start N workers on localhost with TF_CONFIG each.")
    parser.add_argument("workers", type=int, help="number of worker processes (2 or more)")
    parser.add_argument("--logs", type=Path, help="directory for the non-chief workers' output")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if args.workers < 2:
        print(f"error: N must be 2 or more, got {args.workers}", file=sys.stderr)
        return 2
    if not command:
        print("error: no command after --", file=sys.stderr)
        return 2
    if command[0] == "edgexfer" and shutil.which("edgexfer") is None:
        command = [sys.executable, "-m", "edgexfer", *command[1:]]
    logs = args.logs or Path(tempfile.mkdtemp(prefix="edgexfer-workers-"))
    logs.mkdir(parents=True, exist_ok=True)
    configs = tf_configs(args.workers, free_ports(args.workers))
    processes, files = [], []
    for index, config in enumerate(configs):
        env = {**os.environ, "TF_CONFIG": config}
        if index == 0:
            processes.append(subprocess.Popen(command, env=env))
        else:
            handle = open(logs / f"worker-{index}.log", "w")
            files.append(handle)
            processes.append(subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT))
    print(
        f"launch_local: {args.workers} workers (pids {', '.join(str(p.pid) for p in processes)}), "
        f"worker 0 here, the others' output in {logs}",
        file=sys.stderr,
    )

    def stop_all(*_):
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, lambda *a: (stop_all(), sys.exit(143)))
    failed = 0
    try:
        while any(p.poll() is None for p in processes):
            for index, p in enumerate(processes):
                if p.poll() not in (None, 0) and not failed:
                    failed = p.returncode if p.returncode > 0 else 128 - p.returncode  # killed by a signal
                    print(
                        f"launch_local: worker {index} exited with {p.returncode}; stopping the others (logs: {logs})",
                        file=sys.stderr,
                    )
                    stop_all()
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop_all()
        for p in processes:
            p.wait()
        return 130
    finally:
        for handle in files:
            handle.close()
    codes = [p.returncode for p in processes]
    failed = failed or next((c for c in codes if c), 0)
    if not failed and args.logs is None:
        shutil.rmtree(logs, ignore_errors=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
