"""Stage configs: frozen pydantic models, validated on construction.

Keep apart what exists (the backbone spec, in the registry), what to build on it (head
options) and how to train (hyper-parameters). Validation errors become one-line
``ConfigError``s that name the field, the value received and what is allowed.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgexfer.errors import ConfigError

Strategy = Literal["default", "mirrored", "multi-worker"]
ImageCache = Literal["auto", "memory", "disk", "none"]


class FrozenConfig(BaseModel):
    """Base of every stage config: unknown keys are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def build(cls, **values: Any):
        """Construct, turning pydantic's multi-line report into one ``ConfigError`` line."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, cls)) from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line that names the field, the value received and what is allowed (or the closest
    known option for a misspelt one). A check across fields names no single field, so its
    message stands alone."""
    error = exc.errors()[0]
    where = model.__name__
    field = ".".join(str(part) for part in error["loc"])
    message = error["msg"].replace("Value error, ", "")
    if error["type"] == "missing":
        return f"{where}: {field} is required (--{field.replace('_', '-')})"
    if not error["loc"]:
        return f"{where}: {message}"
    if error["type"] == "extra_forbidden":
        choices = _fields_at(model, error["loc"][:-1])
        return f"{where}: unknown option {field!r}" + did_you_mean(str(error["loc"][-1]), choices)
    return f"{where}: {field}={error.get('input')!r} is invalid: {message}"


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The option names of the (nested) config at ``path`` below ``model``."""
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def did_you_mean(name: str, choices) -> str:
    """`` — did you mean 'x'?`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" — did you mean {close[0]!r}?" if close else ""


class AugmentOptions(FrozenConfig):
    """Training-time augmentation of uint8 images (off by default: digits must not flip); the one
    type every stage's config and ``edgexfer.data.make_dataset`` take. Rotation is not offered;
    results are clipped to 0–255 before normalisation."""

    # Strict: "yes" or "0.1" in a config file is a typo to report, not a value to coerce.
    flip: bool = Field(False, strict=True, description="random horizontal flips (leave off for digits and text)")
    crop_zoom: float = Field(
        0.0, ge=0.0, lt=0.5, strict=True, description="max fraction zoomed in: a random crop of 1 - crop_zoom to 100 %"
    )
    brightness: float = Field(0.0, ge=0.0, le=1.0, strict=True, description="max brightness delta, fraction of 255")
    contrast: float = Field(0.0, ge=0.0, lt=1.0, strict=True, description="max contrast factor delta")
    scale: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        strict=True,
        description="max relative change of the object's size: each image is zoomed about its centre by a factor "
        "between 1/(1 + scale) and 1 + scale; zooming out fills the border with the mean of the image's edge pixels",
    )
    low_res: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        strict=True,
        description="smallest fraction of the side an image is shrunk to (area) and enlarged back from, drawn "
        "uniformly up to 1: simulates coarser cameras and scans; 0 is off",
    )

    @property
    def enabled(self) -> bool:
        return (
            self.flip
            or self.crop_zoom > 0
            or self.brightness > 0
            or self.contrast > 0
            or self.scale > 0
            or self.low_res > 0
        )


class HeadOptions(FrozenConfig):
    """The classifier put on the backbone's pooled features."""

    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    hidden_units: int = Field(0, ge=0, description="0: a single Dense layer")


class FinetuneConfig(FrozenConfig):
    """How to fine-tune: phase 1 trains the head on cached features, phase 2 the top layers."""

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    width: float | None = None
    img_size: int | None = Field(None, ge=8, le=1024)
    head: HeadOptions = HeadOptions()
    augment: AugmentOptions = AugmentOptions()
    epochs: int = Field(10, ge=1, description="phase 1 (head) epochs")
    fine_tune_epochs: int = Field(5, ge=0, description="phase 2 epochs; 0 skips phase 2")
    unfreeze_layers: int = Field(30, ge=0, description="top layers unfrozen in phase 2")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    fine_tune_learning_rate: float = Field(1e-4, gt=0, le=1.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] = "none"
    early_stopping_patience: int = Field(3, ge=0, description="0: off")
    feature_cache: bool = True
    # Where the decoded images (and phase 1's features) live between epochs: auto = memory
    # up to a budget, else disk (edgexfer.train.data_cache.MEMORY_CACHE_BUDGET_BYTES).
    image_cache: ImageCache = "auto"
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    max_train_images: int | None = Field(None, ge=2)
    seed: int = 0
    split_seed: int | None = Field(
        None,
        ge=0,
        description="the seed that carves val/test out of a flat folder; fix it to compare "
        "several seeds on the same held-out images",
    )
    deterministic: bool = True
    strategy: Strategy = "default"
    strict: bool = False
    # Few labels of one's own domain (edgexfer.train.fewshot).
    init: str | None = Field(
        None, description="start from this classifier artifact (finetune/adapt/fuse/distill output), not ImageNet"
    )
    class_map: dict[str, str] = Field(
        default_factory=dict, description="with init: rename the folder's classes to the init model's"
    )
    per_class: int | None = Field(
        None, ge=1, description="train on a seeded N labelled images per class of the train/val splits"
    )
    unlabelled: str | None = Field(None, description="folder of other target images for self-training")
    pseudo_threshold: float = Field(0.9, gt=0.0, lt=1.0, description="unlabelled: minimum confidence of a pseudo-label")
    pseudo_rounds: int = Field(2, ge=1, description="unlabelled: rounds of pseudo-labelling")
    pseudo_epochs: int = Field(2, ge=1, description="unlabelled: epochs per round")

    @model_validator(mode="after")
    def _init_options(self):
        if self.per_class and self.max_train_images:
            raise ValueError("per_class and max_train_images both choose the training images; pass one")
        return self

    @model_validator(mode="after")
    def _phase_two_needs_layers(self):
        if self.fine_tune_epochs > 0 and self.unfreeze_layers == 0:
            raise ValueError(
                "fine_tune_epochs > 0 needs unfreeze_layers > 0 (or set fine_tune_epochs=0 to train the head only)"
            )
        return self


class EvaluateConfig(FrozenConfig):
    batch_size: int = Field(64, ge=1)
    top_k: int = Field(5, ge=1)
    split: Literal["all", "train", "val", "test"] = "all"
    strict: bool = False


class EvaluateDomainsConfig(EvaluateConfig):
    """Evaluating on several domains (a pipeline's ``evaluate:`` stage): a split per domain,
    folder classes renamed to the model's, optionally the model's MACs and latency."""

    split: str | dict[str, str] = Field("all", description="all | train | val | test, or {domain: split}")
    class_map: dict[str, str] | str | None = Field(None, description="folder class → model class (or a file)")
    measure_latency: bool = False


def load_config_file(path) -> dict[str, Any]:
    """A YAML or TOML mapping of options (``--config FILE``)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {str(path)!r}: no such file")
    from edgexfer.safe_yaml import read_text

    text = read_text(path, "--config")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            from edgexfer.safe_yaml import load as safe_load_yaml

            data = safe_load_yaml(text, f"--config {str(path)!r}")
    except ConfigError:
        raise
    except Exception as exc:  # yaml and tomllib raise their own error types
        raise ConfigError(
            f"--config {str(path)!r} is not valid {path.suffix.lstrip('.') or 'YAML'}: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {str(path)!r} must hold a mapping of option: value")
    return data
