"""Typed results of the compression stages, read from the artifact each stage wrote.

The stages write free-form ``metrics.json`` (a file format other tools read); these
dataclasses are what a renderer (the CLI) reads instead, so the metric keys are named in one
place next to the stages that write them, and a renamed key fails here, loudly, rather than
as a missing cell in a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact


@dataclass(frozen=True)
class BeforeAfter:
    """A figure of the input model and of the stage's output."""

    before: Any
    after: Any


def _pair(metrics: dict[str, Any], key: str) -> BeforeAfter:
    return BeforeAfter(metrics.get(f"{key}_before"), metrics.get(f"{key}_after"))


@dataclass(frozen=True)
class DistillResult:
    path: Path
    teacher_backbone: str
    student_backbone: str
    eval_split: str
    accuracy: BeforeAfter  # teacher → student; both None when no label was read (no DATA)
    params: BeforeAfter
    h5_bytes: BeforeAfter
    input_size: BeforeAfter
    params_ratio: float
    gap_to_teacher: float | None
    baseline_accuracy: float | None  # the same student without distillation (--baseline)
    distillation_gain: float | None
    teacher_logits: str
    feature_weight: float = 0.0  # β of the feature hint; 0: off
    feature_loss: float | None = None  # the hint's loss in the last epoch
    teacher_agreement: float | None = None  # the student's answer is the teacher's, on eval_images
    eval_images: int | None = None
    labels_read: bool = True  # False: distilled on unlabelled images alone

    @classmethod
    def of(cls, artifact: Artifact) -> DistillResult:
        m, manifest = artifact.metrics, artifact.manifest
        teacher = (manifest.extra or {}).get("teacher", {})
        return cls(
            path=artifact.path,
            teacher_backbone=teacher.get("backbone", "teacher"),
            student_backbone=manifest.backbone,
            eval_split=m["eval_split"],
            accuracy=_pair(m, "accuracy"),
            params=_pair(m, "params"),
            h5_bytes=_pair(m, "size_bytes"),
            input_size=BeforeAfter(teacher.get("input_size"), manifest.preprocessing.input_size),
            params_ratio=m["params_ratio"],
            gap_to_teacher=m["accuracy_gap_to_teacher"],
            baseline_accuracy=m.get("baseline_accuracy"),
            distillation_gain=m.get("distillation_gain"),
            teacher_logits=m["teacher_logits"],
            feature_weight=m.get("feature_weight", 0.0),
            feature_loss=m.get("feature_loss"),
            teacher_agreement=m.get("teacher_agreement"),
            eval_images=m.get("eval_images"),
            labels_read=m.get("labels_read", True),
        )


@dataclass(frozen=True)
class PrunedLayer:
    name: str
    params: int
    sparsity: float
    pattern_2_4: bool | None  # 2:4 pruning: whether every 4 weights hold 2 zeros


@dataclass(frozen=True)
class DenseLayer:
    """A layer with weights that stays dense, and why."""

    name: str
    kind: str
    params: int
    reason: str


@dataclass(frozen=True)
class PruneResult:
    path: Path
    eval_split: str
    accuracy: BeforeAfter
    sparsity: BeforeAfter  # over all kernels
    nonzero_params: BeforeAfter
    h5_bytes: BeforeAfter
    h5_gzip_bytes: BeforeAfter
    tflite_bytes: BeforeAfter | None  # float TFLite (--measure-tflite)
    tflite_gzip_bytes: BeforeAfter | None
    tflite_gzip_ratio: float | None
    structure: str
    target_sparsity: float
    layers: tuple[PrunedLayer, ...]
    pruned_layers_sparsity: float
    gzip_ratio: float
    dense_layers: tuple[DenseLayer, ...]
    macs: BeforeAfter  # multiply-accumulates per image (a pruned kernel counts in full)

    @classmethod
    def of(cls, artifact: Artifact) -> PruneResult:
        m = artifact.metrics
        tflite = m.get("tflite_fp32") or None
        return cls(
            path=artifact.path,
            eval_split=m["eval_split"],
            accuracy=_pair(m, "accuracy"),
            sparsity=_pair(m, "sparsity"),
            nonzero_params=_pair(m, "params_nonzero"),
            h5_bytes=_pair(m, "size_bytes"),
            h5_gzip_bytes=_pair(m, "gzip_bytes"),
            tflite_bytes=_pair(tflite, "size_bytes") if tflite else None,
            tflite_gzip_bytes=_pair(tflite, "gzip_bytes") if tflite else None,
            tflite_gzip_ratio=tflite["gzip_ratio"] if tflite else None,
            structure=m["structure"],
            target_sparsity=m["target_sparsity"],
            layers=tuple(
                PrunedLayer(name, entry["params"], entry["sparsity"], entry.get("pattern_2_4"))
                for name, entry in m["layers"].items()
            ),
            pruned_layers_sparsity=m["pruned_layers_sparsity"],
            gzip_ratio=m["gzip_ratio"],
            dense_layers=tuple(
                DenseLayer(entry["layer"], entry["class"], entry["params"], entry["reason"])
                for entry in m["dense_layers"]
            ),
            macs=BeforeAfter(m.get("macs_before"), m.get("macs")),
        )


