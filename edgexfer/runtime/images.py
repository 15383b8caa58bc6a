"""Image files → uint8 arrays at a model's input size, and pixels → model input.

Thin wrappers over ``edgexfer.data.preprocess`` — the one decode (mode → RGB, EXIF
orientation, resize filter, BGR) and normalisation that training uses too, so the runtime
feeds a model the same pixels it was trained on. Imports no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgexfer.artifact import Preprocessing
from edgexfer.data.folder import IMAGE_EXTENSIONS
from edgexfer.data.preprocess import load_image as _decode
from edgexfer.data.preprocess import preprocess_array
from edgexfer.errors import DataError


def load_image(path: str | os.PathLike[str], preprocessing: Preprocessing) -> np.ndarray:
    """One image file as uint8 ``H×W×3`` at ``preprocessing.input_size``; ``DataError`` naming
    the file when it is missing, unreadable or corrupt."""
    return _decode(path, preprocessing.input_size, preprocessing.resize, preprocessing.color)


def load_images(paths: Iterable[str | os.PathLike[str]], preprocessing: Preprocessing) -> np.ndarray:
    """Image files as one uint8 ``N×H×W×3`` array (see ``load_image``)."""
    arrays = [load_image(p, preprocessing) for p in paths]
    if not arrays:
        raise DataError("no image files given")
    return np.stack(arrays)


def normalize(images_uint8: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Pixels → model input: ``(x - mean) / std`` per channel, float32."""
    return preprocess_array(images_uint8, preprocessing)


def list_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files anywhere under ``folder`` (any layout), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} does not exist or is not a directory")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"image folder {str(folder)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files
