"""Random streams a stage can rely on: seeds derived from the stage's seed, and a guard
that keeps once-per-machine work (weight conversion, caches) from advancing global state.

A stage calls ``train.common.seed_everything(seed)`` first, which seeds Python's ``random``,
numpy's global generator, TensorFlow's global seed and tf_keras' own seed generator (which
every unseeded Keras initializer draws its seed from). Anything that then draws from those
only sometimes, such as building a model to convert the ImageNet weights when the cache is
empty, shifts every later draw, so the first run on a machine trained from another head
init than every run after it. Two rules remove that:

- work that happens only sometimes runs inside :func:`preserved_random_state` (and draws
  nothing where it can: the conversion builds its model with constant initializers);
- layers a stage creates take explicit seeds from :func:`derive_seed`, so their values do
  not depend on what was drawn before them.

Importing this module imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import random
import sys
import zlib
from collections.abc import Iterator

import numpy as np


def derive_seed(seed: int, *purpose: str) -> int:
    """A 31-bit seed for one use (``"finetune", "head"``) derived from a stage's ``seed``.

    numpy's SeedSequence mixes the stage seed with a key per purpose, so two purposes never
    share a stream and the result depends on nothing but its arguments.
    """
    key = tuple(zlib.crc32(p.encode()) for p in purpose)
    return int(np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1)[0] & 0x7FFFFFFF)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block without changing any global random stream a later draw would read.

    Saves and restores Python's ``random``, numpy's global generator and, when TensorFlow is
    loaded, tf_keras' seed generator and the eager context's op-seed generator (the one that
    gives unseeded TF random ops their seed after ``tf.random.set_seed``). Those two are
    private attributes: if a TensorFlow release renames them, they are skipped, and the
    cold-cache test (tests/integration/test_reproduce.py) fails instead of the guarantee
    silently lapsing.
    """
    saved_python = random.getstate()
    saved_numpy = np.random.get_state()
    saved_tf = [(holder, attr, rng.getstate()) for holder, attr, rng in _tf_generators()]
    try:
        yield
    finally:
        random.setstate(saved_python)
        np.random.set_state(saved_numpy)
        for holder, attr, state in saved_tf:
            rng = getattr(holder, attr, None)
            if isinstance(rng, random.Random):
                rng.setstate(state)


def _tf_generators() -> list[tuple[object, str, random.Random]]:
    """The Python ``random.Random`` objects TensorFlow/tf_keras seed from, where loaded."""
    found = []
    backend = sys.modules.get("tf_keras.src.backend")
    holder = getattr(backend, "_SEED_GENERATOR", None)
    if isinstance(getattr(holder, "generator", None), random.Random):
        found.append((holder, "generator", holder.generator))
    context_module = sys.modules.get("tensorflow.python.eager.context")
    if context_module is not None:
        ctx = context_module.context()
        if isinstance(getattr(ctx, "_rng", None), random.Random):
            found.append((ctx, "_rng", ctx._rng))
    return found
