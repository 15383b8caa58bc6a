"""Helpers shared by the benchmark scripts: machine facts and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from edgexfer.evaluate.formatting import markdown_table  # noqa: F401 (the scripts import it from here)

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    from edgexfer.artifact import library_versions
    from edgexfer.evaluate.environment import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        **library_versions(),
    }


def spread(values: list[float]) -> str:
    """``mean ± sample std`` in percent (± omitted for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2%}"
    return f"{mean:.2%} ± {statistics.stdev(values):.2%}"


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {"machine": machine(), "command": " ".join([sys.executable.split("/")[-1], *sys.argv]), **result}, indent=2
        )
        + "\n"
    )
    print(f"results: {path}")
    return path


def run_in_subprocess(code: str) -> dict:
    """Run python code in a fresh process (fresh peak RSS) and parse the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_python(code: str, env: dict | None = None) -> dict:
    """Like ``run_in_subprocess`` (a fresh process, its own peak RSS; the JSON it prints last is
    returned), but the child's stderr (its progress log) goes to this terminal, so a long arm
    shows where it is and a failing one shows its traceback; ``env`` is added to its environment."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **{k: str(v) for k, v in (env or {}).items()}},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def call_in_subprocess(script: str, function: str, spec: dict, env: dict | None = None) -> dict:
    """Run ``function(spec)`` of the bench script ``script`` (a file in tools/bench/) in a fresh process
    (``run_python``); the function prints its JSON result last."""
    bench = str(Path(__file__).parent)
    module = Path(script).stem
    return run_python(
        f"import json, sys; sys.path.insert(0, {bench!r}); import {module}; "
        f"{module}.{function}(json.loads({json.dumps(spec)!r}))",
        env,
    )
