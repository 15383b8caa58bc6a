"""Temporary files and folders that belong to one edgexfer process, and sweeping them when
that process died without removing them (SIGKILL, a power cut, an OOM kill).

A temporary's name says whose it is: ``.NAME.tmp-<pid>@<host>-<random>`` beside the final path
(``.NAME.old-<pid>@<host>`` for the artifact being replaced), ``<pid>@<host>-<random>`` under the
cache's ``finetune-runs/``. A sweep removes only entries of exactly this shape whose host is this
machine and whose process no longer runs; anything else (a user's file, an older edgexfer's
temporary, another machine's run on a shared disk, a resumable training checkpoint, which lives
elsewhere on purpose) is never touched.

Imports no TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def _host_tag() -> str:
    """8 hex digits of this machine's name: hostnames may hold dashes and dots, a digest cannot."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


HOST = _host_tag()
_OWNER = r"(?P<pid>\d+)@(?P<host>[0-9a-f]{8})"
_TMP_SIBLING = re.compile(rf"^\..+\.tmp-{_OWNER}-[A-Za-z0-9_]+$")
_OLD_SIBLING = re.compile(rf"^\..+\.old-{_OWNER}$")
_RUN_DIR = re.compile(rf"^{_OWNER}-[A-Za-z0-9_]+$")


def owner() -> str:
    """``<pid>@<host>`` of this process, as temporaries embed it."""
    return f"{os.getpid()}@{HOST}"


def tmp_prefix(name: str) -> str:
    """``tempfile`` prefix of a temporary sibling of ``name`` (add the random part with mkdtemp)."""
    return f".{name}.tmp-{owner()}-"


def tmp_file_name(name: str) -> str:
    """A temporary sibling file name of ``name`` for an atomic ``os.replace``."""
    return f".{name}.tmp-{owner()}-w"


def old_name(name: str) -> str:
    """Where the artifact being replaced waits until the new one is in place."""
    return f".{name}.old-{owner()}"


def run_dir_prefix() -> str:
    return f"{owner()}-"


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return True
    return True


def sweep_stale(folder: str | os.PathLike[str], *, run_dirs: bool = False) -> list[Path]:
    """Remove the temporaries in ``folder`` whose process on this machine is gone; return them.

    ``run_dirs``: ``folder`` is the cache's ``finetune-runs`` (entries ``<pid>@<host>-…``);
    otherwise temporary siblings (``.NAME.tmp-…``/``.NAME.old-…``) are looked for.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    patterns = (_RUN_DIR,) if run_dirs else (_TMP_SIBLING, _OLD_SIBLING)
    for entry in entries:
        match = next((m for m in (p.match(entry.name) for p in patterns) if m), None)
        if match is None:
            continue
        if match.group("host") != HOST or process_alive(int(match.group("pid"))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    if removed:
        log.info(
            "removed %d temporar%s left by edgexfer runs that no longer run: %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            ", ".join(p.name for p in removed[:3]),
        )
    return removed


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace``: a reader sees
    the old file or the new one, never half of it; a crash leaves only a sweepable temporary."""
    path = Path(path)
    tmp = path.with_name(tmp_file_name(path.name))
    tmp.write_text(text)
    os.replace(tmp, path)
