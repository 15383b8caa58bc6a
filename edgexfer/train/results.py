"""Typed results of the cross-domain stages (``adapt``, ``fuse``), read from the artifact each
wrote: what a renderer (the CLI) reads instead of ``metrics.json``'s keys, so those keys are
named in one place, next to the stages that write them, and a renamed key fails here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact


@dataclass(frozen=True)
class AdaptResult:
    path: Path
    method: str  # adabn | coral | dann | pseudo-label | shot | auto
    picked: str | None  # auto: the method it kept
    after: str | None  # pseudo-label: the method it ran first
    bn: str  # the BatchNorm mode used
    source_val_accuracy_input: float | None  # None: source-free (shot read no source image)
    source_val_accuracy: float | None
    source_stats_source_val_accuracy: float | None
    target_mean_confidence: float | None  # no target label is read
    target_confident_fraction: float | None
    source_train_images: int
    source_val_images: int
    target_images: int
    seconds: float
    auto_reason: str | None
    source_free: bool

    @classmethod
    def of(cls, artifact: Artifact) -> AdaptResult:
        m = artifact.metrics
        images, output = m["images"], m["output"]
        return cls(
            path=artifact.path,
            method=m["method"],
            picked=m.get("picked"),
            after=m.get("after"),
            bn=m["bn"],
            source_val_accuracy_input=m["input"]["source_val_accuracy"],
            source_val_accuracy=m["source_val_accuracy"],
            source_stats_source_val_accuracy=m["source_stats_source_val_accuracy"],
            target_mean_confidence=output.get("target_mean_confidence"),
            target_confident_fraction=output.get("target_confident_fraction"),
            source_train_images=images["source_train"],
            source_val_images=images["source_val"],
            target_images=images["target"],
            seconds=m["timings_seconds"]["total_seconds"],
            auto_reason=(m.get("auto") or {}).get("reason"),
            source_free=bool(m.get("source_free")),
        )


@dataclass(frozen=True)
class AlphaCurve:
    """Accuracy against α per labelled folder (``alpha_curve.json``)."""

    alphas: list[float]
    curves: dict[str, list[float]]  # folder name → accuracy at each α
    selected_on: str  # the folder α was chosen on
    rule: str | None  # how α was chosen
    json_path: Path
    png_path: Path


@dataclass(frozen=True)
class FuseResult:
    path: Path
    alpha: float
    interpolated_layers: int
    kept_from_finetuned: list[str]  # head layers the source lacks, kept from the fine-tuned model
    curve: AlphaCurve | None  # alpha auto, or folders to draw curves on

    @classmethod
    def of(cls, artifact: Artifact) -> FuseResult:
        m = artifact.metrics
        curve = None
        if m.get("curve_json"):
            data: dict[str, Any] = json.loads((artifact.path / m["curve_json"]).read_text())
            curve = AlphaCurve(
                alphas=data["alphas"],
                curves=data["curves"],
                selected_on=data["selected_on"],
                rule=(data.get("rule") or {}).get("rule"),
                json_path=artifact.path / m["curve_json"],
                png_path=artifact.path / m["curve_png"],
            )
        return cls(
            path=artifact.path,
            alpha=m["alpha"],
            interpolated_layers=m["interpolated_layers"],
            kept_from_finetuned=m["kept_from_finetuned"],
            curve=curve,
        )
