"""What a measurement ran on: the CPU, the cores this process may use, the thread settings and
the library versions; one place for the report, check/benchmark and the bench scripts."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), which a container may cap below the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    """Python, platform, CPU, cores, the thread variables and the library versions."""
    from edgexfer.artifact import library_versions

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu cores": os.cpu_count(),
        "usable cores": usable_cores(),
    }
    env.update({variable: os.environ.get(variable, "unset") for variable in THREAD_VARIABLES})
    env.update(library_versions())
    return env
