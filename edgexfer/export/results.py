"""The typed result of the export stage, read from the export artifact it wrote (what a
renderer reads instead of string keys of ``metrics.json`` and the manifest)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact


@dataclass(frozen=True)
class ExportResult:
    path: Path
    model_path: Path
    format: str
    quant: str
    size_bytes: int
    gzip_bytes: int
    size_ratio: float | None  # exported bytes / the Keras model's
    conversion_seconds: float
    calibration_images: int | None
    calibration_source: str | None
    io_quantization: dict[str, dict[str, Any]]  # "input"/"output" → scale, zero point, dtype
    fp32_tensor_count: int | None  # tflite: float tensors left in the graph
    fp32_weight_count: int | None  # onnx: float initialisers left
    tensor_arena_bytes: int | None  # tflite-micro: the arena estimate
    macs: int | None  # multiply-accumulates per image, counted on the exported file
    warnings: tuple[str, ...]

    @classmethod
    def of(cls, artifact: Artifact) -> ExportResult:
        metrics, manifest = artifact.metrics, artifact.manifest
        quantization = manifest.quantization or {}
        return cls(
            path=artifact.path,
            model_path=artifact.model_path,
            format=manifest.config["format"],
            quant=manifest.config["quant"],
            size_bytes=metrics["size_bytes"],
            gzip_bytes=metrics["gzip_bytes"],
            size_ratio=metrics.get("size_ratio"),
            conversion_seconds=metrics["conversion_seconds"],
            calibration_images=manifest.config.get("calibration_images") or None,
            calibration_source=manifest.config.get("calibration_source"),
            io_quantization={
                key: quantization[key] for key in ("input", "output") if isinstance(quantization.get(key), dict)
            },
            fp32_tensor_count=metrics.get("fp32_tensor_count"),
            fp32_weight_count=metrics.get("fp32_weight_count"),
            tensor_arena_bytes=metrics.get("tensor_arena_bytes"),
            macs=metrics.get("macs"),
            warnings=tuple((manifest.extra or {}).get("warnings", [])),
        )
