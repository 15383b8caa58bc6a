"""The runtime-only install against the full one: size on disk, and `edgexfer predict` start-up
time and peak memory in each.

    python bench/installs.py --runtime PYTHON --full PYTHON [--full-pythonpath DIR] --model FILE \
        --image IMG [--repeats 7]

``--runtime``: the python of a venv made with ``pip install edgexfer`` (the wheel, no extras);
``--full``: the python of an environment with ``edgexfer[train]`` (``--full-pythonpath``: put a
source checkout first on its path, for an editable install of another checkout).

Size: every file of every distribution pip installs for the install (the dependency closure of
``edgexfer`` or ``edgexfer[train]``, read from the installed distributions' RECORD files; the
interpreter and pip itself excluded), measured inside each environment; for the runtime venv
also ``du`` of its whole site-packages as a cross-check.
Start-up: ``python -m edgexfer predict MODEL IMAGE --json`` from process start to exit, wall
time and peak RSS (``os.wait4``), the two installs alternated ``--repeats`` times; medians.
Results: ``bench/results/installs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import save

CLOSURE = r"""
import json, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
extras = set(sys.argv[1].split(",")) - {""}
seen, sizes, todo = set(), {}, [("edgexfer", extras)]
while todo:
    name, wanted = todo.pop()
    key = name.lower().replace("_", "-")
    if (key, frozenset(wanted)) in seen:
        continue
    seen.add((key, frozenset(wanted)))
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    if key not in sizes:
        total = 0
        for f in dist.files or []:
            try:
                total += f.locate().stat().st_size
            except OSError:
                pass
        sizes[key] = total
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
            todo.append((req.name, set(req.extras)))
sizes.pop("pip", None)
print(json.dumps(sizes))
"""


def closure_sizes(python: str, extras: str, env: dict) -> dict[str, int]:
    out = subprocess.run([python, "-c", CLOSURE, extras], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True).stdout.split()[0])


def timed_run(args: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--full", required=True)
    parser.add_argument("--full-pythonpath")
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    envs = {"runtime": dict(base), "full": dict(base)}
    if args.full_pythonpath:
        envs["full"]["PYTHONPATH"] = args.full_pythonpath
    pythons = {"runtime": args.runtime, "full": args.full}
    result: dict = {"installs": {}}
    for name, extras in (("runtime", ""), ("full", "train")):
        sizes = closure_sizes(pythons[name], extras, envs[name])
        top = sorted(sizes.items(), key=lambda kv: -kv[1])[:8]
        result["installs"][name] = {
            "python": pythons[name],
            "requirement": "edgexfer" + (f"[{extras}]" if extras else ""),
            "distributions": len(sizes),
            "bytes": sum(sizes.values()),
            "largest": [{"name": k, "mb": round(v / 1e6, 1)} for k, v in top],
        }
    runtime_site = Path(
        subprocess.run(
            [args.runtime, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    result["installs"]["runtime"]["site_packages_du_bytes"] = du_bytes(runtime_site)

    command = ["-m", "edgexfer", "predict", args.model, args.image, "--json"]
    runs = {"runtime": [], "full": []}
    for name in ("runtime", "full"):  # warm the file cache once each, untimed
        timed_run([pythons[name], *command], envs[name])
    for _ in range(args.repeats):
        for name in ("runtime", "full"):
            runs[name].append(timed_run([pythons[name], *command], envs[name]))
    for name, values in runs.items():
        result["installs"][name]["predict"] = {
            "seconds_median": round(statistics.median(v[0] for v in values), 3),
            "seconds_min": round(min(v[0] for v in values), 3),
            "peak_rss_mb_median": round(statistics.median(v[1] for v in values), 1),
            "runs": len(values),
        }
    rt, full = result["installs"]["runtime"], result["installs"]["full"]
    result["ratios"] = {
        "size_runtime_over_full": round(rt["bytes"] / full["bytes"], 4),
        "predict_seconds_runtime_over_full": round(
            rt["predict"]["seconds_median"] / full["predict"]["seconds_median"], 3
        ),
        "predict_rss_runtime_over_full": round(
            rt["predict"]["peak_rss_mb_median"] / full["predict"]["peak_rss_mb_median"], 3
        ),
    }
    result["predict_command"] = "python " + " ".join(command)
    print(json.dumps(result, indent=2))
    save("installs", result)


if __name__ == "__main__":
    sys.exit(main())
