"""Hide what native code prints on file descriptor 2 (LiteRT's "INFO: Created TensorFlow Lite
XNNPACK delegate for CPU." line) unless edgexfer runs with --verbose. Python exceptions still
propagate. Here, not in ``edgexfer._env``: the runtime must not import a module that can import
TensorFlow."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") == "0":  # --verbose (edgexfer._env.verbose_logging)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
