"""Training that survives interruption: per-epoch checkpoints, resumed by re-running the command.

Where: ``<EDGEXFER_CACHE>/checkpoints/<sha256 of the absolute --out path, 16 hex>/``, one
directory per output path, holding ``info.json`` (the output, the stage, the digest of its
config and inputs, progress), one Keras ``BackupAndRestore`` directory per phase being
trained (weights, optimizer state with its step count and so the learning-rate schedule,
and the epoch), and ``<phase>-weights.h5`` + ``<phase>.json`` for each finished phase so a
rerun skips it. The directory is removed when the stage has written its artifact.

A rerun of the same command finds it: a phase that finished is skipped (its weights
loaded), the phase that was interrupted restarts after its last completed epoch and says
"resuming from epoch N". A rerun whose stage, config or inputs differ starts afresh and says
which fields changed. ``edgexfer clean`` lists what interrupted runs left and removes it.

Determinism: weights, optimizer moments, the step counter (and so the learning rate) and the
epoch are restored exactly. What is not restored is the position of the random streams that
shuffle the data, draw augmentations and dropout masks: they restart in the new process, so the
resumed epochs see a different (equally random) data order than an uninterrupted run and the
result matches it within seed-to-seed noise, not bit for bit. EarlyStopping's patience counter
and best weights so far are not kept across the interruption either (it restarts counting).

Hand-written training loops (``adapt``'s, where ``model.fit`` and so ``BackupAndRestore`` are
not used) keep one more file, ``loop.npz`` (:class:`LoopCheckpoint`): the loop's arrays at its last
completed epoch (weights, optimizer variables with the step count, whatever else it carries) and
its position. Such a loop draws its randomness as a function of (seed, position) —
:func:`epoch_rng` for its numpy draws, :class:`SeededRandomLayers` for Dropout masks — so a
resumed run repeats an uninterrupted one bit for bit.

The location is outside the run directory on purpose: temporary artifact directories
(``.NAME.tmp-*``) and the per-process cache files under ``finetune-runs/`` belong to one process
and are swept when it dies; a checkpoint must outlive the process that wrote it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError
from edgexfer.seeding import derive_seed
from edgexfer.tempfiles import write_text_atomically

INFO = "info.json"


def checkpoints_root() -> Path:
    from edgexfer.tf_env import cache_dir

    return Path(cache_dir()) / "checkpoints"


def checkpoint_dir(out) -> Path:
    """The one place the checkpoints of a stage writing ``out`` live."""
    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]
    return checkpoints_root() / key


def _digest(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def _changed(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    changed = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed(a, b, f"{prefix}{key}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            changed.append(f"{prefix}{key} {a!r} → {b!r}")
    return changed


def _alive(info: dict[str, Any]) -> bool:
    """Whether the process that wrote ``info`` still runs (this one counts as not: a run of this
    process that left a checkpoint was interrupted)."""
    if info.get("host") != socket.gethostname() or not info.get("pid") or int(info["pid"]) == os.getpid():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


class StageCheckpoint:
    """Checkpoints of one stage run (see the module docstring).

    ``fingerprint``: what the stage's result depends on (stage, config, inputs); a checkpoint
    written under another fingerprint is discarded. Only the chief writes; in a multi-worker
    run every worker waits for the chief's clean-up before it reads (a collective barrier).
    """

    def __init__(
        self,
        stage: str,
        out,
        fingerprint: dict[str, Any],
        *,
        log: Callable[..., Any] = print,
        is_chief: bool = True,
        strategy=None,
        multi_worker: bool = False,
    ) -> None:
        self.stage, self.out, self.log, self.is_chief = stage, Path(out).resolve(), log, is_chief
        self.dir = checkpoint_dir(out)
        self.fingerprint = {"stage": stage, **fingerprint}
        self.digest = _digest(self.fingerprint)
        self.resumed: dict[str, Any] = {}
        if is_chief:
            self._claim()
        if multi_worker and strategy is not None:
            _barrier(strategy)

    def _claim(self) -> None:
        info_path = self.dir / INFO
        if info_path.is_file():
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("pid") != os.getpid() and _alive(info):
                raise ConfigError(
                    f"another edgexfer process (pid {info['pid']}) is training into {str(self.out)!r}; "
                    "wait for it to finish or stop it first"
                )
            if info.get("digest") != self.digest:
                changes = _changed(info.get("fingerprint", {}), self.fingerprint)
                why = "; ".join(changes[:4]) + (" …" if len(changes) > 4 else "") if changes else "unreadable"
                self.log(
                    f"checkpoint of an interrupted run at {self.dir} is for a different {self.stage} "
                    f"({why}): starting afresh"
                )
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                done = [p.stem for p in self.dir.glob("*.json") if p.name != INFO]
                self.log(
                    f"found the checkpoint of an interrupted {self.stage} run at {self.dir}"
                    + (f" (finished phases: {', '.join(sorted(done))})" if done else "")
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = {}
        if info_path.is_file():
            try:
                previous = json.loads(info_path.read_text())
            except (OSError, ValueError):
                previous = {}
        _write_json(
            info_path,
            {
                "out": str(self.out),
                "stage": self.stage,
                "digest": self.digest,
                "fingerprint": self.fingerprint,
                "created_at": previous.get("created_at") or _now(),
                "updated_at": _now(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "progress": previous.get("progress", {}),
            },
        )

    # -- phases -----------------------------------------------------------------------------
    def completed(self, phase: str) -> dict[str, Any] | None:
        """The history of ``phase`` when an earlier run finished it (its weights are saved)."""
        record = self.dir / f"{phase}.json"
        weights = self.dir / f"{phase}-weights.h5"
        if record.is_file() and weights.is_file():
            return json.loads(record.read_text())
        return None

    def restore(self, phase: str, model) -> dict[str, Any]:
        """Load a finished phase's weights into ``model``; returns its history."""
        history = self.completed(phase)
        model.load_weights(str(self.dir / f"{phase}-weights.h5"))
        self.resumed[phase] = {"skipped": True}
        self.log(f"{phase}: finished before the interruption; its weights are restored from {self.dir}")
        return history or {}

    def callbacks(self, phase: str, epochs: int) -> list:
        """Keras ``BackupAndRestore`` for ``phase`` (every epoch) and a callback that reports a resume."""
        from edgexfer.tf_env import import_tf

        _, keras = import_tf()
        return [
            keras.callbacks.BackupAndRestore(str(self.dir / phase), save_freq="epoch", delete_checkpoint=False),
            _progress_note(keras, self, phase, epochs),
        ]

    def complete(self, phase: str, model, history: dict[str, Any]) -> None:
        """Record ``phase`` as finished: its weights and history; its epoch checkpoint goes."""
        if not self.is_chief:
            # Reading distributed variables (BatchNorm's moving statistics are aggregated on read)
            # is a collective: every worker must save, the others into a file deleted at once.
            with tempfile.TemporaryDirectory(prefix="edgexfer-worker-") as tmp:
                model.save_weights(str(Path(tmp) / "weights.h5"))
            return
        weights = self.dir / f"{phase}-weights.h5"
        tmp = self.dir / f".{phase}-weights.{os.getpid()}.h5"
        model.save_weights(str(tmp))
        os.replace(tmp, weights)
        _write_json(self.dir / f"{phase}.json", history)
        shutil.rmtree(self.dir / phase, ignore_errors=True)

    def finish(self) -> None:
        """The stage wrote its artifact: nothing to resume any more."""
        if self.is_chief:
            shutil.rmtree(self.dir, ignore_errors=True)

    def note_resume(self, phase: str, epochs_done: int, epochs: int) -> None:
        """Say (and record for the metrics) that ``phase`` continues after ``epochs_done`` epochs."""
        self.resumed[phase] = {"from_epoch": epochs_done + 1, "epochs_done_before": epochs_done, "epochs": epochs}
        self.log(
            f"{phase}: resuming from epoch {epochs_done + 1} of {epochs} (epochs 1–{epochs_done} were "
            f"completed before the interruption; checkpoint {self.dir})"
        )

    def note_skipped(self, phase: str) -> None:
        """Say (and record) that ``phase`` finished before the interruption and is not run again."""
        self.resumed[phase] = {"skipped": True}
        self.log(f"{phase}: finished before the interruption; not run again (checkpoint {self.dir})")

    def _note_epoch(self, phase: str, epoch: int, epochs: int) -> None:
        if not self.is_chief:
            return
        path = self.dir / INFO
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        info.setdefault("progress", {})[phase] = {"epochs_done": epoch, "epochs": epochs}
        info["updated_at"] = _now()
        _write_json(path, info)


