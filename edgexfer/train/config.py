"""The configs of the cross-domain training stages: ``adapt`` (:class:`AdaptConfig`) and
``fuse`` (:class:`FuseConfig`), with the constants they validate against.

Here, apart from the stages, so that a pipeline validates a stage's options (``pipeline/stages.py``
names these models by dotted path) without importing the training code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgexfer.config import FrozenConfig
from edgexfer.errors import ConfigError

# ----------------------------------------------------------------------------- adapt

METHODS = ("adabn", "coral", "dann", "pseudo-label", "shot", "auto")
Method = Literal["adabn", "coral", "dann", "pseudo-label", "shot", "auto"]
# Methods that read no source image; ``source`` is refused with them.
SOURCE_FREE_METHODS = ("shot",)

# Per-method defaults, tuned on mnist-5k → uci-digits (EfficientNet-Lite0, 64 px); ``None``
# in the config means "this method's default".
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "adabn": {"epochs": 10, "bn": "domain"},
    # Deep CORAL aligned best with the model's own BN statistics: 85.8 % on uci-digits over 3
    # seeds against 71.1 % with per-domain statistics, and its int8 export keeps the accuracy.
    "coral": {"epochs": 10, "bn": "frozen"},
    # DANN with frozen statistics collapsed (every target image to one class); per-domain works.
    "dann": {"epochs": 10, "bn": "domain"},
    "pseudo-label": {"epochs": 3, "bn": "frozen", "after": "coral"},  # epochs per round
    # SHOT: epochs over the TARGET images; BN "domain" = target statistics (no source data).
    "shot": {"epochs": 10, "bn": "domain"},
}


# adapt's training loop swaps each BatchNorm layer's statistics between the source and the
# target batch inside every step (assigning the variables), which replicas of a tf.distribute
# strategy cannot share; it trains the top layers on cached features, minutes on one CPU.
ADAPT_NOT_DISTRIBUTED = (
    "adapt cannot be distributed (--strategy default only): its training step swaps BatchNorm "
    "statistics between source and target batches, which tf.distribute replicas cannot share; "
    "run it in one process (it trains the top layers on cached features)"
)


class AdaptConfig(FrozenConfig):
    """How to adapt. ``epochs``/``after`` of ``None`` take the method's defaults."""

    method: Method = "adabn"
    after: Literal["none", "adabn", "coral", "dann"] | None = Field(
        None, description="pseudo-label only: run this method first, then self-train (default: coral)"
    )
    bn: Literal["domain", "frozen"] | None = Field(
        None,
        description="domain: per-domain BatchNorm statistics (source for source batches, target for "
        "target batches; AdaBN underneath the method); frozen: the model's own statistics "
        "(default: per method — adabn/dann domain, coral/pseudo-label frozen)",
    )
    output_stats: Literal["target", "source"] = Field(
        "target", description="BatchNorm statistics the written model carries (source: the source-statistics baseline)"
    )
    epochs: int | None = Field(
        None, ge=0, description="training epochs over the source (pseudo-label: per round; shot: over the target)"
    )
    train_layers: int = Field(30, ge=0, description="top weighted layers trained besides the head; 0: head only")
    batch_size: int = Field(64, ge=2)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    coral_weight: float = Field(1.0, ge=0, description="weight of the CORAL loss (Deep CORAL's lambda)")
    dann_weight: float = Field(0.3, ge=0, description="largest gradient-reversal coefficient (ramped up from 0)")
    dann_hidden: int = Field(256, ge=1, description="units of the domain classifier's hidden layer")
    shot_weight: float = Field(
        0.3, ge=0, description="shot: weight β of the cross-entropy to the centroid pseudo-labels (SHOT's cls_par)"
    )
    restarts: int = Field(
        1,
        ge=1,
        description="shot: train this many times from the same start (each its own batch order) and keep the "
        "one with the highest information maximisation on the target (label-free); costs restarts × the training",
    )
    threshold: float = Field(0.9, gt=0.0, lt=1.0, description="pseudo-label: minimum confidence")
    rounds: int = Field(3, ge=1, description="pseudo-label: rounds of re-labelling")
    pseudo_weight: float = Field(1.0, gt=0, description="pseudo-label: weight of the target loss")
    class_balance: bool = Field(
        True,
        description="pseudo-label: keep at most as many pseudo-labels of a class "
        "as the target has images per class on average",
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="source images held out to report source accuracy")
    max_source_images: int | None = Field(None, ge=2)
    max_target_images: int | None = Field(None, ge=2)
    class_map: dict[str, str] = Field(default_factory=dict, description="target folder class → model class")
    seed: int = 0
    deterministic: bool = True
    strict: bool = False
    strategy: Literal["default", "mirrored", "multi-worker"] = Field(
        "default", description="default only: adapt cannot be distributed"
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.strategy != "default":
            raise ConfigError(ADAPT_NOT_DISTRIBUTED)  # not a ValueError: pydantic passes it through as it is
        if self.after not in (None, "none") and self.method != "pseudo-label":
            raise ValueError(
                f"after={self.after!r} is for method pseudo-label (self-training after another "
                f"method); with method {self.method!r} leave it out"
            )
        if self.restarts > 1 and self.method != "shot":
            raise ValueError(f"restarts is for method shot; with method {self.method!r} leave it out")
        if self.method == "auto" and (self.bn is not None or self.epochs is not None):
            raise ValueError("method auto runs every method with its own defaults; leave bn and epochs out")
        if self.bn == "frozen" and "adabn" in (self.method, self.after):
            raise ValueError("adabn re-estimates BatchNorm statistics; bn='frozen' contradicts it")
        return self

    @property
    def bn_mode(self) -> str:
        """The BatchNorm mode used: the given one, else the method's default."""
        if self.bn is not None:
            return self.bn
        if self.method == "auto":
            return "per method"
        if "adabn" in (self.method, self.after):
            return "domain"
        first = self.first_method
        if first is not None and self.after is not None:  # an explicit first method sets the mode
            return METHOD_DEFAULTS[first]["bn"]
        return METHOD_DEFAULTS[self.method]["bn"]

    @property
    def first_method(self) -> str | None:
        """The method pseudo-labelling runs after (default: coral, whose pseudo-labels are the
        best first guesses measured). ``none``: the input model labels the first round."""
        if self.method != "pseudo-label" or self.after == "none":
            return None
        if self.after is None:
            return "adabn" if self.bn == "domain" else METHOD_DEFAULTS["pseudo-label"]["after"]
        return self.after

    def epochs_for(self, method: str) -> int:
        if method == self.method and self.epochs is not None:
            return self.epochs
        return METHOD_DEFAULTS[method]["epochs"]


# ----------------------------------------------------------------------------- fuse

DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


class FuseConfig(FrozenConfig):
    alpha: float | Literal["auto"] = Field(
        "auto", description="weight of the source model in [0, 1] (0: fine-tuned, 1: source), or auto"
    )
    alphas: tuple[float, ...] = Field(DEFAULT_ALPHAS, description="the grid auto sweeps")
    val_data: str | None = Field(None, description="labelled image folder that auto selects alpha on")
    val_images: Literal["all", "labelled"] = Field(
        "all",
        description="labelled: select on only the val_data images the fine-tuned model's --per-class run labelled "
        "(a few-label user's only target labels)",
    )
    source_data: str | None = Field(
        None,
        description="[NAME=]DIR: labelled SOURCE-domain folder, scored on its held-out test split (carved as the "
        "source model's run carved it): its curve, and what keep_source protects",
    )
    keep_source: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="auto: the alpha with the best val_data accuracy among those losing at most this much "
        "source_data accuracy against the source model (0.01 = one point)",
    )
    curve_data: dict[str, str] = Field(default_factory=dict, description="more labelled folders to draw curves for")
    class_map: dict[str, str] = Field(default_factory=dict)
    bn_reset: str | None = Field(
        None,
        description="images (labels unused) to re-estimate BatchNorm statistics on after interpolating, at every alpha",
    )
    split: Literal["all", "train", "val", "test"] = "all"
    batch_size: int = Field(64, ge=1)
    max_images: int | None = Field(None, ge=2, description="at most this many images per folder (seeded)")
    seed: int = 0
    strict: bool = False

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, value):
        if value != "auto" and not 0.0 <= float(value) <= 1.0:
            raise ValueError("alpha must be in [0, 1] (0: the fine-tuned model, 1: the source) or 'auto'")
        return value

    @field_validator("alphas")
    @classmethod
    def _grid(cls, value):
        if not value or any(not 0.0 <= a <= 1.0 for a in value):
            raise ValueError("alphas must be a non-empty list of values in [0, 1]")
        return tuple(sorted(set(float(a) for a in value)))

    @model_validator(mode="after")
    def _keep_source_needs_source_data(self):
        if self.keep_source is not None and (self.alpha != "auto" or not self.source_data):
            raise ValueError(
                "keep_source chooses alpha (--alpha auto) by the source model's accuracy on labelled source "
                "images: pass alpha auto and source_data (--source-data DIR)"
            )
        return self

    @model_validator(mode="after")
    def _auto_needs_data(self):
        if self.alpha == "auto" and not self.val_data:
            raise ValueError(
                "alpha 'auto' selects alpha on a labelled validation folder: pass val_data "
                "(--val-data DIR, from the source or the target domain — your choice)"
            )
        return self
