"""The Python API of the compression stages (re-exported by ``edgexfer.api``).

Each function takes the input artifact, an image folder and ``--out``, builds its config
from keyword options (the config's fields) or takes ``config=``, and returns the new
``Artifact``; bad input raises an ``EdgexferError`` subclass with a one-line message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact
from edgexfer.compress.config import DistillConfig, PruneConfig, QuantizeConfig


def _quiet(*_: Any) -> None:
    return None


def distill(
    teacher: str | Path,
    data: str | Path | None,
    out: str | Path,
    *,
    progress: bool = False,
    log=None,
    config: DistillConfig | None = None,
    **options: Any,
) -> Artifact:
    """Distill a fine-tuned teacher artifact into a student backbone (``options``: ``DistillConfig``
    fields, e.g. ``student="cnn_small", temperature=4, alpha=0.7, baseline=True``). ``data`` None:
    on the ``unlabelled`` images alone, reading no label."""
    from edgexfer.compress.distill import distill as run

    return run(teacher, data, out, config or DistillConfig.build(**options), progress=progress, log=log or _quiet)


def prune(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    progress: bool = False,
    log=None,
    config: PruneConfig | None = None,
    **options: Any,
) -> Artifact:
    """Magnitude-prune a Keras artifact while fine-tuning (``options``: ``PruneConfig`` fields, e.g.
    ``sparsity=0.5, schedule="polynomial"`` or ``structure="2:4"``)."""
    from edgexfer.compress.prune import prune as run

    return run(model, data, out, config or PruneConfig.build(**options), progress=progress, log=log or _quiet)


def quantize(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    progress: bool = False,
    log=None,
    config: QuantizeConfig | None = None,
    **options: Any,
) -> Artifact:
    """QAT (pruning-preserving on a pruned input) or PTQ settings of a Keras artifact (``options``:
    ``QuantizeConfig`` fields, e.g. ``mode="qat"`` or ``mode="ptq", type="int8", calibration_images=200``)."""
    from edgexfer.compress.quantize import quantize as run

    return run(model, data, out, config or QuantizeConfig.build(**options), progress=progress, log=log or _quiet)


def quantize_check(
    model: str | Path,
    *,
    preserve_sparsity: bool | None = None,
    img_size: int | None = None,
    width: float | None = None,
) -> dict[str, Any]:
    """Preflight of QAT before any training: per layer, what will be quantized and what stays float.

    ``model``: a Keras artifact folder, or a registered student name (``img_size`` and ``width``
    as for ``distill``'s student; default the backbone's own), which is also converted to an int8
    TFLite to count the float32 tensors the converter leaves (``report["int8_tflite"]``)."""
    from edgexfer.compress.quantize_check import check

    return check(model, preserve_sparsity=preserve_sparsity, img_size=img_size, width=width)
