"""SIGTERM handled as Ctrl-C: the clean-up that a ``KeyboardInterrupt`` runs (``writing_artifact``
removes its temporary folder, finetune its cache files) runs for SIGTERM too.

SIGTERM is what ``timeout``, ``docker stop``, Kubernetes and CI cancellation send; Python's
default for it is to die on the spot, leaving temporaries behind. Imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; a ``KeyboardInterrupt`` so every handler of Ctrl-C
    (and click's "Aborted!") treats it the same."""


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated``; the process then exits with 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def handler(signum, frame):  # noqa: ARG001 - the signal module's signature
        if received:  # a second SIGTERM while cleaning up: let clean-up finish
            return
        received.append(signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except SystemExit:
        if received:
            sys.exit(SIGTERM_EXIT_CODE)
        raise
    except KeyboardInterrupt:
        if received:
            sys.exit(SIGTERM_EXIT_CODE)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        sys.exit(SIGTERM_EXIT_CODE)
