"""The export stage: a Keras artifact → a ``.tflite`` / ``.onnx`` / SavedModel artifact.

``export_model`` converts an in-memory Keras model into a directory; ``export_artifact``
is the stage (read an artifact, write a new one atomically with manifest and metrics).
The exported file embeds its labels and preprocessing, so it also works copied on its own.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, Manifest, Preprocessing, refuse_input_as_out, writing_artifact
from edgexfer.errors import ArtifactError, ConfigError
from edgexfer.export._onnx import OPSET_RANGE
from edgexfer.export.formats import FORMATS, check_format_quant
from edgexfer.export.gray import fold_first_conv_for_gray
from edgexfer.keras_io import load_keras_model
from edgexfer.runtime.images import list_image_files, load_images, normalize
from edgexfer.runtime.metadata import EmbeddedInfo

MIN_CALIBRATION_IMAGES = 10
DEFAULT_MAX_CALIBRATION_IMAGES = 300
KERAS_SUFFIXES = (".keras", ".h5")
_QUANTIZE_LAYER_CLASSES = {"QuantizeLayer", "QuantizeWrapper", "QuantizeWrapperV2"}

CalibrationSource = np.ndarray | str | os.PathLike | Sequence[str | os.PathLike]


def export_model(
    keras_model,
    manifest: Manifest,
    dest_dir: str | os.PathLike[str],
    fmt: str,
    quant: str = "none",
    *,
    calibration: np.ndarray | None = None,
    opset: int = 15,
    is_qat: bool = False,
    io_type: str | None = None,
) -> dict[str, Any]:
    """Convert ``keras_model`` into ``dest_dir/<model file>`` and describe the result.

    ``calibration`` holds preprocessed float32 images (``N×H×W×C``, N ≥ 10); int8 needs it
    unless the model is QAT (its fake-quant layers carry the ranges). ``io_type``: the
    input/output type of formats that offer one (tflite: uint8 | int8 | float32; see
    ``tflite_io``). Returns ``format``, ``quant``, ``model_file``,
    ``quantization`` (mode, int8 input/output scale and zero point, fp32 tensor count …),
    ``warnings``, ``conversion_seconds``, ``size_bytes`` and ``gzip_bytes``.
    """
    row = check_format_quant(fmt, quant)
    check_io_type_for(row, io_type)
    if fmt == "onnx" and not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ConfigError(
            f"--opset {opset} is not supported by tf2onnx here; allowed: {OPSET_RANGE[0]}–{OPSET_RANGE[1]}"
        )
    input_shape = tuple(keras_model.input_shape[1:])
    _check_calibration(calibration, quant, fmt, is_qat, input_shape)
    if quant != "int8":
        calibration = None  # only int8 calibrates; ignore images given for other modes

    info = EmbeddedInfo(
        manifest.label_names,
        manifest.preprocessing,
        {
            "stage": "export",
            "format": fmt,
            "quant": quant,
            "source_stage": manifest.stage,
            "backbone": manifest.backbone,
            "weights": manifest.weights,
        },
    )
    dest = Path(dest_dir) / row.model_file
    start = time.perf_counter()
    extra = {"io_type": io_type} if row.io_types else {}
    result = row.converter(
        keras_model,
        dest,
        quant,
        info,
        calibration=calibration,
        opset=opset if fmt == "onnx" else None,
        is_qat=is_qat,
        **extra,
    )
    seconds = time.perf_counter() - start
    size, gzip_size = _sizes(dest)
    return {
        "format": fmt,
        "quant": quant,
        "model_file": row.model_file,
        "quantization": result["quantization"],
        "warnings": result.get("warnings", []),
        "conversion_seconds": round(seconds, 3),
        "size_bytes": size,
        "gzip_bytes": gzip_size,
    }


def export_artifact(
    artifact_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str,
    quant: str = "none",
    calibration_images: CalibrationSource | None = None,
    *,
    opset: int = 15,
    max_calibration_images: int = DEFAULT_MAX_CALIBRATION_IMAGES,
    is_qat: bool | None = None,
    calibration_source: str | None = None,
    io_type: str | None = None,
    gray_input: bool = False,
) -> Artifact:
    """The export stage: read the Keras artifact at ``artifact_path``, write an export artifact
    at ``out`` (``model.tflite`` / ``model.onnx`` / ``saved_model``) and return it.

    ``calibration_images`` (int8 only): uint8 pixels ``N×H×W×C`` (preprocessed here with the
    artifact's preprocessing), already preprocessed float32 images, an image folder, or a list
    of image files; at most ``max_calibration_images`` are used. ``is_qat`` defaults to what
    the manifest and the model say. ``calibration_source`` (a description of where the
    calibration images came from) is recorded in the manifest's config. ``gray_input`` folds the
    first convolution's colour channels first (``export.gray``: exact on grayscale images).
    """
    check_io_type_for(check_format_quant(fmt, quant), io_type)  # fail before loading anything
    source = Artifact(artifact_path)
    refuse_input_as_out(out, source)
    model_path = source.model_path
    if model_path.suffix not in KERAS_SUFFIXES:
        raise ArtifactError(
            f"artifact {str(source.path)!r} holds {model_path.name}, not a Keras "
            f"model ({', '.join(KERAS_SUFFIXES)}); export from a training or "
            "compression stage's artifact"
        )
    manifest = source.manifest
    calibration = None
    if quant == "int8" and calibration_images is not None:
        calibration = calibration_array(calibration_images, manifest.preprocessing, max_calibration_images)

    keras_model = load_keras_model(source.model_path)
    qat = is_qat if is_qat is not None else _manifest_says_qat(manifest) or has_quantize_layers(keras_model)
    if gray_input and qat:
        raise ConfigError(
            "--gray-input folds a float model's weights; a quantization-aware (QAT) model's int8 ranges were "
            "trained on the unfolded ones: export it without --gray-input"
        )
    folded = fold_first_conv_for_gray(keras_model, manifest.preprocessing) if gray_input else None

    with writing_artifact(out) as writer:
        info = export_model(
            keras_model,
            manifest,
            writer.tmp,
            fmt,
            quant,
            calibration=calibration,
            opset=opset,
            is_qat=qat,
            io_type=io_type,
        )
        quantization = dict(info["quantization"])
        if manifest.quantization:
            quantization["source"] = manifest.quantization
        config = {
            "format": fmt,
            "quant": quant,
            "calibration_images": 0 if calibration is None else int(len(calibration)),
        }
        if calibration is not None and calibration_source:
            config["calibration_source"] = calibration_source
        if fmt == "onnx":
            config["opset"] = opset
        if "io_type" in quantization:
            config["io_type"] = quantization["io_type"]
        if folded:
            config["gray_input"] = True
        source_size = _sizes(model_path, with_gzip=False)[0]
        exported = source.child_manifest(
            "export",
            config,
            info["model_file"],
            quantization=quantization,
            extra={"warnings": info["warnings"]} if info["warnings"] else {},
        )
        metrics = {
            "format": fmt,
            "quant": quant,
            "size_bytes": info["size_bytes"],
            "gzip_bytes": info["gzip_bytes"],
            "source_size_bytes": source_size,
            "size_ratio": round(info["size_bytes"] / source_size, 4) if source_size else None,
            "conversion_seconds": info["conversion_seconds"],
            "macs": exported_macs(writer.tmp / info["model_file"], keras_model),
        }
        if folded:
            metrics["gray_input"] = folded
        for key in ("fp32_tensor_count", "fp32_weight_count"):
            if key in quantization:
                metrics[key] = quantization[key]
        if "tflite_micro" in quantization:  # tflite-micro: the arena estimate of model.h
            metrics["tensor_arena_bytes"] = quantization["tflite_micro"]["arena"]["arena_bytes"]
        return writer.commit(exported, metrics)


def exported_macs(model_path: Path, keras_model) -> int:
    """Multiply-accumulates per image of an exported model: counted on the file where it can be
    (``.tflite``, ``.onnx``), else on the Keras model it was converted from (a SavedModel)."""
    from edgexfer.evaluate.macs import keras_macs, model_file_macs

    return model_file_macs(model_path) or keras_macs(keras_model)


def calibration_array(
    images: CalibrationSource, preprocessing: Preprocessing, max_images: int = DEFAULT_MAX_CALIBRATION_IMAGES
) -> np.ndarray:
    """Preprocessed float32 calibration images from pixels, a folder or a list of files.

    A folder or list longer than ``max_images`` is subsampled evenly (sorted order), so
    every class folder contributes.
    """
    if isinstance(images, np.ndarray):
        array = images if images.dtype != np.uint8 else normalize(images, preprocessing)
        array = array.astype(np.float32, copy=False)
        if len(array) > max_images:
            array = array[np.linspace(0, len(array) - 1, max_images).round().astype(int)]
        return array
    files = list_image_files(images) if isinstance(images, (str, os.PathLike)) else [Path(p) for p in images]
    if len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]
    return normalize(load_images(files, preprocessing), preprocessing)


def check_io_type_for(row, io_type: str | None) -> None:
    """``ConfigError`` for an ``io_type`` the format does not offer (or that is not an I/O type)."""
    from edgexfer.export.tflite_io import check_io_type

    check_io_type(io_type)
    if io_type is not None and io_type not in row.io_types:
        offered = [name for name, other in FORMATS.items() if other.io_types]
        raise ConfigError(
            f"--io-type is not available for {row.name}; only {', '.join(offered)} "
            "exports choose their input/output type"
        )


def has_quantize_layers(keras_model) -> bool:
    """Whether the model carries tfmot fake-quant layers (a QAT model)."""
    return any(type(layer).__name__ in _QUANTIZE_LAYER_CLASSES for layer in keras_model.layers)


def _manifest_says_qat(manifest: Manifest) -> bool:
    quantization = manifest.quantization or {}
    return str(quantization.get("mode", "")).lower() in ("qat", "pqat") or quantization.get("qat") is True


def _missing_calibration_message(fmt: str) -> str:
    return (
        f"--quant int8 for {fmt} needs calibration images (a representative dataset, at least "
        f"{MIN_CALIBRATION_IMAGES}); pass --calibration <image folder>, e.g. the training folder"
    )


def _check_calibration(calibration: np.ndarray | None, quant: str, fmt: str, is_qat: bool, input_shape: tuple) -> None:
    if quant != "int8":
        return
    if calibration is None:
        if is_qat:
            return  # a QAT model carries its own ranges
        raise ConfigError(_missing_calibration_message(fmt))
    if not isinstance(calibration, np.ndarray) or calibration.ndim != 4:
        raise ConfigError(
            "calibration must be a float32 array of preprocessed images N×H×W×C, got "
            f"{type(calibration).__name__} {getattr(calibration, 'shape', '')}"
        )
    if tuple(calibration.shape[1:]) != tuple(input_shape):
        raise ConfigError(
            f"calibration images have shape {tuple(calibration.shape[1:])}, the model takes {tuple(input_shape)}"
        )
    if np.issubdtype(calibration.dtype, np.integer):
        raise ConfigError(
            "calibration images must be preprocessed float32 ((x - mean) / std), got "
            f"{calibration.dtype}; export_artifact preprocesses uint8 pixels for you"
        )
    if len(calibration) < MIN_CALIBRATION_IMAGES:
        raise ConfigError(
            f"calibration has {len(calibration)} images; int8 needs at least "
            f"{MIN_CALIBRATION_IMAGES} representative images (100–500 recommended)"
        )


def _sizes(path: Path, with_gzip: bool = True) -> tuple[int, int | None]:
    """Bytes on disk and gzip-compressed bytes of a file or of a directory's files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    size = sum(f.stat().st_size for f in files)
    if not with_gzip:
        return size, None
    return size, sum(len(gzip.compress(f.read_bytes(), compresslevel=9)) for f in files)
