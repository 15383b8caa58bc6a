"""Image file → uint8 RGB array → normalised float32: the one decode both training and the
on-device runtime use, so a model sees the same pixels in both places.

Imports numpy and PIL only (no TensorFlow, no scikit-learn).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from edgexfer.errors import ConfigError, DataError

# Names accepted by ``Preprocessing.resize``; "area" is PIL's box filter (pixel-area average).
RESIZE_METHODS = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
COLORS = ("RGB", "BGR")
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
# Errors PIL raises for missing, unreadable, truncated or non-image files.
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def check_resize(resize: str) -> Image.Resampling:
    try:
        return RESIZE_METHODS[resize]
    except KeyError:
        raise ConfigError(f"resize {resize!r} is not supported; use one of {', '.join(RESIZE_METHODS)}") from None


def check_color(color: str) -> str:
    if color not in COLORS:
        raise ConfigError(f"color {color!r} is not supported; use one of {', '.join(COLORS)}")
    return color


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    if int(height) < 1 or int(width) < 1:
        raise ConfigError(f"image size {size!r} must be positive")
    return int(height), int(width)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB.

    Transparent pixels are composited on **black** (alpha-premultiplied), which keeps the
    black background of digit/Fashion-MNIST-style images and matches what a decoder that
    multiplies by alpha produces. 16-bit grayscale is scaled to 8 bits (not clipped at 255).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if mode in _SIXTEEN_BIT or values.max(initial=0) > 255:
            values = values / 257.0  # 0..65535 -> 0..255
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = (
        mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (mode == "P" and "transparency" in image.info)
        or (mode == "L" and "transparency" in image.info)
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    path: str | os.PathLike[str],
    size: int | tuple[int, int],
    resize: str = "bilinear",
    color: str = "RGB",
) -> np.ndarray:
    """Read an image file as a ``uint8`` array of shape ``(size, size, 3)``.

    Any mode (L, LA, P, RGBA, I;16, CMYK, 1 …) becomes RGB (see :func:`to_rgb`); the EXIF
    orientation is applied; the image is resized to ``size×size`` without keeping the
    aspect ratio (``size`` may also be ``(height, width)``), with PIL's ``resize`` filter
    (``area`` is the box filter; PIL antialiases when it shrinks). ``color="BGR"`` flips
    the channels. An unreadable or corrupt file raises :class:`DataError` naming it.
    """
    height, width = _size_hw(size)
    method = check_resize(resize)
    check_color(color)
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (width, height))  # decode big JPEGs at a reduced DCT scale
            image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
            if image.size != (width, height):
                image = image.resize((width, height), method)
            array = np.asarray(image, dtype=np.uint8)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image {str(path)!r}: {_reason(exc)}; fix or remove the file") from None
    if color == "BGR":
        array = array[..., ::-1]
    return np.ascontiguousarray(array)


def preprocess_array(x: np.ndarray, preprocessing) -> np.ndarray:
    """``(x - mean) / std`` per channel in float32, for channels-last arrays (HWC or NHWC).

    ``preprocessing`` is an :class:`edgexfer.artifact.Preprocessing`. The tf.data pipeline
    computes exactly the same float32 operations.
    """
    mean, std = normalisation_constants(preprocessing)
    return (np.asarray(x).astype(np.float32) - mean) / std


def normalisation_constants(preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` as float32 vectors, validated (std must be positive)."""
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    if mean.shape != std.shape or mean.ndim != 1:
        raise ConfigError(
            f"preprocessing mean {preprocessing.mean!r} and std {preprocessing.std!r} "
            "must be per-channel lists of the same length"
        )
    if np.any(std <= 0):
        raise ConfigError(f"preprocessing std {preprocessing.std!r} must be positive")
    return mean, std


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image PIL can read"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


__all__ = ["load_image", "preprocess_array", "to_rgb", "RESIZE_METHODS", "COLORS"]
