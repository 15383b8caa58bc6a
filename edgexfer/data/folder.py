"""Scan an image folder into labelled train/val/test samples.

Two layouts are understood::

    ROOT/<class>/*                     val and test are carved from the images
    ROOT/{train,val,test}/<class>/*    any subset that includes train; missing splits are
                                       carved from train

Label indices follow the sorted class folder names (or ``class_names`` when given).
This module imports no TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from edgexfer.data.preprocess import load_image  # noqa: F401  (re-exported: part of this module's API)
from edgexfer.errors import ConfigError, DataError

log = logging.getLogger(__name__)  # "edgexfer.data.folder", a child of the "edgexfer" logger

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")
_IGNORED_DIRS = ("__MACOSX",)  # resource forks that zip tools on macOS add
_NAMED_IN_MESSAGES = 5


class Sample(NamedTuple):
    """One labelled image file."""

    path: Path
    label: int


@dataclass
class ImageDataset:
    """The labelled files of an image folder, split into train, val and test."""

    root: Path
    class_names: list[str]
    splits: dict[str, list[Sample]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: int = 0  # files not used: no image extension, or not inside a class folder
    layout: str = "flat"  # "flat" (ROOT/<class>) or "splits" (ROOT/<split>/<class>)
    carved: tuple[str, ...] = ()  # the splits that were carved from train

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits:
            raise ConfigError(f"split {name!r} does not exist; use one of {', '.join(self.splits)}")
        return self.splits[name]

    def all_samples(self) -> list[Sample]:
        """Every sample of every split, sorted by path."""
        return sorted((sample for samples in self.splits.values() for sample in samples), key=_by_path)

    def counts(self, by_class: bool = False) -> dict:
        """Images per split, or per split and class (``by_class=True``)."""
        if not by_class:
            return {name: len(samples) for name, samples in self.splits.items()}
        result = {}
        for name, samples in self.splits.items():
            per_class = dict.fromkeys(self.class_names, 0)
            for sample in samples:
                per_class[self.class_names[sample.label]] += 1
            result[name] = per_class
        return result

    def fingerprint(self) -> dict:
        """File count and sha256 of the sorted ``relative/path<TAB>label`` lines of all splits.

        Independent of how val/test were carved, so the same folder always has the same
        fingerprint; a renamed, added, removed or relabelled file changes it.
        """
        lines = sorted(
            f"{sample.path.relative_to(self.root).as_posix()}\t{sample.label}"
            for samples in self.splits.values()
            for sample in samples
        )
        digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
        return {"files": len(lines), "classes": self.num_classes, "sha256": digest}


def scan_image_folder(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    verify: bool = True,
    class_names: Sequence[str] | None = None,
) -> ImageDataset:
    """Scan ``root`` into an :class:`ImageDataset`.

    Missing val/test splits are carved from train, stratified by class and seeded:
    ``val_fraction``/``test_fraction`` are fractions of all images in the flat layout, and
    of train when the split layout lacks val or test.
    ``verify`` opens every image with PIL (header and PNG checksums; JPEGs are decoded at
    1/8 scale to catch truncation); files that fail are skipped with a logged warning, or
    raise :class:`DataError` when ``strict``. ``class_names`` (e.g. a model's labels) must
    match the class folders exactly and fixes the label order.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 (got {val_fraction} + {test_fraction}); "
            "leave some images for training"
        )
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"image folder {str(root)!r} does not exist; pass a folder with one sub-folder of images per class"
        )
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder; pass a folder with one sub-folder of images per class")

    layout, tops = _detect_layout(root)
    split_dirs = {name: root / name for name in SPLITS if name in tops} if layout == "splits" else {"train": root}
    per_split, ignored = {}, 0
    for split, folder in split_dirs.items():
        per_split[split], unused = _list_classes(folder)
        ignored += unused
    found = _check_classes(root, layout, per_split, class_names)

    files: dict[str, dict[str, list[Path]]] = {}
    links = _Links(root)
    for split, classes in per_split.items():
        files[split] = {}
        for name in found:
            images, unused = _list_images(classes[name], links)
            ignored += unused
            if not images:
                raise DataError(
                    f"class folder {_where(layout, split, name)!r} has no images "
                    f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); add images to it or remove the folder"
                )
            files[split][name] = images
    if links.seen:
        links.count_each_file_once(files)
        links.warn()
    if ignored:
        log.info("ignored %d file(s) in %s that are not images in a class folder", ignored, root)
    skipped = _drop_unreadable(root, layout, files, strict) if verify else []

    label = {name: index for index, name in enumerate(found)}
    splits = {
        split: sorted((Sample(path, label[name]) for name, paths in classes.items() for path in paths), key=_by_path)
        for split, classes in files.items()
    }
    carved = tuple(name for name in ("val", "test") if name not in splits)
    splits = _carve_missing(splits, val_fraction, test_fraction, seed)
    return ImageDataset(
        root=root,
        class_names=list(found),
        splits=splits,
        skipped=skipped,
        ignored=ignored,
        layout=layout,
        carved=carved,
    )


