"""The stage types a pipeline file may name: how each calls its stage function, which of its
keys name earlier stages or datasets, and which frozen config model validates the rest.

A stage's YAML keys are its config model's fields (plus its reference keys), so a new
config field is a new YAML key with nothing else to edit here.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgexfer.config import FrozenConfig, did_you_mean
from edgexfer.errors import ConfigError
from edgexfer.tempfiles import write_text_atomically


@dataclass(frozen=True)
class StageType:
    """How a pipeline stage calls the API: which keys name stages or data, which config model
    validates the rest, and how to run."""

    name: str
    run: Callable[..., Any]
    config: str  # dotted path of the stage's frozen config model, imported when first needed
    stage_keys: tuple[str, ...] = ()  # keys whose value is an earlier stage's name
    stage_list_keys: tuple[str, ...] = ()  # keys whose value is a list of stage names
    data_keys: tuple[str, ...] = ()  # keys whose value is a dataset name or a folder
    data_map_keys: tuple[str, ...] = ()  # keys whose value lists datasets (or maps NAME: folder)
    required: tuple[str, ...] = ()
    internal: tuple[str, ...] = ()  # options the loader sets itself (not config fields)
    # A check of the built config against the data references given (``refs``: a stand-in per
    # data key present), e.g. evaluate's split per domain.
    check: Callable[[FrozenConfig, dict], None] | None = None
    writes_artifact: bool = True
    summary: str = ""

    @property
    def reference_keys(self) -> tuple[str, ...]:
        return self.stage_keys + self.stage_list_keys + self.data_keys + self.data_map_keys

    def config_model(self) -> type[FrozenConfig]:
        module, name = self.config.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)

    def validate(self, options: Mapping[str, Any], stand_ins: Mapping[str, Any]) -> FrozenConfig:
        """Build the stage's config from its options; ``stand_ins`` hold a placeholder for each
        data reference (a path only at run time), validated where the config declares it."""
        model = self.config_model()
        for key in options:
            if key not in model.model_fields and key not in self.internal:
                known = [*model.model_fields, *self.reference_keys]
                raise ConfigError(f"{model.__name__}: unknown option {key!r}{did_you_mean(key, known)}")
        values = {key: value for key, value in options.items() if key not in self.internal}
        values.update({key: value for key, value in stand_ins.items() if key in model.model_fields})
        config = model.build(**values)
        if self.check is not None:
            self.check(config, dict(stand_ins))
        return config


def _finetune(refs, options, out, ctx):
    from edgexfer.config import FinetuneConfig
    from edgexfer.train.finetune import finetune

    # init (an earlier stage) and unlabelled (a dataset) are references: the config takes their paths.
    options = {**options, **{key: str(refs[key]) for key in ("init", "unlabelled") if refs.get(key)}}
    return finetune(refs["data"], out, FinetuneConfig.build(**options), progress=ctx.progress, log=ctx.log)


def _adapt(refs, options, out, ctx):
    from edgexfer.train.adapt import adapt

    source = refs.get("source")  # absent for the source-free method (shot)
    return adapt(refs["parent"], source, refs["target"], out, progress=ctx.progress, log=ctx.log, **options)


def _fuse(refs, options, out, ctx):
    from edgexfer.train.fuse import fuse

    source = refs.get("source_model") or options.pop("source_model_spec")
    extra = {key: refs[key] for key in ("val_data", "source_data", "curve_data") if refs.get(key)}
    return fuse(source, refs["finetuned"], out, progress=ctx.progress, log=ctx.log, **extra, **options)


def _with_unlabelled(refs, options) -> dict:
    """The ``unlabelled`` reference (a dataset) as the path the compression configs take."""
    return {**options, "unlabelled": str(refs["unlabelled"])} if refs.get("unlabelled") else options


def _distill(refs, options, out, ctx):
    from edgexfer.compress import api as compress

    options = _with_unlabelled(refs, options)
    return compress.distill(refs["teacher"], refs.get("data"), out, progress=ctx.progress, log=ctx.log, **options)


def _check_distill_data(config, refs: dict) -> None:
    """Without ``data`` distill learns from ``unlabelled`` alone, and options that need labels are refused."""
    from edgexfer.compress.distill import label_free_problem

    problem = None if "data" in refs else label_free_problem(config, has_unlabelled="unlabelled" in refs)
    if problem:
        raise ConfigError(problem)


def _prune(refs, options, out, ctx):
    from edgexfer.compress import api as compress

    options = _with_unlabelled(refs, options)
    return compress.prune(refs["parent"], refs["data"], out, progress=ctx.progress, log=ctx.log, **options)


def _quantize(refs, options, out, ctx):
    from edgexfer.compress import api as compress

    options = _with_unlabelled(refs, options)
    return compress.quantize(refs["parent"], refs["data"], out, progress=ctx.progress, log=ctx.log, **options)


def _export(refs, options, out, ctx):
    from edgexfer.export.stage import export_stage

    options = dict(options)
    fmt = options.pop("format")
    return export_stage(
        refs["parent"],
        out,
        fmt,
        options.pop("quant", None),
        calibration_data=refs.get("calibration_data"),
        log=ctx.log,
        **options,
    )


def _check(refs, options, out, ctx):
    from edgexfer.evaluate.check import check_artifacts, gate_error

    result = check_artifacts(refs["artifacts"], refs["data"], out=out, log=ctx.log, **options)
    error = gate_error(result)
    if error is not None:
        raise error
    return result


def _evaluate(refs, options, out, ctx):
    from edgexfer.evaluate.domains import evaluate_domains

    domains = refs["domains"]
    try:
        result = evaluate_domains(refs["parent"], domains, **options)
    except ConfigError as exc:
        raise ConfigError(f"stage {out.name!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "evaluate.json", json.dumps(result, indent=2) + "\n")
    return result


def _check_adapt_source(config, refs: dict) -> None:
    from edgexfer.train.adapt import source_problem

    problem = source_problem(config.method, "source" in refs)
    if problem:
        raise ConfigError(problem)


def _check_evaluate_split(config, refs: dict) -> None:
    from edgexfer.evaluate.splits import resolve_splits

    resolve_splits(config.split, refs.get("domains", {}), where="split")


# The data keys whose labels a stage trains on (or selects on); the others (adapt's target,
# distill's, prune's and quantize's unlabelled, export's calibration_data) read images only.
LABELLED_DATA_KEYS = {
    "finetune": ("data",),
    "adapt": ("source",),
    "fuse": ("val_data", "source_data"),
    "distill": ("data",),
    "prune": ("data",),
    "quantize": ("data",),
}


STAGE_TYPES: dict[str, StageType] = {
    stage.name: stage
    for stage in (
        StageType(
            "finetune",
            _finetune,
            "edgexfer.config.FinetuneConfig",
            stage_keys=("init",),
            data_keys=("data", "unlabelled"),
            required=("data",),
            summary="fine-tune a pretrained backbone on an image folder",
        ),
        StageType(
            "adapt",
            _adapt,
            "edgexfer.train.config.AdaptConfig",
            stage_keys=("parent",),
            data_keys=("source", "target"),
            required=("parent", "target"),  # source: every method but shot (_check_adapt_source)
            check=_check_adapt_source,
            summary="unsupervised domain adaptation to unlabelled target images",
        ),
        StageType(
            "fuse",
            _fuse,
            "edgexfer.train.config.FuseConfig",
            stage_keys=("source_model", "finetuned"),
            data_keys=("val_data", "source_data"),
            data_map_keys=("curve_data",),
            required=("finetuned",),
            internal=("source_model_spec",),
            summary="weight-space interpolation of a source and a fine-tuned model",
        ),
        StageType(
            "distill",
            _distill,
            "edgexfer.compress.config.DistillConfig",
            stage_keys=("teacher",),
            data_keys=("data", "unlabelled"),
            required=("teacher",),  # data, or unlabelled alone (_check_distill_data)
            check=_check_distill_data,
            summary="knowledge distillation into a student",
        ),
        StageType(
            "prune",
            _prune,
            "edgexfer.compress.config.PruneConfig",
            stage_keys=("parent",),
            data_keys=("data", "unlabelled"),
            required=("parent", "data"),
            summary="magnitude pruning while fine-tuning",
        ),
        StageType(
            "quantize",
            _quantize,
            "edgexfer.compress.config.QuantizeConfig",
            stage_keys=("parent",),
            data_keys=("data", "unlabelled"),
            required=("parent", "data"),
            summary="QAT or PTQ settings",
        ),
        StageType(
            "export",
            _export,
            "edgexfer.export.config.ExportConfig",
            stage_keys=("parent",),
            data_keys=("calibration_data",),
            required=("parent",),
            summary="TFLite / ONNX / SavedModel with labels and preprocessing inside",
        ),
        StageType(
            "check",
            _check,
            "edgexfer.evaluate.config.CheckConfig",
            stage_list_keys=("artifacts",),
            data_keys=("data",),
            required=("artifacts", "data"),
            writes_artifact=False,
            summary="parity with the Keras parent, size and latency",
        ),
        StageType(
            "evaluate",
            _evaluate,
            "edgexfer.config.EvaluateDomainsConfig",
            stage_keys=("parent",),
            data_map_keys=("domains",),
            required=("parent", "domains"),
            check=_check_evaluate_split,
            writes_artifact=False,
            summary="accuracy on several domains and the gap",
        ),
    )
}