@dataclass(frozen=True)
class ConvertedModel:
    """A converted TFLite model measured with LiteRT."""

    label: str
    accuracy: float
    size_bytes: int
    gzip_bytes: int
    fp32_tensor_count: int
    weight_sparsity: float


# metrics.json key of each converted model, and its row label.
CONVERTED_KEYS = (
    ("tflite_qat_int8", "QAT int8"),
    ("tflite_ptq_int8", "PTQ int8"),
    ("tflite_ptq_fp16", "PTQ fp16"),
    ("tflite_ptq_dynamic", "PTQ dynamic"),
)


@dataclass(frozen=True)
class SparsityCheck:
    """Pruning-preserving QAT: whether the input's zeros survive in the converted int8 weights."""

    kept: bool
    input_sparsity: float
    tflite_sparsity: float


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    mode: str  # qat | pqat | ptq
    type: str
    eval_split: str
    eval_images: int
    float_accuracy: float
    float_bytes: int
    float_sparsity: float
    converted: tuple[ConvertedModel, ...]
    qat_keras_accuracy: float | None  # the fake-quant Keras model (QAT only)
    whole_model: bool
    float_layers: tuple[str, ...]
    sparsity_check: SparsityCheck | None
    calibration_images: int
    calibration_file: str | None
    macs: int | None  # multiply-accumulates per image, the same in every converted model

    @classmethod
    def of(cls, artifact: Artifact) -> QuantizeResult:
        m, q = artifact.metrics, artifact.manifest.quantization or {}
        check = m.get("sparsity_check")
        return cls(
            path=artifact.path,
            mode=q.get("mode", "?"),
            type=q.get("type", ""),
            eval_split=m["eval_split"],
            eval_images=m["eval_images"],
            float_accuracy=m["float_accuracy"],
            float_bytes=m["size_bytes_before"],
            float_sparsity=m["sparsity_before"],
            converted=tuple(
                ConvertedModel(
                    label,
                    m[key]["accuracy"],
                    m[key]["size_bytes"],
                    m[key]["gzip_bytes"],
                    m[key]["fp32_tensor_count"],
                    m[key]["weight_sparsity"],
                )
                for key, label in CONVERTED_KEYS
                if key in m
            ),
            qat_keras_accuracy=m.get("qat_keras_accuracy"),
            whole_model=bool(m.get("whole_model")),
            float_layers=tuple(entry["layer"] for entry in m.get("float_layers", [])),
            sparsity_check=SparsityCheck(check["kept"], check["input_sparsity"], check["tflite_sparsity"])
            if check
            else None,
            calibration_images=q.get("calibration_images") or 0,
            calibration_file=q.get("calibration_file"),
            macs=m.get("macs"),
        )


@dataclass(frozen=True)
class FloatLayer:
    """A layer QAT leaves float, and why."""

    name: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Int8Conversion:
    """``quantize --check STUDENT``: what the TFLite converter made of the student at int8."""

    fp32_tensor_count: int | None  # None where the conversion failed
    fp32_tensors: tuple[str, ...]  # the first ones, by name
    from_qat: bool  # converted from the QAT model (else the float model, as PTQ)
    error: str | None

    @property
    def fully_int8(self) -> bool:
        return self.error is None and self.fp32_tensor_count == 0


@dataclass(frozen=True)
class QatPreflight:
    """``quantize --check``: what QAT will quantize, before any data is read."""

    artifact: str | None  # None for a student name
    backbone: str
    pqat: bool
    counts: dict[str, int]  # int8 | folded | passthrough | float → number of layers
    float_layers: tuple[FloatLayer, ...]
    quantizable: int
    whole_model: bool
    error: str | None
    input_size: int | None = None  # a student name: the size and width it was built at
    width: float | None = None
    params: int | None = None
    macs: int | None = None
    int8: Int8Conversion | None = None  # a student name: the int8 TFLite conversion

    @classmethod
    def of(cls, report: dict[str, Any]) -> QatPreflight:
        converted = report.get("int8_tflite")
        return cls(
            artifact=report["artifact"],
            backbone=report["backbone"],
            pqat=bool(report.get("pqat")),
            counts=dict(report.get("counts", {})),
            float_layers=tuple(
                FloatLayer(entry["layer"], entry["class"], entry["reason"]) for entry in report.get("float_layers", [])
            ),
            quantizable=report.get("quantizable", 0),
            whole_model=bool(report.get("whole_model")),
            error=report.get("error"),
            input_size=report.get("input_size"),
            width=report.get("width"),
            params=report.get("params"),
            macs=report.get("macs"),
            int8=Int8Conversion(
                converted["fp32_tensor_count"],
                tuple(converted.get("fp32_tensors") or ()),
                bool(converted.get("from_qat")),
                converted.get("error"),
            )
            if converted
            else None,
        )
