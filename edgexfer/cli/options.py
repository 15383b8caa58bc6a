"""Options several commands share, declared once (typer ``Annotated`` types), and the one helper
that merges ``--config FILE`` with the flags given on the command line.

A command declares ``seed: options.Seed = None``; the flag, its help text and its type come
from here, so the same option reads the same in every command's ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def config_help(model, field: str, text: str | None = None) -> str:
    """A help text from a config model's field: its description (or ``text``) and its default."""
    info = model.model_fields[field]
    return f"{text or info.description or ''} (default: {info.default})".strip()


def merge_config(
    config_file: Optional[Path],
    flags: dict[str, Any],
    augment: dict[str, Any] | None = None,
    head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Options from ``--config`` overridden by the flags given on the command line (``None``:
    not given); ``augment`` and ``head`` flags override their group's keys one by one."""
    from edgexfer.config import load_config_file

    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    for group, options in (("augment", augment or {}), ("head", head or {})):
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            values[group] = {**values.get(group, {}), **given}
    return values


STRATEGY_HELP = (
    "default | mirrored | multi-worker (tf.distribute; multi-worker reads TF_CONFIG, each worker "
    "trains on its own shard, --batch-size is the global batch, worker 0 writes the artifact; "
    "tools/launch_local.py starts N workers here) (default: default)"
)

Out = Annotated[Path, typer.Option("--out", "-o", help="Artifact directory to write.")]
ConfigFile = Annotated[
    Optional[Path], typer.Option("--config", help="YAML/TOML file of these options; flags override it.")
]
Strict = Annotated[bool, typer.Option("--strict", help="Corrupt image files are an error.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed (default: 0)")]
MaxTrainImages = Annotated[Optional[int], typer.Option(help="Stratified subset of the training split.")]
Strategy = Annotated[Optional[str], typer.Option(help=STRATEGY_HELP)]

# Augmentation (edgexfer.config.AugmentOptions), off by default.
Flip = Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Random horizontal flips (default: off)")]
CropZoom = Annotated[Optional[float], typer.Option(help="Random crop/zoom, max fraction (default: 0)")]
Brightness = Annotated[
    Optional[float], typer.Option(help="Random brightness, max delta as fraction of 255 (default: 0)")
]
Contrast = Annotated[Optional[float], typer.Option(help="Random contrast, max factor delta (default: 0)")]
Scale = Annotated[
    Optional[float],
    typer.Option(help="Random zoom about the centre, in or out by up to a factor 1 + SCALE (default: 0)"),
]
LowRes = Annotated[
    Optional[float],
    typer.Option(help="Random coarsening: shrink to this fraction of the side at the least, then back (default: 0)"),
]
