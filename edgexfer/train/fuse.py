"""The fuse stage: weight-space interpolation of a source model and a fine-tuned model.

    θ = α · θ_source + (1 − α) · θ_finetuned

α is the weight of the SOURCE model: α = 0 gives the fine-tuned model unchanged, α = 1 the
source weights (on the layers the two share). Interpolating back toward the source keeps
some of its robustness to other domains (WiSE-FT, Wortsman et al. 2022) at some cost in the
fine-tuned domain; ``alpha="auto"`` sweeps α on a labelled validation folder from whichever
domain the user chooses and keeps the best, writing the curve as JSON and PNG.

The source is another artifact of the same architecture, or ``imagenet:<backbone>`` (the
pretrained backbone, e.g. the one the fine-tuned model started from). Layers are matched by
name and weight shapes. Where the source has a different head (ImageNet's 1000 classes, or
no head at all), only the shared layers are interpolated and the fine-tuned head is kept.
A backbone layer of the fine-tuned model that the source lacks or shapes differently means
the architectures differ: an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, refuse_input_as_out, writing_artifact
from edgexfer.errors import ArtifactError, ConfigError
from edgexfer.keras_io import MODEL_FILE, count_params, load_keras_model, save_keras_model
from edgexfer.provenance import recorded
from edgexfer.train.config import FuseConfig

ALPHA_MEANING = (
    "theta = alpha * theta_source + (1 - alpha) * theta_finetuned: alpha is the weight of the "
    "source model; 0 keeps the fine-tuned model, 1 takes the source weights (shared layers only; "
    "the fine-tuned head is kept where the source's differs)"
)
CURVE_JSON = "alpha_curve.json"
CURVE_PNG = "alpha_curve.png"


def load_source_model(source: str | Path, finetuned: Artifact):
    """The source model and a description of it: an artifact directory, or
    ``imagenet[:<backbone>]`` (the pretrained backbone at the fine-tuned model's input size)."""
    text = str(source)
    if text == "imagenet" or text.startswith("imagenet:"):
        from edgexfer.backbones.registry import create_backbone

        name = text.split(":", 1)[1] if ":" in text else finetuned.manifest.backbone
        model = create_backbone(name, finetuned.manifest.preprocessing.input_size, "imagenet")
        return model, {"kind": "pretrained", "spec": f"imagenet:{name}", "backbone": name}
    artifact = Artifact(source)
    return load_keras_model(artifact.model_path), {"kind": "artifact", **artifact.parent_ref()}


def match_layers(source_model, finetuned_model) -> tuple[list[str], list[str]]:
    """``(shared, kept)``: the fine-tuned model's weighted layers the source has by name and
    weight shapes, and the head layers kept from the fine-tuned model. ``ConfigError`` when a
    layer below the head differs: the two are not the same architecture."""
    from edgexfer.train.batchnorm import find_features_layer

    by_name = {layer.name: layer for layer in source_model.layers}
    names = [layer.name for layer in finetuned_model.layers]
    head_start = names.index(find_features_layer(finetuned_model).name) + 1
    shared, kept, differing = [], [], []
    for index, layer in enumerate(finetuned_model.layers):
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        same = other is not None and [tuple(w.shape) for w in other.weights] == [tuple(w.shape) for w in layer.weights]
        if same:
            shared.append(layer.name)
        elif index >= head_start:
            kept.append(layer.name)
        else:
            found = (
                "missing"
                if other is None
                else (f"weights {[tuple(w.shape) for w in other.weights]} vs {[tuple(w.shape) for w in layer.weights]}")
            )
            differing.append(f"{layer.name} ({found})")
    if differing:
        raise ConfigError(
            f"fuse needs two models of the same architecture; the first layer that differs is {differing[0]} "
            f"({len(differing)} backbone layer(s) of the fine-tuned model differ in the source"
            f"{': ' + '; '.join(differing[1:4]) if len(differing) > 1 else ''}{' …' if len(differing) > 4 else ''}). "
            "Fuse a model with the source it was fine-tuned from (same backbone, e.g. imagenet:<backbone>)"
        )
    if not shared:
        raise ConfigError("the source and fine-tuned models share no layer: nothing to interpolate")
    return shared, kept


class Interpolator:
    """Sets a model's shared layers to ``alpha * source + (1 - alpha) * finetuned``."""

    def __init__(self, source_model, finetuned_model, shared: list[str]):
        self.model = finetuned_model
        self.layers = [finetuned_model.get_layer(name) for name in shared]
        self.source = [[np.asarray(w) for w in source_model.get_layer(name).get_weights()] for name in shared]
        self.finetuned = [[np.asarray(w) for w in layer.get_weights()] for layer in self.layers]

    def set(self, alpha: float) -> None:
        for layer, src, ft in zip(self.layers, self.source, self.finetuned):
            layer.set_weights([(alpha * s + (1.0 - alpha) * f).astype(f.dtype) for s, f in zip(src, ft)])


def fuse(
    source: str | Path,
    finetuned: str | Path,
    out: str | Path,
    alpha: float | str | None = None,
    *,
    log: Callable[..., Any] | None = None,
    progress: bool = False,
    config: FuseConfig | None = None,
    **options: Any,
) -> Artifact:
    """Interpolate ``source`` (an artifact, or ``imagenet:<backbone>``) and the ``finetuned``
    artifact: θ = α·θ_source + (1−α)·θ_finetuned (α = 0: fine-tuned, 1: source; shared layers
    only, the fine-tuned head is kept where the source's differs). ``alpha="auto"`` sweeps
    ``alphas`` on ``val_data`` (``"[NAME=]DIR"``, labelled, from either domain) and writes the
    curve (``alpha_curve.json``/``.png``, also for ``curve_data={name: dir}``).
    ``options`` are :class:`FuseConfig` fields."""
    from edgexfer.data.class_map import parse_class_map

    if config is None:
        if "class_map" in options and not isinstance(options["class_map"], dict):
            options["class_map"] = parse_class_map(options["class_map"])
        if alpha is not None:
            options["alpha"] = alpha
        config = FuseConfig.build(**options)
    elif alpha is not None or options:
        raise ConfigError("pass either config=FuseConfig(...) or alpha/options, not both")
    return run_fuse(source, finetuned, out, config, log=log or (lambda *_: None), progress=progress)


@recorded  # the call is stored in the artifact's manifest (edgexfer reproduce)
def run_fuse(
    source: str | Path,
    finetuned: str | Path,
    out: str | Path,
    config: FuseConfig,
    *,
    log: Callable[..., Any] = print,
    progress: bool = False,
) -> Artifact:
    """The fuse stage with a built config (see :func:`fuse`)."""
    started = time.perf_counter()
    target_artifact = Artifact(finetuned)
    refuse_input_as_out(out, target_artifact, str(source))
    manifest = target_artifact.manifest
    source_model, source_info = load_source_model(source, target_artifact)
    model = load_keras_model(target_artifact.model_path)
    shared, kept = match_layers(source_model, model)
    if source_info["kind"] == "artifact":
        unrelated = lineage_warning(Artifact(source), target_artifact)
        if unrelated:  # a warning (the CLI shows it on stderr), not an error
            import logging

            logging.getLogger(__name__).warning(unrelated)
    if kept:
        log(
            f"the source has a different head: {len(shared)} shared layers interpolated, the fine-tuned "
            f"{', '.join(kept)} kept"
        )
    interpolator = Interpolator(source_model, model, shared)
    datasets = _load_datasets(
        config,
        manifest,
        finetuned=target_artifact,
        source_artifact=Artifact(source) if source_info["kind"] == "artifact" else None,
    )
    reference = _source_reference(source_model, source_info, manifest, config, datasets)
    del source_model
    reset = _BatchNormReset(model, config, manifest) if config.bn_reset else None
    if reset is not None:
        log(f"BatchNorm statistics re-estimated on {len(reset.images)} images of {config.bn_reset} at every alpha")

    curves: dict[str, list[float]] = {}
    selection = next(iter(datasets), None) if config.val_data else None
    if config.alpha == "auto":
        alphas = list(config.alphas)
    else:
        alphas = sorted({0.0, 1.0, float(config.alpha)}) if datasets else []
    from edgexfer.data import data_errors

    with data_errors():
        for alpha in alphas:
            interpolator.set(alpha)
            if reset is not None:
                reset()
            for name, (images, labels) in datasets.items():
                probs = model.predict(images, batch_size=config.batch_size, verbose=0)
                curves.setdefault(name, []).append(float((probs.argmax(1) == labels).mean()))
            if datasets:
                log(f"  alpha {alpha:.2f}: " + ", ".join(f"{n} {c[-1]:.4f}" for n, c in curves.items()))
    rule = None
    if config.alpha == "auto" and config.keep_source is not None:
        alpha, rule = choose_keeping_source(
            alphas, curves[selection], curves[_source_name(config)], reference, config.keep_source
        )
        log(f"  {rule['rule']}: alpha {alpha:g}")
    elif config.alpha == "auto":
        scores = curves[selection]
        best = max(scores)
        # Ties go to the smallest alpha: the model closest to the fine-tuned one.
        alpha = alphas[min(i for i, s in enumerate(scores) if s >= best - 1e-12)]
        rule = {"rule": f"best {selection} accuracy"}
    else:
        alpha = float(config.alpha)
    interpolator.set(alpha)
    if reset is not None:
        reset()

    with writing_artifact(out) as writer:
        save_keras_model(model, writer.file(MODEL_FILE))
        metrics: dict[str, Any] = {
            "alpha": alpha,
            "alpha_meaning": ALPHA_MEANING,
            "interpolated_layers": len(shared),
            "kept_from_finetuned": kept,
            "bn_reset": config.bn_reset,
            "params": count_params(model),
            "model_bytes": writer.file(MODEL_FILE).stat().st_size,
        }
        if curves:
            at = {
                name: {f"alpha={a:g}": acc for a, acc in zip(alphas, accs) if a in (0.0, 1.0, alpha)}
                for name, accs in curves.items()
            }
            metrics["accuracy"] = {name: accs[alphas.index(alpha)] for name, accs in curves.items()}
            metrics["accuracy_at"] = at
            curve = {
                "alpha_meaning": ALPHA_MEANING,
                "alphas": alphas,
                "curves": curves,
                "selected_on": selection,
                "chosen_alpha": alpha,
                "rule": rule,
                "data": {name: str(path) for name, path in _named_data(config).items()},
            }
            writer.write_json(CURVE_JSON, curve)
            _plot_curve(curve, writer.file(CURVE_PNG))
            metrics["curve_json"], metrics["curve_png"] = CURVE_JSON, CURVE_PNG
            metrics["curve"] = {"alphas": alphas, **curves}
            metrics["rule"] = rule
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        child = target_artifact.child_manifest(
            "fuse",
            config.model_dump(),
            MODEL_FILE,
            extra={
                **manifest.extra,
                "fuse": {
                    "alpha": alpha,
                    "alpha_meaning": ALPHA_MEANING,
                    "source": source_info,
                    "interpolated_layers": len(shared),
                    "kept_from_finetuned": kept,
                },
            },
        )
        return writer.commit(child, metrics)


class _BatchNormReset:
    """Re-estimates every BatchNorm's statistics on ``config.bn_reset`` images (labels unused).

    Interpolating two models whose BN statistics differ (an adapted model carries target
    statistics, its source model ImageNet ones) averages statistics that neither set of
    weights was fitted under; re-estimating them after interpolating (as AdaBN does, and
    REPAIR for model merging) keeps the interpolated model's activations normalised."""

    def __init__(self, model, config: FuseConfig, manifest):
        from edgexfer.data import Sample, load_arrays
        from edgexfer.data.class_map import scan_unlabelled
        from edgexfer.train.batchnorm import BatchNormStats, batchnorm_layers

        found = scan_unlabelled(config.bn_reset, strict=config.strict)
        paths = found.paths
        if config.max_images and len(paths) > config.max_images:
            order = np.random.default_rng(config.seed).permutation(len(paths))[: config.max_images]
            paths = [paths[i] for i in sorted(order)]
        pixels, _ = load_arrays([Sample(p, -1) for p in paths], manifest.preprocessing)
        mean = np.asarray(manifest.preprocessing.mean, np.float32)
        std = np.asarray(manifest.preprocessing.std, np.float32)
        self.images = (pixels.astype(np.float32) - mean) / std
        self.batch = max(config.batch_size, 128)
        layers = batchnorm_layers(model)
        if not layers:
            raise ConfigError("--bn-reset: the model has no BatchNorm layer to re-estimate")
        self.stats = BatchNormStats(model, layers, [layer.input for layer in layers], self.batch)

    def __call__(self) -> None:
        batches = (self.images[i : i + self.batch] for i in range(0, len(self.images), self.batch))
        self.stats.assign(self.stats.estimate(batches))


def _named_data(config: FuseConfig) -> dict[str, str]:
    """``name → folder`` of the validation folder (first) and the curve folders."""
    from edgexfer.evaluate.domains import parse_domain

    named: dict[str, str] = {}
    if config.val_data:
        name, path = parse_domain(config.val_data)
        named[name] = path
    if config.source_data:
        name, path = parse_domain(config.source_data)
        if name in named:
            raise ConfigError(f"data name {name!r} is used twice; give each folder its own NAME (NAME=DIR)")
        named[name] = path
    for name, path in config.curve_data.items():
        if name in named:
            raise ConfigError(f"data name {name!r} is used twice; give each folder its own NAME (NAME=DIR)")
        named[name] = path
    return named


def _source_name(config: FuseConfig) -> str:
    from edgexfer.evaluate.domains import parse_domain

    return parse_domain(config.source_data)[0]


def _source_reference(source_model, source_info: dict, manifest, config: FuseConfig, datasets) -> float | None:
    """With ``keep_source``: the source model's own accuracy on ``source_data`` (what the
    fused model may lose at most ``keep_source`` of)."""
    if config.keep_source is None:
        return None
    if source_info["kind"] != "artifact" or list(Artifact(source_info["path"]).manifest.label_names) != list(
        manifest.label_names
    ):
        raise ConfigError(
            "--keep-source compares with the source model's own source accuracy: the source must be a classifier "
            "artifact with the fine-tuned model's classes (not imagenet:<backbone> or another label set)"
        )
    images, labels = datasets[_source_name(config)]
    probs = source_model.predict(images, batch_size=config.batch_size, verbose=0)
    return float((probs.argmax(1) == labels).mean())


def choose_keeping_source(
    alphas: list[float], target: list[float], source: list[float], reference: float, keep_source: float
) -> tuple[float, dict]:
    """The alpha with the best ``target`` accuracy among those whose ``source`` accuracy is at
    least ``reference - keep_source`` (ties: the smallest alpha); ``ConfigError`` when none is."""
    floor = reference - keep_source
    allowed = [i for i, acc in enumerate(source) if acc >= floor - 1e-12]
    rule = (
        f"best target accuracy losing at most {keep_source:g} source accuracy "
        f"(source model {reference:.4f}, floor {floor:.4f})"
    )
    if not allowed:
        raise ConfigError(
            f"--keep-source {keep_source:g}: no alpha keeps source accuracy ≥ {floor:.4f} (the source model's "
            f"{reference:.4f} minus {keep_source:g}; best on the grid {max(source):.4f}); allow a larger loss "
            "or add alphas nearer 1"
        )
    best = max(target[i] for i in allowed)
    index = min(i for i in allowed if target[i] >= best - 1e-12)
    return alphas[index], {
        "rule": rule,
        "keep_source": keep_source,
        "source_model_accuracy": reference,
        "source_floor": floor,
        "allowed_alphas": [alphas[i] for i in allowed],
    }


def lineage_warning(source: Artifact, finetuned: Artifact) -> str | None:
    """A sentence when neither model descends from the other (by the model sha256s in their
    manifests' parent chains), else None: interpolating unrelated models rarely helps."""

    def chain(artifact: Artifact) -> set[str]:
        digests = {artifact.parent_ref()["sha256"]}
        for member in artifact.lineage():
            if member.manifest.parent and member.manifest.parent.get("sha256"):
                digests.add(member.manifest.parent["sha256"])
        return digests

    source_sha = source.parent_ref()["sha256"]
    finetuned_sha = finetuned.parent_ref()["sha256"]
    if source_sha in chain(finetuned) or finetuned_sha in chain(source):
        return None
    return (
        f"{str(finetuned.path)!r} does not descend from {str(source.path)!r} (no shared lineage in their "
        "manifests): interpolating unrelated weights rarely helps; fuse a model with the one it was fine-tuned "
        "from (finetune --init)"
    )


def _load_datasets(
    config: FuseConfig, manifest, *, finetuned: Artifact | None = None, source_artifact: Artifact | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name → (preprocessed float32 images, labels)`` of the validation and curve folders.

    ``source_data`` is scored on its held-out test split, carved as the source model's run
    carved its training data (``evaluate.splits.scan_domain``); with ``val_images="labelled"``
    the validation folder is cut down to the images ``finetuned``'s ``--per-class`` run labelled."""
    from edgexfer.data import load_arrays
    from edgexfer.data.class_map import check_map_used, scan_labelled

    named = _named_data(config)
    result = {}
    folder_classes: set[str] = set()
    mean = np.asarray(manifest.preprocessing.mean, np.float32)
    std = np.asarray(manifest.preprocessing.std, np.float32)
    source_name = _source_name(config) if config.source_data else None
    selection = next(iter(named), None) if config.val_data else None
    for name, path in named.items():
        if name == source_name:
            from edgexfer.evaluate.splits import scan_domain

            held_out = scan_domain(
                source_artifact or finetuned, path, class_map=config.class_map or None, strict=config.strict
            )
            folder_classes.update(held_out.folder_class_names)
            images, labels = load_arrays(list(held_out.split("test")), manifest.preprocessing)
            result[name] = (((images.astype(np.float32) - mean) / std), labels)
            continue
        dataset = scan_labelled(
            path,
            manifest.label_names,
            config.class_map,
            seed=manifest.seed or 0,
            strict=config.strict,
            strict_keys=False,
        )
        folder_classes.update(dataset.folder_class_names)
        splits = ("train", "val", "test") if config.split == "all" else (config.split,)
        samples = [s for split in splits for s in dataset.split(split)]
        if name == selection and config.val_images == "labelled":
            samples = _labelled_only(samples, finetuned, path)
        if config.max_images and len(samples) > config.max_images:
            order = np.random.default_rng(config.seed).permutation(len(samples))[: config.max_images]
            samples = [samples[i] for i in sorted(order)]
        images, labels = load_arrays(samples, manifest.preprocessing)
        result[name] = (((images.astype(np.float32) - mean) / std), labels)
    if named:
        check_map_used(config.class_map, folder_classes)
    return result


def _labelled_only(samples: list, finetuned: Artifact | None, folder: str) -> list:
    """The ``samples`` that ``finetuned``'s ``--per-class`` run trained on (by path in the folder)."""
    few = (finetuned.metrics if finetuned is not None else {}).get("few_labels") or {}
    if not few.get("labelled_files"):
        raise ConfigError(
            "val_images 'labelled' selects on the images a finetune --per-class run labelled, and the fine-tuned "
            "artifact records none; pass val_images all with a labelled validation folder"
        )
    wanted = set(few["labelled_files"])
    root = Path(folder).resolve()
    kept = [s for s in samples if Path(s.path).resolve().relative_to(root).as_posix() in wanted]
    if not kept:
        raise ConfigError(
            f"val_data {folder!r} holds none of the {len(wanted)} images the fine-tuned model was trained on; "
            "pass the folder it was fine-tuned on"
        )
    return kept


def _plot_curve(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curve["curves"].items():
        ax.plot(
            curve["alphas"], values, marker="o", label=name + (" (selection)" if name == curve["selected_on"] else "")
        )
    ax.axvline(
        curve["chosen_alpha"],
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"chosen alpha = {curve['chosen_alpha']:g}",
    )
    ax.set_xlabel("alpha  (0: fine-tuned  →  1: source)")
    ax.set_ylabel("accuracy")
    ax.set_title("θ = α·θ_source + (1−α)·θ_finetuned")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_curve(artifact: str | Path) -> dict:
    path = Path(artifact) / CURVE_JSON
    if not path.is_file():
        raise ArtifactError(f"{str(artifact)!r} has no {CURVE_JSON}; run fuse with --alpha auto or --val-data")
    return json.loads(path.read_text())
