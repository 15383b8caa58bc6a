"""Configs of the compression stages: distill, prune, quantize.

Frozen pydantic models like ``edgexfer.config``'s, validated on construction; ``.build(**kw)``
turns a validation error into one ``ConfigError`` line that names the field, the value
received and what is allowed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgexfer.config import AugmentOptions, FrozenConfig, HeadOptions, Strategy

# Fewer representative images than this make int8 ranges noise (same floor as export).
MIN_CALIBRATION_IMAGES = 10


class _StageConfig(FrozenConfig):
    """What every compression stage takes: augmentation, a training subset, seed, strictness."""

    augment: AugmentOptions = AugmentOptions()
    max_train_images: int | None = Field(None, ge=2)
    seed: int = 0
    deterministic: bool = True
    strict: bool = False
    strategy: Strategy = Field(
        "default",
        description="tf.distribute strategy: default | mirrored | multi-worker "
        "(TF_CONFIG; --batch-size is the global batch)",
    )


class DistillConfig(_StageConfig):
    """Hinton knowledge distillation of a teacher artifact into a registered student backbone.

    ``loss = alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(y, softmax(s))
    + β · mean_batch ‖normalize(P·e_s) − normalize(e_t)‖²``:
    ``alpha`` weighs the soft targets, ``1 − alpha`` the hard labels; ``β`` (``feature_weight``,
    0: off) weighs a FitNets-style hint (Romero et al., 2015) on the pooled embeddings — ``e_t``
    the input of the teacher's ``head_dense``, ``e_s`` the input of the student's head Dense
    (before its dropout), ``P`` a linear projection onto the teacher's width, trained with the
    student and not saved with it. The vectors are L2-normalised, so the term lies in [0, 4]
    per image whatever the feature magnitudes and widths.
    """

    student: str = Field(..., description="registered backbone name of the student")
    student_weights: str | None = Field(
        None, description="imagenet | none | PATH; default: imagenet where the backbone has it, else none"
    )
    student_width: float | None = Field(None, description="width multiplier (MobileNet alpha)")
    student_img_size: int | None = Field(None, ge=1, le=1024, description="student input size; default: the teacher's")
    bn_momentum: float | None = Field(
        0.99,
        gt=0.0,
        lt=1.0,
        description="BatchNorm momentum of the student; "
        "keras.applications use 0.999, whose moving statistics lag behind a "
        "short from-scratch schedule (MobileNetV2 stayed at chance in inference "
        "mode); None keeps the backbone's",
    )
    head: HeadOptions = HeadOptions()
    temperature: float = Field(4.0, gt=0.0, le=100.0, description="softmax temperature T of the soft targets")
    alpha: float = Field(
        0.7, ge=0.0, le=1.0, description="weight of the soft-target loss; 1 - alpha weighs the hard labels"
    )
    feature_weight: float = Field(
        0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="weight β of the feature hint: the student's pooled embedding, linearly projected, "
        "matches the teacher's (L2-normalised squared distance, 0–4 per image); 0: off",
    )
    teacher_view: Literal["augmented", "clean"] = Field(
        "augmented",
        description="with augmentation on: 'augmented' runs the teacher on each augmented image (online); "
        "'clean' uses its logits of the un-augmented image, computed once, while the student sees the "
        "augmented view (faster: the teacher does not run every step)",
    )
    correct_teacher: bool = Field(
        False,
        description="on each labelled image the teacher gets wrong, swap its logits of the predicted and "
        "the true class (Knowledge Adjustment, Wen et al. 2021), so the soft target agrees with the label: "
        "for a teacher adapted away from the labelled domain",
    )
    baseline: bool = Field(False, description="also train the same student without distillation")
    unlabelled: str | None = Field(
        None,
        description="folder of extra images with no labels used (e.g. the "
        "target domain): the student learns them from the "
        "teacher's soft targets alone; with no DATA, the only images (source-free)",
    )
    max_unlabelled_images: int | None = Field(None, ge=1, description="seeded random cap on the unlabelled images")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Off by default: a distilled student learns more slowly than its baseline (the soft targets
    # regularise), and stopping on a small validation split cut it short (mnist-5k, cnn_small).
    early_stopping_patience: int = Field(0, ge=0, description="patience on val accuracy, best weights restored; 0: off")


class _KeepsUnlabelled(_StageConfig):
    """What prune and QAT take besides the labelled data: unlabelled images (the target domain)
    that join the training data under the input model's own predictions."""

    unlabelled: str | None = Field(
        None,
        description="folder of images with no labels used (e.g. the target domain): they join the "
        "training data labelled with the input model's own predictions, so fine-tuning while "
        "compressing keeps what the model does there",
    )
    max_unlabelled_images: int | None = Field(None, ge=1, description="seeded random cap on the unlabelled images")


