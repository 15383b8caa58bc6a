"""Matching another domain's class folders to a model's classes, and reading unlabelled folders.

A class map renames classes: ``{"folder name": "model class name"}``. It is for classes that
are only named differently (``seven`` vs ``7``), never for merging or dropping classes, so
every mapped name must be distinct and, after mapping, the folder's classes must be exactly
the model's. On the command line it is ``--class-map "seven=7,eight=8"`` or a file (JSON
mapping, or ``folder_name=model_name`` lines).

This module imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgexfer.errors import ConfigError, DataError

_NAMED = 6  # names listed in messages before "…"


def parse_class_map(spec: str | os.PathLike[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``"a=x,b=y"``, a mapping, or the path of a file (``.json`` mapping or ``a=x`` lines) →
    ``{"a": "x", "b": "y"}`` (folder name → model class name). ``None``/``""`` → ``{}``."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return {}
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
        where = "class map"
    else:
        text, where = str(spec), "--class-map"
        path = Path(text)
        if "=" not in text and path.suffix and not path.is_file():
            raise ConfigError(f"--class-map {text!r}: no such file; pass a file or 'folder_name=model_class,...'")
        if "=" not in text and path.is_file():
            where = f"--class-map file {text!r}"
            body = path.read_text()
            if path.suffix == ".json":
                try:
                    data = json.loads(body)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{where} is not valid JSON ({exc})") from None
                if not isinstance(data, dict):
                    raise ConfigError(f"{where} must hold a JSON object of folder_name: model_class")
                return parse_class_map({str(k): str(v) for k, v in data.items()})
            items = [line.strip() for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        else:
            items = [item.strip() for item in text.split(",") if item.strip()]
        pairs = []
        for item in items:
            if item.count("=") != 1:
                raise ConfigError(
                    f"{where}: entry {item!r} is not 'folder_name=model_class' (e.g. --class-map 'seven=7,eight=8')"
                )
            old, new = (part.strip() for part in item.split("="))
            pairs.append((old, new))
    mapping: dict[str, str] = {}
    for old, new in pairs:
        if not old or not new:
            raise ConfigError(f"{where}: empty class name in {old!r}={new!r}; write 'folder_name=model_class'")
        if old in mapping and mapping[old] != new:
            raise ConfigError(f"{where}: {old!r} is mapped twice ({mapping[old]!r} and {new!r})")
        mapping[old] = new
    targets = list(mapping.values())
    doubled = sorted({name for name in targets if targets.count(name) > 1})
    if doubled:
        sources = [old for old, new in mapping.items() if new == doubled[0]]
        raise ConfigError(
            f"{where}: {', '.join(map(repr, sources))} are all renamed to {doubled[0]!r}; a class "
            "map only renames classes, it cannot merge them"
        )
    return mapping


def format_class_map(mapping: Mapping[str, str]) -> str:
    return ",".join(f"{old}={new}" for old, new in mapping.items())


def _names(names: Sequence[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_NAMED])
    return shown + (f" … ({len(names)} in all)" if len(names) > _NAMED else "")


def match_classes(
    folder_classes: Sequence[str],
    model_classes: Sequence[str],
    class_map: Mapping[str, str],
    where: str,
    *,
    strict_keys: bool = True,
    source_domain: bool = False,
) -> dict[str, int]:
    """Folder class name → the model's label index, after renaming with ``class_map``.

    A ``DataError`` that names the missing and extra classes (and suggests ``--class-map``
    when the counts agree) when the renamed folder classes are not exactly the model's.
    ``strict_keys``: a map entry naming no folder class is an error (a typo).
    """
    folder_classes = list(folder_classes)
    model_classes = list(model_classes)
    if strict_keys:
        unknown = [old for old in class_map if old not in folder_classes]
        if unknown:
            raise DataError(
                f"--class-map renames {_names(unknown)}, which {'is' if len(unknown) == 1 else 'are'} "
                f"not a class folder of {where} (its classes: {_names(folder_classes)})"
            )
    renamed = [class_map.get(name, name) for name in folder_classes]
    clashes = sorted({name for name in renamed if renamed.count(name) > 1})
    if clashes:
        raise DataError(
            f"after --class-map, {where} has two class folders named {clashes[0]!r}; a class map only renames classes"
        )
    missing = [name for name in model_classes if name not in renamed]
    extra = [old for old, new in zip(folder_classes, renamed) if new not in model_classes]
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"not in the model: {_names(extra)}"] if extra else []
        )
        if source_domain:
            hint = (
                "; the source folder must have the model's classes (it is the labelled data the model "
                "was trained on); --class-map renames the target's classes"
            )
        elif missing and len(missing) == len(extra):
            template = ",".join(f"{name}=?" for name in extra)
            hint = (
                f"; if these classes are only named differently, pass --class-map '{template}' "
                f"(folder_name=model_class; each ? one of {_names(missing)})"
            )
        else:
            hint = "; adaptation and evaluation need the same classes in both domains"
        raise DataError(f"the classes of {where} do not match the model's ({'; '.join(parts)}){hint}")
    return {old: model_classes.index(new) for old, new in zip(folder_classes, renamed)}


def scan_labelled(
    root: str | os.PathLike[str],
    model_classes: Sequence[str],
    class_map: Mapping[str, str] | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    test_fraction: float = 0.0,
    strict: bool = False,
    strict_keys: bool = True,
    source_domain: bool = False,
    role: str = "folder",
):
    """An ``ImageDataset`` of ``root`` whose labels are the model's indices (after ``class_map``)."""
    from edgexfer.data import Sample, scan_image_folder

    class_map = dict(class_map or {})
    dataset = scan_image_folder(root, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strict=strict)
    where = f"{'source' if source_domain else role} {str(root)!r}"
    index = match_classes(
        dataset.class_names, model_classes, class_map, where, strict_keys=strict_keys, source_domain=source_domain
    )
    relabel = {i: index[name] for i, name in enumerate(dataset.class_names)}
    dataset.folder_class_names = list(dataset.class_names)  # as on disk, before renaming
    dataset.splits = {
        split: [Sample(s.path, relabel[s.label]) for s in samples] for split, samples in dataset.splits.items()
    }
    dataset.class_names = list(model_classes)
    return dataset


