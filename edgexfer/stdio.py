"""Hide what native code prints on file descriptor 2 (TensorFlow's CUDA probe at import, the
TFLite converter's "fully_quantize: 0 …", LiteRT's "Created TensorFlow Lite XNNPACK delegate")
unless edgexfer runs with --verbose. Python exceptions still propagate.

Imports nothing of edgexfer's and no TensorFlow, so the on-device runtime can use it too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def verbose_logging() -> bool:
    """Whether edgexfer runs with --verbose (which shows TensorFlow's own C++ logs)."""
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") == "0"


@contextlib.contextmanager
def silenced_stderr() -> Iterator[None]:
    """Redirect the process's fd 2 to /dev/null while the block runs."""
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


def quiet_native_stderr() -> contextlib.AbstractContextManager:
    """:func:`silenced_stderr`, or nothing under --verbose."""
    return contextlib.nullcontext() if verbose_logging() else silenced_stderr()
