"""The shared test kit: synthetic image folders and the tiny shared teacher.

Test files import from here (``from kit import ...``), never from each other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

COLORS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}

# A tiny fine-tuned model (cnn_tiny, 16 px) for tests that need any trained artifact; a test
# that needs more overrides keys: {**TINY_FINETUNE, "epochs": 12}.
TINY_FINETUNE = dict(
    backbone="cnn_tiny",
    weights="none",
    img_size=16,
    epochs=6,
    fine_tune_epochs=1,
    unfreeze_layers=2,
    batch_size=16,
    learning_rate=0.05,
    early_stopping_patience=0,
    seed=1,
)

# A tiny teacher trains in seconds and still has to learn: the compress tests share one.
TEACHER = dict(
    backbone="cnn_small",
    weights="none",
    img_size=16,
    epochs=15,
    fine_tune_epochs=0,
    batch_size=16,
    learning_rate=0.05,
    early_stopping_patience=0,
    seed=1,
)


def make_color_folder(
    root: Path,
    classes=COLORS,
    per_class=24,
    size=20,
    seed=0,
    *,
    contrast=1.0,
    shift=(0, 0, 0),
    labelled=True,
    names=None,
    prefix_names=False,
) -> Path:
    """Noisy coloured squares, one folder per class: easy, but only if training works.

    ``contrast``/``shift`` move them to another domain; ``labelled=False`` writes them all in
    ``root`` (an unlabelled folder, file names prefixed by the class); ``names`` renames class
    folders.
    """
    rng = np.random.default_rng(seed)
    for name, color in classes.items():
        folder = root / (names or {}).get(name, name) if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.array(color) + rng.normal(0, 40, (size, size, 3))
            if contrast != 1.0 or any(shift):
                pixels = (pixels - 128) * contrast + 128 + np.array(shift)
            stem = f"{name}{index}" if prefix_names or not labelled else f"{index}"
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(folder / f"{stem}.png")
    return root


def shared_teacher(tmp_path_factory):
    """One tiny teacher (and its image folder) per test session, shared by the compress tests."""
    from edgexfer import api
    from edgexfer.artifact import Artifact

    root = tmp_path_factory.getbasetemp() / "compress-shared"
    if not (root / "teacher" / "manifest.json").is_file():
        data = root / "data"
        if not data.exists():
            make_color_folder(data, per_class=30, size=20)
        api.finetune(data, root / "teacher", **TEACHER)
    return Artifact(root / "teacher"), root / "data"


def call_cli(capsys, *args) -> SimpleNamespace:
    """``edgexfer ARGS`` in this process through ``cli.main`` (its error mapping included):
    exit code, stdout, stderr."""
    from edgexfer import cli

    saved, sys.argv = sys.argv, ["edgexfer", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return SimpleNamespace(code=code, out=out, err=err)


def the_error(text: str) -> str:
    """The one ``error:`` line of stderr (progress lines may precede it; no traceback)."""
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def run_shipped_recipe(name: str, run_dir: Path, overrides: list[str]) -> Path:
    """``models/NAME.yaml`` run with ``overrides`` (tiny models, generated data) into ``run_dir``; its
    target check's gate is opened, since tiny models say nothing about int8 parity."""
    from edgexfer.pipeline import run_pipeline

    recipe = Path(__file__).parents[1] / "models" / f"{name}.yaml"
    gate = ["check_target.min_agreement=0.0", "check_target.max_acc_drop=1.0"]
    run_pipeline(recipe, run_dir=run_dir, overrides=[*overrides, *gate], log=lambda *_: None)
    return run_dir
