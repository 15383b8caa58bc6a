"""The export stage as the CLI runs it: pick the quantization mode and the int8 calibration
set from the artifact, then ``export_artifact``.

int8 post-training quantization is calibrated on target-domain images, in this order:

1. ``calibration_data`` (``--calibration-data DIR``), when given;
2. the set the quantize stage stored in the artifact (``manifest.quantization`` mode
   ``ptq``/``qat`` with ``calibration_file``, uint8 pixels in ``calibration.npy``);
3. the training split of the artifact's own dataset (``manifest.dataset.path``).

A folder of class sub-folders must hold exactly the model's classes (calibrating on another
task's images gives ranges for the wrong inputs); a folder of loose images is taken as
unlabelled target-domain images. Imports no TensorFlow until the conversion runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgexfer.artifact import Artifact, Manifest
from edgexfer.data.subset import stratified_subset
from edgexfer.errors import ArtifactError, ConfigError, DataError
from edgexfer.export.config import ExportConfig
from edgexfer.export.convert import (
    DEFAULT_MAX_CALIBRATION_IMAGES,
    KERAS_SUFFIXES,
    export_artifact,
)
from edgexfer.export.formats import FORMATS
from edgexfer.provenance import recorded

DEFAULT_CALIBRATION_FILE = "calibration.npy"


@recorded  # the call is stored in the artifact's manifest (edgexfer reproduce)
def export_stage(
    artifact: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str,
    quant: str | None = None,
    *,
    calibration_data: str | os.PathLike[str] | None = None,
    calibration_images: int = DEFAULT_MAX_CALIBRATION_IMAGES,
    opset: int = 15,
    log: Callable[[str], None] | None = None,
    io_type: str | None = None,
    gray_input: bool = False,
) -> Artifact:
    """Export the Keras artifact ``artifact`` to ``fmt`` (a ``FORMATS`` row) at ``out``.

    ``quant`` defaults to what the artifact's quantize stage chose (``ptq`` → its type,
    ``qat``/``pqat`` → int8), else ``none``. For int8, calibration images come from
    ``calibration_data``, the artifact's stored calibration set or its dataset (see the
    module docstring); at most ``calibration_images`` are used. ``io_type``: tflite's
    input/output type (uint8 | int8 | float32; default uint8 for int8, else float32).
    ``gray_input``: fold the first convolution's colour channels (``export.gray``).
    """
    log = log or (lambda _message: None)
    ExportConfig.build(
        format=fmt,
        quant=quant,
        calibration_data=calibration_data,
        calibration_images=calibration_images,
        opset=opset,
        io_type=io_type,
        gray_input=gray_input,
    )
    source = Artifact(artifact)
    model_path = source.model_path  # "has no model file" before anything is loaded
    if fmt == "tflite-micro" and model_path.suffix == ".tflite":  # the same bytes as C; no TensorFlow
        if gray_input:
            raise ConfigError("--gray-input folds a Keras model's weights; this artifact is already a .tflite file")
        from edgexfer.export.tflite_micro import export_tflite_artifact

        return export_tflite_artifact(source, out)
    if model_path.suffix not in KERAS_SUFFIXES:
        raise ArtifactError(
            f"artifact {str(source.path)!r} holds {model_path.name}, not a Keras model "
            f"({', '.join(KERAS_SUFFIXES)}); export from a training or compression stage's artifact"
        )
    manifest = source.manifest
    quant = quant or ("int8" if fmt == "tflite-micro" else default_quant(manifest, fmt))

    calibration, description = None, None
    if quant == "int8":
        calibration, description = resolve_calibration(source, calibration_data, calibration_images)
        if calibration is not None:
            log(f"int8 calibration: {len(calibration)} images from {description}")
        else:
            log("int8 from a quantization-aware model: ranges come from its fake-quant layers")
    elif calibration_data is not None:
        log(f"--calibration-data is only used by --quant int8; ignored for --quant {quant}")
    if gray_input:
        log(
            "--gray-input: the first convolution's colour channels are averaged (exact on grayscale images; "
            "a colour image is read as its channel mean)"
        )
    return export_artifact(
        source.path,
        out,
        fmt,
        quant,
        calibration_images=calibration,
        opset=opset,
        max_calibration_images=calibration_images,
        calibration_source=description,
        io_type=io_type,
        gray_input=gray_input,
    )


def default_quant(manifest: Manifest, fmt: str) -> str:
    """The quantization mode the artifact asks for: its PTQ type, int8 for QAT, else none."""
    quantization = manifest.quantization or {}
    mode = str(quantization.get("mode", "")).lower()
    if mode == "ptq":
        wanted = str(quantization.get("type") or "int8")
    elif mode in ("qat", "pqat"):
        wanted = "int8"
    else:
        return "none"
    allowed = FORMATS[fmt].quant_modes
    if wanted not in allowed:
        raise ConfigError(
            f"the artifact was quantized for {mode} {wanted}, which {fmt} does not offer "
            f"({fmt} allows: {', '.join(allowed)}); pass --quant explicitly"
        )
    return wanted


def resolve_calibration(
    source: Artifact, calibration_data: str | os.PathLike[str] | None, max_images: int
) -> tuple[np.ndarray | None, str | None]:
    """uint8 calibration pixels ``N×H×W×3`` and a description of their source; ``(None, None)``
    for a QAT model with nothing to calibrate on (its fake-quant layers carry the ranges)."""
    from edgexfer.evaluate.splits import run_split

    manifest = source.manifest
    quantization = manifest.quantization or {}
    split = run_split(source)
    if calibration_data is not None:
        pixels = calibration_from_folder(calibration_data, manifest, max_images, "--calibration-data", split=split)
        return pixels, f"--calibration-data {Path(calibration_data).resolve()}"
    stored_name = quantization.get("calibration_file")
    if stored_name or str(quantization.get("mode", "")).lower() == "ptq":
        stored = source.path / (stored_name or DEFAULT_CALIBRATION_FILE)
        if stored.is_file():
            pixels = load_stored_calibration(stored, manifest)
            return _evenly(pixels, max_images), f"the calibration set stored in the artifact ({stored.name})"
    dataset_path = (manifest.dataset or {}).get("path")
    if dataset_path and Path(dataset_path).is_dir():
        pixels = calibration_from_folder(dataset_path, manifest, max_images, "the artifact's dataset", split=split)
        return pixels, f"the artifact's dataset {dataset_path} (train split)"
    if str(quantization.get("mode", "")).lower() in ("qat", "pqat"):
        return None, None
    why = f"its dataset {dataset_path!r} no longer exists" if dataset_path else "it records no dataset path"
    raise ConfigError(
        f"--quant int8 needs calibration images from the target domain, and {why}; pass "
        "--calibration-data DIR (an image folder with the model's classes)"
    )


def load_stored_calibration(path: Path, manifest: Manifest) -> np.ndarray:
    """The quantize stage's ``calibration.npy``: uint8 pixels at the model's input size."""
    try:
        pixels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"stored calibration set {str(path)!r} cannot be read ({exc}); re-run the "
            "quantize stage or pass --calibration-data DIR"
        ) from None
    size, channels = manifest.preprocessing.input_size, manifest.preprocessing.channels
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, channels):
        raise ArtifactError(
            f"stored calibration set {str(path)!r} holds {pixels.dtype} "
            f"{'×'.join(map(str, pixels.shape))}, expected uint8 N×{size}×{size}×{channels}; "
            "re-run the quantize stage or pass --calibration-data DIR"
        )
    return pixels


def calibration_from_folder(
    folder: str | os.PathLike[str], manifest: Manifest, max_images: int, what: str, *, split: dict
) -> np.ndarray:
    """uint8 pixels of up to ``max_images`` images of ``folder``.

    Class sub-folders must be exactly the model's classes (``DataError`` otherwise); the
    training split (carved as ``split``, the run's, so no held-out image is calibrated on) is
    sampled, classes in proportion. A folder of loose images is sampled evenly in sorted order.
    """
    from edgexfer.data import load_arrays, scan_image_folder
    from edgexfer.runtime.images import list_image_files, load_images

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"{what} {str(folder)!r} does not exist or is not a folder; pass an image folder of target-domain images"
        )
    has_subfolders = any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    if not has_subfolders:
        files = list_image_files(folder)
        files = [files[i] for i in _even_indices(len(files), max_images)]
        return load_images(files, manifest.preprocessing)
    try:
        dataset = scan_image_folder(
            folder,
            class_names=manifest.label_names,
            seed=split["seed"],
            val_fraction=split["val_fraction"],
            test_fraction=split["test_fraction"],
        )
    except DataError as exc:
        raise DataError(f"calibration data ({what}): {exc}") from None
    samples = stratified_subset(dataset.split("train"), max_images, seed=manifest.seed or 0)
    return load_arrays(samples, manifest.preprocessing)[0]


def _even_indices(n: int, count: int) -> np.ndarray:
    if n <= count:
        return np.arange(n)
    return np.linspace(0, n - 1, count).round().astype(int)


def _evenly(pixels: np.ndarray, count: int) -> np.ndarray:
    return pixels[_even_indices(len(pixels), count)]