def _where(layout: str, split: str, name: str) -> str:
    return name if layout == "flat" else f"{split}/{name}"


def _drop_unreadable(
    root: Path, layout: str, files: dict[str, dict[str, list[Path]]], strict: bool
) -> list[tuple[Path, str]]:
    """Verify every file; drop the unreadable ones from ``files`` (in place) and return them
    with their reasons. Logs a warning naming the first few, or raises when ``strict``."""
    every = [path for classes in files.values() for paths in classes.values() for path in paths]
    bad = dict(_verify_all(every))
    if not bad:
        return []
    skipped = sorted(bad.items())
    listed = "; ".join(f"{p.relative_to(root).as_posix()} ({why})" for p, why in skipped[:_NAMED_IN_MESSAGES])
    more = f" and {len(skipped) - _NAMED_IN_MESSAGES} more" if len(skipped) > _NAMED_IN_MESSAGES else ""
    if strict:
        raise DataError(
            f"{len(skipped)} of {len(every)} images in {str(root)!r} cannot be read: {listed}{more}; fix or remove them"
        )
    log.warning(
        "skipped %d of %d images in %s that cannot be read: %s%s; fix or remove them (strict mode makes this an error)",
        len(skipped),
        len(every),
        root,
        listed,
        more,
    )
    for split, classes in files.items():
        for name, paths in classes.items():
            kept = [p for p in paths if p not in bad]
            if not kept:
                raise DataError(
                    f"every image of class {_where(layout, split, name)!r} is unreadable "
                    f"({len(paths)} files, e.g. {paths[0].name}: {bad[paths[0]]}); fix or replace them"
                )
            classes[name] = kept
    return skipped


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name not in _IGNORED_DIRS


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return [entry for entry in entries if _visible(entry)]
    except PermissionError:
        raise DataError(
            f"cannot list folder {str(folder)!r}: permission denied; make it readable (chmod) or run as its owner"
        ) from None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _detect_layout(root: Path) -> tuple[str, set[str]]:
    entries = _scandir(root)
    dirs = {entry.name for entry in entries if entry.is_dir()}
    if not dirs:
        has_images = any(_is_image(entry.name) for entry in entries if entry.is_file())
        hint = (
            "it has images but no class folders"
            if has_images
            else "it is empty"
            if not entries
            else "it has no class folders"
        )
        raise DataError(
            f"image folder {str(root)!r}: {hint}; put each class's images in "
            f"{root.name}/<class>/ (or {root.name}/train/<class>/)"
        )
    split_names = dirs & set(SPLITS)
    if not split_names:
        return "flat", dirs
    if dirs == split_names and "train" in dirs:
        return "splits", dirs
    if dirs == split_names:
        raise DataError(
            f"image folder {str(root)!r} has {', '.join(sorted(dirs))}/ but no train/; "
            "add train/<class>/ folders (val and test are optional)"
        )
    raise DataError(
        f"image folder {str(root)!r} mixes split folders ({', '.join(sorted(split_names))}) with other "
        f"folders ({', '.join(sorted(dirs - split_names)[:_NAMED_IN_MESSAGES])}); use either "
        "ROOT/<class>/ or ROOT/{train,val,test}/<class>/"
    )


