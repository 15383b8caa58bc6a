"""``edgexfer quantize --check``: the QAT preflight, before any training.

On an artifact folder: builds the QAT model (no data, no training) and lists per layer what
will be quantized and what stays float.

On a registered student name (``cnn_tiny``, ``lite0_b3`` …): builds the student classifier
the way ``distill`` does (random weights, a fresh head), runs the same preflight, then
converts it to an int8 TFLite through the export path with a few random calibration images
and counts the float32 tensors the converter left: a student that cannot be deployed fully
int8 is found before hours of training, not after.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.compress import measure, stage_io
from edgexfer.compress.qat import build_qat_model, calibrate_ranges, is_pruned, no_quantizable_message
from edgexfer.errors import ArtifactError, BackboneError, ConfigError, ExportError
from edgexfer.keras_io import load_keras_model

# The student built for the check: a head for this many classes, calibrated on this many
# random images (the converter only needs value ranges to choose int8 kernels).
CHECK_CLASSES = 10
CHECK_CALIBRATION_IMAGES = 16


def check(
    model,
    *,
    preserve_sparsity: bool | None = None,
    img_size: int | None = None,
    width: float | None = None,
) -> dict[str, Any]:
    """Preflight of an artifact folder or of a registered student name (see the module docstring).

    A path that exists, or that names a folder (holds a path separator), is an artifact;
    anything else is looked up in the backbone registry. Never raises for an unquantizable
    model: the report says so."""
    if looks_like_artifact(model):
        if img_size is not None or width is not None:
            raise ConfigError(
                f"--img-size and --width are for a student name (e.g. cnn_small); the artifact {str(model)!r} "
                "has its own input size and width: drop them"
            )
        return check_artifact(model, preserve_sparsity=preserve_sparsity)
    return check_student(str(model), img_size=img_size, width=width, preserve_sparsity=bool(preserve_sparsity))


def looks_like_artifact(model) -> bool:
    text = str(model)
    return Path(text).exists() or os.sep in text or "/" in text or text.startswith(".")


def check_artifact(model_dir, *, preserve_sparsity: bool | None = None) -> dict[str, Any]:
    """Preflight of a Keras artifact: what QAT will and won't quantize."""
    from edgexfer.export.convert import has_quantize_layers

    source = stage_io.keras_artifact(model_dir, "MODEL")
    model = load_keras_model(source.model_path)
    report: dict[str, Any] = {
        "artifact": str(source.path),
        "stage": source.manifest.stage,
        "backbone": source.manifest.backbone,
    }
    if has_quantize_layers(model):
        report.update(
            error="the model is already quantization-aware; export it (edgexfer export --quant int8)",
            layers=[],
            counts={},
            float_layers=[],
            quantizable=0,
            whole_model=False,
            pqat=False,
        )
        return report
    pqat = is_pruned(source, model) if preserve_sparsity is None else preserve_sparsity
    report.update(_preflight(model, pqat)[1])
    return report


def check_student(
    name: str, *, img_size: int | None = None, width: float | None = None, preserve_sparsity: bool = False
) -> dict[str, Any]:
    """Preflight of a registered student at ``img_size`` (its default if ``None``) and ``width``:
    the QAT report plus ``int8_tflite``, what the converter made of it (float32 tensors left,
    or the converter's error). Random weights: nothing is downloaded or trained."""
    from edgexfer.backbones.registry import create_backbone, get_backbone
    from edgexfer.evaluate.macs import keras_macs
    from edgexfer.keras_io import build_classifier, build_head_layers
    from edgexfer.runtime.images import normalize
    from edgexfer.tf_env import import_tf

    try:
        spec = get_backbone(name)
    except BackboneError as exc:
        raise BackboneError(
            f"{exc}; MODEL is an artifact folder or a student name, and no folder {name!r} exists"
        ) from None
    size = img_size or spec.default_input_size
    spec.check_options(size, width)  # one line naming the smallest size or the allowed widths
    width = spec.default_width if width is None else width
    import_tf()
    # random weights (the verdict depends on the layers, not their values); global RNGs are not touched
    backbone = create_backbone(name, size, weights="none", width=width)
    model = build_classifier(backbone, build_head_layers(CHECK_CLASSES, 0.2, seed=0), name=f"{name}_student")
    preprocessing = spec.preprocessing(size)
    report: dict[str, Any] = {
        "artifact": None,
        "stage": None,
        "backbone": name,
        "input_size": size,
        "width": width if spec.widths else None,  # None: the backbone has one width
        "params": measure.weight_stats(model)["params"],
        "macs": keras_macs(model),
    }
    qat_model, described = _preflight(model, preserve_sparsity)
    report.update(described)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (CHECK_CALIBRATION_IMAGES, size, size, preprocessing.channels), dtype=np.uint8)
    calibration = normalize(pixels, preprocessing).astype(np.float32)
    if qat_model is not None:
        calibrate_ranges(qat_model, calibration, batch_size=CHECK_CALIBRATION_IMAGES)
    report["int8_tflite"] = _int8_conversion(
        qat_model or model, name, preprocessing, calibration, qat_model is not None
    )
    return report


def _preflight(model, pqat: bool):
    """``(QAT model or None, report)``: tfmot's QAT applied to ``model``, layer by layer."""
    stats = measure.weight_stats(model)
    report: dict[str, Any] = {"pqat": pqat, "sparsity": stats["sparsity"], "params": stats["params"]}
    try:
        qat_model, described = build_qat_model(model, pqat)
        report.update(described)
        if not described["quantizable"]:
            report["error"] = no_quantizable_message(described)
            qat_model = None
    except ConfigError as exc:
        report.update(error=str(exc), layers=[], counts={}, float_layers=[], quantizable=0, whole_model=False)
        qat_model = None
    return qat_model, report


def _int8_conversion(model, name: str, preprocessing, calibration: np.ndarray, is_qat: bool) -> dict[str, Any]:
    """Convert ``model`` to an int8 TFLite with edgexfer's exporter (as ``export --quant int8``
    would) in a temporary folder; the float32 tensors it keeps, or the converter's error."""
    import tempfile

    from edgexfer.artifact import Manifest
    from edgexfer.export import export_model

    manifest = Manifest(
        stage="quantize-check",
        label_names=[f"class{i}" for i in range(CHECK_CLASSES)],
        preprocessing=preprocessing,
        backbone=name,
        weights="none",
    )
    result: dict[str, Any] = {"from_qat": is_qat, "calibration_images": int(len(calibration))}
    with tempfile.TemporaryDirectory(prefix="edgexfer-quantize-check-") as tmp:
        try:
            with measure.quiet_native_logs():
                info = export_model(model, manifest, tmp, "tflite", "int8", calibration=calibration, is_qat=is_qat)
        except (ExportError, ArtifactError) as exc:
            return {**result, "error": str(exc), "fp32_tensor_count": None, "fp32_tensors": []}
    quantization = info["quantization"]
    return {
        **result,
        "error": None,
        "fp32_tensor_count": int(quantization.get("fp32_tensor_count") or 0),
        "fp32_tensors": [_layer_of(tensor, model.name) for tensor in quantization.get("fp32_tensors") or []],
        "io_type": quantization.get("io_type"),
        "size_bytes": info["size_bytes"],
    }


def _layer_of(tensor: str, model_name: str) -> str:
    """A converter tensor name as a reader finds the layer: the first of the fused names
    (``a;b;c``), without the model's own prefix."""
    first = tensor.split(";", 1)[0]
    return first.removeprefix(f"{model_name}/")
