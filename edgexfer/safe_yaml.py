"""YAML from outside (pipeline files, ``--config``, ``--set`` values), read safely.

``yaml.safe_load`` already refuses Python tags, but not the two alias attacks: a recursive
anchor (``a: &a [*a]``) builds a self-containing structure that later code recurses into
forever, and a "billion laughs" file (aliases of aliases) expands a few hundred bytes into
gigabytes. PyYAML has no limit for either, so the document is composed first (aliases stay
shared nodes, so this is cheap), its expanded size is counted with a cap, and only then
constructed. Every failure is one ``ConfigError`` line naming where it came from.
"""

from __future__ import annotations

from typing import Any

import yaml

from edgexfer.errors import ConfigError

# Nodes after expanding aliases: the largest real pipeline file has a few hundred.
MAX_EXPANDED_NODES = 100_000


MAX_FILE_BYTES = 1 << 20  # a config or pipeline file is a few kB


def read_text(path, label: str) -> str:
    """A small UTF-8 text file; ``ConfigError`` naming it when it is not one."""
    from pathlib import Path

    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{label} {str(path)!r} is larger than {MAX_FILE_BYTES >> 20} MiB; "
                "a pipeline or config file is a small YAML/TOML file"
            )
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{label} {str(path)!r} is not UTF-8 text; save it as UTF-8 YAML/TOML") from None
    except OSError as exc:
        raise ConfigError(f"{label} {str(path)!r} cannot be read ({exc.strerror or exc})") from None


def load(text: str, where: str) -> Any:
    """The YAML document in ``text`` as plain Python data; ``ConfigError`` saying what is wrong."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        check_node(node, where)
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({describe(exc)})") from None


def check_node(node: yaml.Node, where: str) -> None:
    """``ConfigError`` for a recursive alias or a document expanding past ``MAX_EXPANDED_NODES``."""
    count = 0
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    open_path: set[int] = set()
    while stack:
        current, leaving = stack.pop()
        if leaving:
            open_path.discard(id(current))
            continue
        if id(current) in open_path:
            raise ConfigError(
                f"{where}: a YAML anchor contains an alias of itself (a recursive structure); remove the self-reference"
            )
        count += 1
        if count > MAX_EXPANDED_NODES:
            raise ConfigError(
                f"{where}: the YAML expands to more than {MAX_EXPANDED_NODES:,} values through "
                "its aliases (&anchor/*alias); write the values out or use fewer aliases"
            )
        if isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        elif isinstance(current, yaml.MappingNode):
            children = [child for pair in current.value for child in pair]
        else:
            continue
        open_path.add(id(current))
        stack.append((current, True))
        stack.extend((child, False) for child in reversed(children))


def describe(exc: yaml.YAMLError) -> str:
    """One line: the problem and its line number where PyYAML gives one."""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    if "constructor for the tag" in str(problem):
        problem = f"{problem} (only plain YAML values are read; tags such as !!python/… are refused)"
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)