def _list_classes(folder: Path) -> tuple[dict[str, Path], int]:
    """Class sub-folders of ``folder``, and a count of the files beside them (not used)."""
    entries = _scandir(folder)
    classes = {entry.name: Path(entry.path) for entry in entries if entry.is_dir()}
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            raise DataError(
                f"class folder {shown!r} in {str(folder)!r} has a name that is not valid UTF-8; "
                "class names become labels in the model, so rename the folder (UTF-8)"
            ) from None
    loose = len(entries) - len(classes)
    if loose and not classes and any(_is_image(entry.name) for entry in entries):
        raise DataError(
            f"{str(folder)!r} has images but no class folders; put each class's images in {folder.name}/<class>/"
        )
    return classes, loose


class _Links:
    """What symbolic links a scan met: folders that loop back, folders outside the root (not
    followed), and files reached more than once (each is counted once)."""

    def __init__(self, root: Path):
        self.root = root
        self.root_real = os.path.realpath(root)
        self.seen = False
        self.loops: list[str] = []
        self.outside: list[str] = []
        self.duplicates: list[str] = []

    def inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.root_real or real.startswith(self.root_real.rstrip(os.sep) + os.sep)

    def count_each_file_once(self, files: dict[str, dict[str, list[Path]]]) -> None:
        """Keep one occurrence of each real file (where it really is if that is in the folder,
        else the first in sorted order); drop the others from ``files`` in place."""
        occurrences: dict[str, list[tuple[str, str, Path]]] = {}
        for split, classes in files.items():
            for name, paths in classes.items():
                for path in paths:
                    occurrences.setdefault(os.path.realpath(path), []).append((split, name, path))
        drop: set[tuple[str, str, Path]] = set()
        for real, places in occurrences.items():
            if len(places) < 2:
                continue
            keep = next((p for p in places if os.path.abspath(p[2]) == real), min(places, key=lambda p: str(p[2])))
            drop.update(p for p in places if p is not keep)
            self.duplicates += [str(p[2]) for p in places if p is not keep]
        if drop:
            for split, classes in files.items():
                for name in classes:
                    classes[name] = [p for p in classes[name] if (split, name, p) not in drop]
                    if not classes[name]:
                        raise DataError(
                            f"class folder {_where('flat', split, name)!r} only holds links to images of "
                            "other classes; give it images of its own"
                        )

    def warn(self) -> None:
        parts = []
        if self.loops:
            parts.append(f"{len(self.loops)} linked folder(s) loop back (not followed again): {self.loops[0]}")
        if self.outside:
            parts.append(
                f"{len(self.outside)} linked folder(s) lead outside {self.root} (not followed): {self.outside[0]}"
            )
        if self.duplicates:
            parts.append(
                f"{len(self.duplicates)} image(s) reached twice through links (counted once): {self.duplicates[0]}"
            )
        if parts:
            log.warning("symbolic links in %s: %s", self.root, "; ".join(parts))


def _list_images(folder: Path, links: _Links | None = None) -> tuple[list[Path], int]:
    """Image files under a class folder (recursively, hidden ones left out) and a count of others.

    Linked folders are followed once each (a link back to a folder already walked is a loop),
    and only while they stay inside the scanned root; ``links`` records what was met."""
    links = links or _Links(folder)
    names_found, other = [], 0
    visited: set[tuple[int, int]] = set()
    stack = [str(folder)]
    while stack:
        directory = stack.pop()
        try:
            status = os.stat(directory)
        except OSError:
            continue
        key = (status.st_dev, status.st_ino)
        if key in visited:
            links.loops.append(directory)
            continue
        visited.add(key)
        try:
            entries = _scandir(Path(directory))
        except DataError:
            if directory == str(folder):
                raise
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()
                is_link = entry.is_symlink()
            except OSError:
                continue
            if is_link:
                links.seen = True
            if is_dir:
                if entry.name in _IGNORED_DIRS:
                    continue
                if is_link and not links.inside(entry.path):
                    links.outside.append(entry.path)
                    continue
                stack.append(entry.path)
            elif _is_image(entry.name):
                names_found.append(entry.path)
            else:
                other += 1
    return [Path(p) for p in sorted(names_found)], other