@dataclass
class UnlabelledImages:
    """The images of a domain, whatever labels its folder has (they are not read)."""

    root: Path
    paths: list[Path]
    had_labels: bool  # the folder has class sub-folders (their names were checked, never used)
    class_folders: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def fingerprint(self) -> dict:
        import hashlib

        lines = sorted(p.relative_to(self.root).as_posix() for p in self.paths)
        return {
            "files": len(lines),
            "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            "labels_used": False,
        }


def scan_unlabelled(
    root: str | os.PathLike[str],
    model_classes: Sequence[str] | None = None,
    class_map: Mapping[str, str] | None = None,
    *,
    strict: bool = False,
) -> UnlabelledImages:
    """The images under ``root``: either an image folder with class sub-folders (their names
    must match ``model_classes`` after ``class_map``; the labels are not used) or a folder of
    images with no classes (every image under it)."""
    from edgexfer.data import IMAGE_EXTENSIONS, scan_image_folder

    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"target folder {str(root)!r} does not exist or is not a folder; pass a folder of "
            "images (class sub-folders are allowed and ignored)"
        )
    entries = [e for e in os.scandir(root) if not e.name.startswith(".") and e.name != "__MACOSX"]
    loose_images = [e for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    subdirs = [e for e in entries if e.is_dir()]
    if subdirs and not loose_images:
        if model_classes is not None:
            dataset = scan_labelled(root, model_classes, class_map, strict=strict, role="target")  # checks names
        else:
            dataset = scan_image_folder(root, val_fraction=0.0, test_fraction=0.0, strict=strict)
        folders = sorted({s.path.relative_to(root).parts[-2] for s in dataset.all_samples()})
        return UnlabelledImages(root, [s.path for s in dataset.all_samples()], True, folders, dataset.skipped)
    paths, skipped = [], []
    for directory, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(names):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(Path(directory) / name)
    if not paths:
        raise DataError(f"target folder {str(root)!r} has no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
    good = []
    for path in paths:
        reason = _unreadable(path)
        if reason is None:
            good.append(path)
        else:
            skipped.append((path, reason))
    if skipped:
        listed = "; ".join(f"{p.name} ({why})" for p, why in skipped[:5])
        if strict or not good:
            raise DataError(f"{len(skipped)} of {len(paths)} images in {str(root)!r} cannot be read: {listed}")
        import logging

        logging.getLogger(__name__).warning("skipped %d unreadable images in %s: %s", len(skipped), root, listed)
    return UnlabelledImages(root, good, False, [], skipped)


def check_map_used(class_map: Mapping[str, str], folder_classes: Iterable[str]) -> None:
    """A ``ConfigError`` for entries of ``class_map`` that name no class folder at all (a typo)."""
    seen = set(folder_classes)
    unknown = [old for old in class_map if old not in seen]
    if unknown:
        raise ConfigError(
            f"--class-map renames {_names(unknown)}, which is a class folder of none of the "
            f"folders given (their classes: {_names(sorted(seen))})"
        )


def _unreadable(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for corrupt files
        return str(exc) or type(exc).__name__
