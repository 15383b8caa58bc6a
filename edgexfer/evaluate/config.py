"""The check stage's config: one frozen model for the CLI's flags and a pipeline's ``check:``
keys, validated on construction with the messages the CLI has always printed."""

from __future__ import annotations

from pydantic import Field, model_validator

from edgexfer.config import FrozenConfig
from edgexfer.errors import ConfigError
from edgexfer.evaluate.parity import check_thresholds

SPLITS = ("all", "train", "val", "test")


class CheckConfig(FrozenConfig):
    """Which images a check scores, its gate, and whether it times the models."""

    split: str = Field("all", description="all | train | val | test of the folder (all for a test folder)")
    min_agreement: float | None = Field(None, strict=True, description="gate: least top-1 agreement, e.g. 0.99")
    max_acc_drop: float | None = Field(None, strict=True, description="gate: most accuracy lost, e.g. 0.01")
    max_images: int | None = Field(None, description="check on a stratified subset")
    batch_size: int = Field(64, description="images per inference batch")
    strict: bool = False
    measure_latency: bool = True

    @model_validator(mode="after")
    def _in_range(self):
        if self.split not in SPLITS:
            raise ConfigError(f"--split {self.split!r} is not a split; allowed: {', '.join(SPLITS)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"--max-images must be at least 1, got {self.max_images}")
        check_thresholds(self.min_agreement, self.max_acc_drop)
        return self

    @property
    def gated(self) -> bool:
        return self.min_agreement is not None or self.max_acc_drop is not None