def _check_classes(
    root: Path, layout: str, per_split: dict[str, dict[str, Path]], class_names: Sequence[str] | None
) -> list[str]:
    train = set(per_split["train"])
    for split, classes in per_split.items():
        if set(classes) != train:
            missing, extra = sorted(train - set(classes)), sorted(set(classes) - train)
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"extra {', '.join(extra)}"] if extra else []
            )
            raise DataError(
                f"split {split!r} of {str(root)!r} has other classes than train "
                f"({'; '.join(parts)}); every split needs the same class folders"
            )
    if class_names is not None:
        wanted = list(class_names)
        missing, extra = sorted(set(wanted) - train), sorted(train - set(wanted))
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"extra {', '.join(extra)}"] if extra else []
            )
            raise DataError(
                f"the class folders of {str(root)!r} do not match the model's classes "
                f"({'; '.join(parts)}); use a folder with exactly these classes: "
                f"{', '.join(wanted)}"
            )
        return wanted
    if len(train) < 2:
        where = "" if layout == "flat" else "train/"
        raise DataError(
            f"image folder {str(root)!r} has only one class ({', '.join(train)}); a classifier "
            f"needs at least 2: add a folder {where}<class>/ for each class"
        )
    return sorted(train)


def _verify_one(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it can."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()  # JPEG has no verify(); a reduced-scale decode finds truncation
            else:
                image.verify()
        return None
    except PermissionError:
        return "permission denied"
    except Image.UnidentifiedImageError:
        return "not an image PIL can read"
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for corrupt files
        return f"corrupt: {exc}" if str(exc) else f"corrupt: {type(exc).__name__}"


def _verify_all(paths: list[Path]) -> list[tuple[Path, str]]:
    # Sequential on purpose: verify() is mostly Python under the GIL, and a thread pool made
    # it 3x slower (70k cached 28x28 PNGs: 1.5 s sequential, 4.8 s with 8 threads).
    reasons = map(_verify_one, paths)
    return [(path, why) for path, why in zip(paths, reasons) if why is not None]


def _by_path(sample: Sample) -> str:
    return str(sample.path)  # str is cached on the Path; comparing Paths is ~10x slower


def _carve_missing(
    splits: dict[str, list[Sample]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Carve the missing val/test splits from train. For the flat layout both fractions
    are of all images (val is carved from what is left after test)."""
    train = splits["train"]
    missing = [name for name in ("test", "val") if name not in splits]
    if "test" in missing:
        train, splits["test"] = _stratified_split(train, test_fraction, seed)
    if "val" in missing:
        fraction = val_fraction / (1.0 - test_fraction) if "test" in missing else val_fraction
        train, splits["val"] = _stratified_split(train, fraction, seed)
    splits["train"] = train
    return {name: sorted(splits[name], key=_by_path) for name in SPLITS}


def _stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off ``fraction`` of ``samples``, stratified by label and seeded.

    Classes with fewer than 2 images stay whole in the kept part. When a stratified split
    is impossible (fewer carved or kept images than classes), one image each of randomly
    chosen classes is carved, so every class keeps at least one image.
    """
    counts = Counter(sample.label for sample in samples)
    rare = [s for s in samples if counts[s.label] < 2]
    pool = [s for s in samples if counts[s.label] >= 2]
    n_carve = min(int(round(fraction * len(samples))), len(pool) - 1)
    if n_carve <= 0:
        return list(samples), []
    from sklearn.model_selection import train_test_split  # after the early return: none needed to carve nothing

    try:
        kept, carved = train_test_split(pool, test_size=n_carve, stratify=[s.label for s in pool], random_state=seed)
        return list(kept) + rare, list(carved)
    except ValueError:
        rng = np.random.default_rng(seed)
        by_class = sorted({s.label for s in pool})
        chosen = rng.choice(by_class, size=min(n_carve, len(by_class)), replace=False)
        carved = []
        for label in sorted(chosen):
            members = [s for s in pool if s.label == label]
            carved.append(members[rng.integers(len(members))])
        taken = set(carved)
        return [s for s in samples if s not in taken], carved
