"""The pipeline recipes shipped inside the package: ``edgexfer run NAME`` and ``edgexfer demo``.

The repository keeps them in ``models/`` at its top; ``edgexfer/recipes`` is a symlink to it,
and the build copies the files into the wheel as package data (``edgexfer/recipes/*.yaml``),
so the same lookup works in a checkout, an editable install and an installed wheel, from
any working directory. Imports no TensorFlow.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from edgexfer.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
SUFFIX = ".yaml"


def list_recipes() -> dict[str, Path]:
    """Shipped recipe name → its file, sorted by name (``digits`` → ``…/recipes/digits.yaml``)."""
    if not RECIPES_DIR.is_dir():
        return {}
    paths = [path for path in RECIPES_DIR.glob(f"*{SUFFIX}") if path.is_file()]
    return {path.stem: path for path in sorted(paths, key=lambda path: path.stem)}


def recipe_description(path: Path) -> str:
    """The recipe's ``description`` (else its first comment line), for the listing."""
    import yaml

    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        return data["description"]
    comment = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
    return comment


def recipe_path(name: str) -> Path:
    """The file of the shipped recipe ``name``; ``ConfigError`` listing the shipped ones if unknown."""
    recipes = list_recipes()
    if name in recipes:
        return recipes[name]
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if stem in recipes:
        return recipes[stem]
    shipped = ", ".join(recipes) or f"none (the package's recipes folder {RECIPES_DIR} is missing; reinstall edgexfer)"
    close = difflib.get_close_matches(stem, list(recipes), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"{name!r} is neither a pipeline file nor a shipped recipe{hint}; shipped recipes: "
        f"{shipped} (edgexfer run --list)"
    )


def resolve_pipeline(pipeline: str | os.PathLike[str]) -> Path:
    """A pipeline argument as given to ``edgexfer run``: an existing file, else a shipped recipe name."""
    path = Path(pipeline)
    if path.is_file():
        return path
    if path.parent != Path(".") or path.exists():
        if path.is_dir():
            raise ConfigError(
                f"{str(path)!r} is a folder; pass a pipeline YAML file or a shipped recipe name "
                f"({', '.join(list_recipes())})"
            )
        raise ConfigError(
            f"pipeline file {str(path)!r} does not exist; pass a YAML file or a shipped recipe "
            f"name ({', '.join(list_recipes())}; edgexfer run --list)"
        )
    return recipe_path(str(pipeline))