def _progress_note(keras, checkpoint: StageCheckpoint, phase: str, epochs: int):
    class _ResumeNote(keras.callbacks.Callback):
        first = True

        def on_epoch_begin(self, epoch, logs=None):
            if self.first and epoch > 0:
                checkpoint.note_resume(phase, epoch, epochs)
            self.first = False

        def on_epoch_end(self, epoch, logs=None):
            checkpoint._note_epoch(phase, epoch + 1, epochs)  # noqa: SLF001

    return _ResumeNote()


# -- hand-written training loops -------------------------------------------------------------
LOOP_STATE = "__state__"


class LoopCheckpoint:
    """The per-epoch checkpoint of a hand-written training loop, in a :class:`StageCheckpoint`'s
    directory (so it shares its place, its tie to the config and inputs, its removal when the
    artifact is written and ``edgexfer clean``).

    At the end of every completed epoch the loop calls :meth:`save` with everything a resumed
    run needs to continue exactly where it stopped: named arrays (weights, optimizer variables,
    anything else it carries; :func:`variable_arrays` and :func:`optimizer_arrays` collect them)
    and a JSON-able ``state`` (its position, its history so far). At its start it calls
    :meth:`load`. What it draws at random should be a function of (seed, position):
    :func:`epoch_rng`, :class:`SeededRandomLayers`; then no random stream has to be saved.

    One file, written under a temporary name, flushed to disk and renamed over the previous one:
    a kill during the write leaves the previous epoch's checkpoint whole. A file that cannot be
    read (a full disk, a damaged cache) is reported and the loop starts afresh.

    A loop adopts it like this (``adapt`` does the same, per training unit)::

        checkpoint = StageCheckpoint("mystage", out, {"config": ..., "parent": ..., "data": ...}, log=log)
        loop = LoopCheckpoint(checkpoint)
        optimizer.build(variables)  # the same variables in the same order in every run
        start, saved = 0, loop.load()
        if saved is not None:
            state, arrays = saved
            assign_arrays("weights", variables, arrays)
            restore_optimizer(optimizer, variables, arrays)
            start = state["epochs_done"]
            checkpoint.note_resume("mystage", start, epochs)
        with SeededRandomLayers(model, seed, "mystage") as random_layers:
            for epoch in range(start, epochs):
                rng = epoch_rng(seed, "mystage", epoch)  # this epoch's shuffles
                random_layers.reseed(epoch)  # and dropout masks
                ...  # train one epoch
                arrays = {**variable_arrays("weights", variables), **optimizer_arrays(optimizer)}
                loop.save({"epochs_done": epoch + 1}, arrays, phase="mystage", epochs_done=epoch + 1, epochs=epochs)
        ...  # write the artifact, then
        checkpoint.finish()
    """

    def __init__(self, checkpoint: StageCheckpoint, name: str = "loop") -> None:
        self.checkpoint = checkpoint
        self.path = checkpoint.dir / f"{name}.npz"

    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The saved ``(state, arrays)``, or None when there is nothing (readable) to resume."""
        for stale in self.path.parent.glob(f".{self.path.stem}.*.npz"):  # a write a kill cut short
            stale.unlink(missing_ok=True)
        if not self.path.is_file():
            return None
        try:
            # allow_pickle=False: plain arrays only, nothing in the file is executed.
            with np.load(self.path, allow_pickle=False) as data:
                state = json.loads(str(data[LOOP_STATE]))
                arrays = {key: data[key] for key in data.files if key != LOOP_STATE}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            self.checkpoint.log(f"the checkpoint {self.path} cannot be read ({error}): starting afresh")
            self.path.unlink(missing_ok=True)
            return None
        return state, arrays

    def save(
        self, state: dict[str, Any], arrays: dict[str, np.ndarray], *, phase: str, epochs_done: int, epochs: int
    ) -> None:
        """Replace the checkpoint by this epoch's (atomically); note the progress for ``edgexfer clean``."""
        if not self.checkpoint.is_chief:
            return
        tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.npz")
        with open(tmp, "wb") as handle:
            np.savez(handle, **{LOOP_STATE: np.array(json.dumps(state))}, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.checkpoint._note_epoch(phase, epochs_done, epochs)  # noqa: SLF001 - same module


def variable_arrays(prefix: str, variables: Sequence) -> dict[str, np.ndarray]:
    """The values of ``variables`` as ``{prefix.i: array}`` (for :meth:`LoopCheckpoint.save`)."""
    return {f"{prefix}.{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)}


def assign_arrays(prefix: str, variables: Sequence, arrays: dict[str, np.ndarray]) -> None:
    """Put the values :func:`variable_arrays` saved back into ``variables``; checks every shape
    before assigning any (a ``ValueError`` leaves the variables as they were)."""
    saved = [arrays.get(f"{prefix}.{i}") for i in range(len(variables))]
    extra = f"{prefix}.{len(variables)}" in arrays
    bad = [v.name for v, a in zip(variables, saved) if a is None or tuple(a.shape) != tuple(v.shape)] or (
        ["more saved values than variables"] if extra else []
    )
    if bad:
        raise ValueError(f"the checkpoint's {prefix} values do not fit ({', '.join(bad[:3])})")
    for variable, value in zip(variables, saved):
        variable.assign(value)


def optimizer_arrays(optimizer) -> dict[str, np.ndarray]:
    """A tf_keras optimizer's variables: its step count (and so a schedule's position) and its
    per-weight slots (Adam's moments)."""
    return variable_arrays("optimizer", optimizer.variables)


def restore_optimizer(optimizer, var_list: Sequence, arrays: dict[str, np.ndarray]) -> None:
    """Build ``optimizer`` for ``var_list`` (the list it was built for when saved: build it
    explicitly with the same list in every run) and load what :func:`optimizer_arrays` saved."""
    optimizer.build(list(var_list))
    assign_arrays("optimizer", optimizer.variables, arrays)


def epoch_rng(seed: int, *position: Any) -> np.random.Generator:
    """A numpy generator that depends on nothing but the seed and the loop's ``position``
    (phase, epoch…): an epoch draws the same shuffles whether or not the run was resumed."""
    return np.random.default_rng(derive_seed(seed, *map(str, position)))


class SeededRandomLayers:
    """Within the block, the random layers of ``model`` (Dropout and the like) draw from
    generators that :meth:`reseed` resets, so a loop makes each epoch's masks a function of
    (seed, position).

    Why: tf_keras' random layers use stateful random ops by default, whose position lives in
    the op's kernel: it restarts in a new process (and with each new trace of a function), so
    a resumed run would draw the masks of its first epochs again. Here each layer gets a
    ``tf.random.Generator`` (its state is a variable; resetting it needs no retrace). It is
    swapped into the layer's random generator, a private attribute of tf_keras, and the
    original is put back on exit (the model's saved config stays as it was); where a tf_keras
    release has no such attribute the layer is left alone and :attr:`exact` is False.
    Enter before the training step is traced.
    """

    def __init__(self, model, seed: int, *purpose: str) -> None:
        self.model, self.seed, self.purpose = model, seed, purpose
        self.generators: dict[str, Any] = {}
        self._saved: list[tuple[Any, str, Any]] = []
        self.exact = True

    def __enter__(self) -> SeededRandomLayers:
        from edgexfer.tf_env import import_tf

        tf, _ = import_tf()
        for layer in _random_layers(self.model):
            holder = getattr(layer, "_random_generator", None)
            if holder is None or not hasattr(holder, "_generator") or not hasattr(holder, "RNG_STATEFUL"):
                self.exact = False
                continue
            holder._maybe_init()  # noqa: SLF001 - tf_keras initialises it lazily
            generator = tf.random.Generator.from_seed(derive_seed(self.seed, *self.purpose, layer.name))
            self._saved.append((holder, holder._rng_type, holder._generator))  # noqa: SLF001
            holder._rng_type, holder._generator = holder.RNG_STATEFUL, generator  # noqa: SLF001
            self.generators[layer.name] = generator
        return self

    def reseed(self, *position: Any) -> None:
        """Reset every layer's generator to a state that depends only on the seed and ``position``."""
        for name, generator in self.generators.items():
            generator.reset_from_seed(derive_seed(self.seed, *self.purpose, name, *map(str, position)))

    def __exit__(self, *exc) -> bool:
        for holder, rng_type, generator in self._saved:
            holder._rng_type, holder._generator = rng_type, generator  # noqa: SLF001
        self._saved.clear()
        return False


def _random_layers(model) -> list:
    """The layers of ``model`` (nested models included) that draw random numbers when training."""
    seen, found = set(), []
    for module in [model, *model.submodules]:
        if id(module) in seen or not hasattr(module, "_random_generator") or not hasattr(module, "get_config"):
            continue
        seen.add(id(module))
        found.append(module)
    return found


def _barrier(strategy) -> None:
    """Every worker waits here until all have arrived (one all-reduce of a scalar)."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# -- listing and removing what interrupted runs left -------------------------------------------
def list_checkpoints() -> list[dict[str, Any]]:
    """Every checkpoint directory: its output, stage, progress, size, age and whether its
    process still runs (on this host)."""
    root = checkpoints_root()
    found = []
    for path in sorted(root.glob("*")) if root.is_dir() else []:
        if not path.is_dir():
            continue
        try:
            info = json.loads((path / INFO).read_text())
        except (OSError, ValueError):
            info = {}
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        found.append(
            {
                "dir": str(path),
                "out": info.get("out"),
                "stage": info.get("stage"),
                "progress": info.get("progress", {}),
                "updated_at": info.get("updated_at"),
                "bytes": size,
                "running": _alive(info),
                "finished_phases": sorted(p.stem for p in path.glob("*.json") if p.name != INFO),
            }
        )
    return found


def remove_checkpoints(out: str | None = None) -> list[dict[str, Any]]:
    """Remove the checkpoints of runs that are not running (of ``out`` only, when given)."""
    wanted = checkpoint_dir(out) if out else None
    removed = []
    for entry in list_checkpoints():
        if entry["running"] or (wanted is not None and Path(entry["dir"]) != wanted):
            continue
        shutil.rmtree(entry["dir"], ignore_errors=True)
        removed.append(entry)
    return removed


def stage_checkpoint(stage: str, out, config, source, data_dir, dataset, cluster, strategy, log) -> StageCheckpoint:
    """The checkpoint of a compression stage training ``source``'s model on ``data_dir``: tied to
    the config as the user gave it, the parent model's bytes and the data folder's fingerprint."""
    return StageCheckpoint(
        stage,
        out,
        {
            "config": config.model_dump(),
            "parent": source.parent_ref()["sha256"],
            "data": {"path": str(Path(data_dir).resolve()), **dataset.fingerprint()},
        },
        log=log,
        is_chief=cluster.is_chief,
        strategy=strategy,
        multi_worker=cluster.multi_worker,
    )
