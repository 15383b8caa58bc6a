"""``edgexfer quantize --check``: the QAT preflight. Builds the QAT model (no data, no
training) and lists per layer what will be quantized and what stays float."""

from __future__ import annotations

from typing import Any

from edgexfer.compress import measure, stage_io
from edgexfer.compress.qat import build_qat_model, is_pruned, no_quantizable_message
from edgexfer.errors import ConfigError
from edgexfer.keras_io import load_keras_model


def check(model_dir, *, preserve_sparsity: bool | None = None) -> dict[str, Any]:
    """Preflight: build the QAT model (no data, no training) and list what will and won't
    be quantized. Never raises for an unquantizable model: the report says so."""
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
    stats = measure.weight_stats(model)
    report.update(pqat=pqat, sparsity=stats["sparsity"], params=stats["params"])
    try:
        _, described = build_qat_model(model, pqat)
        report.update(described)
        if not described["quantizable"]:
            report["error"] = no_quantizable_message(described)
    except ConfigError as exc:
        report.update(error=str(exc), layers=[], counts={}, float_layers=[], quantizable=0, whole_model=False)
    return report