class PruneConfig(_KeepsUnlabelled):
    """tfmot magnitude pruning while fine-tuning, then ``strip_pruning``."""

    sparsity: float | None = Field(
        None, description="target fraction of zero weights in the prunable layers, in [0, 1); 2:4 implies 0.5"
    )
    structure: Literal["unstructured", "2:4"] = "unstructured"
    schedule: Literal["constant", "polynomial"] = "polynomial"
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="polynomial schedule: sparsity at the first step")
    # Defaults: the target sparsity is reached halfway, and the second half fine-tunes at it. With
    # 4 epochs, end 0.7 and lr 3e-4, 75 % sparsity lost 14.4 points on mnist-5k (Lite0 teacher) and
    # 1.1 on fashion-mnist (cnn_medium); with these, 1.0 and 0.6 (BENCHMARKS.md).
    end_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="polynomial schedule: fraction of the steps after which the target is reached"
    )
    frequency: int | None = Field(
        None, ge=1, description="steps between mask updates; default: about 10 updates over the schedule"
    )
    epochs: int = Field(10, ge=1, description="fine-tuning epochs while pruning")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(5e-4, gt=0.0, le=1.0)
    measure_tflite: bool = Field(True, description="also convert to float TFLite to measure its (gzip) size")

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, value):
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(
                "sparsity is the fraction of weights set to zero: it must be in [0, 1) (0.5 prunes half of them)"
            )
        return value

    @model_validator(mode="after")
    def _structure_needs(self):
        if self.structure == "unstructured" and self.sparsity is None:
            raise ValueError("unstructured pruning needs a target sparsity, e.g. --sparsity 0.5")
        if self.structure == "2:4" and self.sparsity not in (None, 0.5):
            raise ValueError(
                f"2:4 pruning zeroes exactly 2 of every 4 weights (sparsity 0.5), got "
                f"sparsity {self.sparsity}; pass --sparsity 0.5 or leave it out"
            )
        if self.schedule == "polynomial" and self.sparsity is not None and self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} is above the target sparsity {self.sparsity}")
        return self

    @property
    def target_sparsity(self) -> float:
        return 0.5 if self.structure == "2:4" else float(self.sparsity)


class QuantizeConfig(_KeepsUnlabelled):
    """QAT (tfmot fake-quant fine-tuning, int8) or PTQ settings (int8 | fp16 | dynamic) for export."""

    mode: Literal["qat", "ptq"] = "qat"
    type: Literal["int8", "fp16", "dynamic"] = Field("int8", description="PTQ kind; QAT is int8")
    calibration_images: int = Field(200, description="representative images drawn from the training split (int8)")
    epochs: int = Field(2, ge=1, description="QAT fine-tuning epochs")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    preserve_sparsity: bool | None = Field(
        None, description="pruning-preserving QAT; default: when the input artifact is pruned"
    )
    compare_ptq: bool = Field(True, description="QAT: also measure PTQ int8 of the input model")

    @field_validator("calibration_images")
    @classmethod
    def _enough_calibration(cls, value):
        if value < MIN_CALIBRATION_IMAGES:
            raise ValueError(
                f"a calibration set of {value} images is too small: int8 ranges need at least "
                f"{MIN_CALIBRATION_IMAGES} representative images (100–500 recommended)"
            )
        return value

    @model_validator(mode="after")
    def _qat_is_int8(self):
        if self.mode == "qat" and self.type != "int8":
            raise ValueError(f"QAT trains for int8; --type {self.type} is a PTQ setting (use --mode ptq)")
        if self.mode == "ptq" and self.unlabelled:
            raise ValueError("unlabelled images are trained on by QAT; PTQ trains nothing: drop them or use --mode qat")
        return self


# Let edgexfer.config's "did you mean" hints find these fields too.
