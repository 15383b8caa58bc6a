"""The adapt stage: unsupervised domain adaptation of a classifier artifact to a target domain.

``adapt`` reads labelled SOURCE images (the domain the model was trained on) and TARGET
images whose labels, if the folder has any, are never read. Methods:

- ``adabn`` (Li et al. 2016): every BatchNorm's statistics re-estimated on target images.
- ``coral`` (Deep CORAL, Sun & Saenko 2016): cross-entropy on the labelled source plus a
  CORAL loss aligning the covariances of source and target penultimate features.
- ``dann`` (Ganin et al. 2016): a domain classifier on the penultimate features behind a
  gradient-reversal layer; the features learn to fool it while classifying the source.
- ``pseudo-label`` (self-training): rounds of training on target images whose prediction is
  at least ``threshold`` confident, with their predicted labels, beside the labelled
  source; optionally after another method (``after``).
- ``shot`` (Liang et al. 2020), SOURCE-FREE: reads no source image (``source`` must be
  ``None``; giving one is refused so the artifact's "no source images" is true). The classifier
  head is frozen; the feature layers learn information maximisation plus pseudo-labels from
  class centroids on the target images (``edgexfer.train.shot``).
- ``auto``: runs adabn, coral, dann, pseudo-label and shot with their defaults and keeps the
  one whose target predictions agree most with the consensus of all of them (unlabelled target
  statistics only); metrics record every candidate's scores and why (``edgexfer.train.auto``).

BatchNorm statistics. In tf_keras a BN layer with ``trainable=False`` runs in inference
mode even when called with ``training=True``, and ``finetune`` keeps BN frozen: a fine-tuned
model carries its *pretraining* (ImageNet) statistics, which its weights were fitted under.
Swapping them for target statistics (a naive AdaBN) puts weights that never saw source
statistics under target statistics (measured: uci-digits 34.6 % → 16.3 %). So with
``bn="domain"`` the statistics are estimated per domain (PreciseBN: batch moments averaged
over the whole domain): the trained layers see SOURCE statistics on source batches and
TARGET statistics on target batches, and the written model carries the target statistics
(or the source ones with ``output_stats="source"``: the source-statistics baseline). AdaBN
with ``epochs > 0`` first re-fits the trained layers on the source under source statistics,
then swaps in the target statistics; with ``epochs=0`` it is the paper's pure re-estimation,
right for a model whose statistics already are source statistics. ``bn="frozen"`` keeps the
model's own statistics everywhere (the method alone). Defaults per method, measured on
mnist-5k → uci-digits (EfficientNet-Lite0, 64 px, 3 seeds): coral and pseudo-label frozen
(CORAL: 85.8 % frozen vs 71.1 % per-domain, and its int8 export keeps the accuracy, while
models carrying uci statistics lost up to 3.5 points in int8), adabn and dann per-domain
(DANN with frozen statistics collapsed to one class on the target).

Speed: only the top ``train_layers`` weighted layers and the head are trained, everything
below them is frozen, so the frozen part runs once per image (its output is cached, like
``finetune``'s feature cache) and each epoch costs only the top of the network.

The written model has exactly the input model's architecture (layer names, weight shapes);
the domain classifier of DANN is a training-only head and is dropped.

Interrupted runs resume: every completed epoch (of each method and each pseudo-label round) is
checkpointed (``edgexfer.train.resume``: weights, optimizer state, per-domain statistics, the
round's pseudo-labels, the history so far) and re-running the same command continues after it.
Every shuffle and Dropout mask of an epoch is drawn from (seed, training unit, epoch), so the
resumed run gives the same model as an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact, refuse_input_as_out, writing_artifact
from edgexfer.data.subset import random_subset
from edgexfer.errors import ConfigError
from edgexfer.keras_io import MODEL_FILE, load_keras_model, save_keras_model
from edgexfer.provenance import recorded
from edgexfer.train.adapt_loop import Adapter
from edgexfer.train.adapt_record import adapted_manifest, adapted_metrics
from edgexfer.train.config import SOURCE_FREE_METHODS, AdaptConfig
from edgexfer.train.resume import StageCheckpoint


def adapt(
    model: str | Path,
    source: str | Path | None,
    target: str | Path,
    out: str | Path,
    method: str | None = None,
    *,
    progress: bool = False,
    log: Callable[..., Any] | None = None,
    config: AdaptConfig | None = None,
    **options: Any,
) -> Artifact:
    """Adapt the Keras artifact ``model`` from the labelled ``source`` image folder to the
    ``target`` images (a folder of images, or an image folder whose labels are ignored) and
    write the adapted artifact at ``out``. ``method``: adabn | coral | dann | pseudo-label |
    shot (source-free: ``source`` must be ``None``) | auto;
    ``options`` are :class:`AdaptConfig` fields (``class_map`` may be ``"a=x,b=y"``)."""
    from edgexfer.data.class_map import parse_class_map

    if config is None:
        if "class_map" in options and not isinstance(options["class_map"], dict):
            options["class_map"] = parse_class_map(options["class_map"])
        config = AdaptConfig.build(**({"method": method} if method else {}), **options)
    elif method is not None and method != config.method or options:
        raise ConfigError("pass either config=AdaptConfig(...) or method/options, not both")
    return run_adapt(model, source, target, out, config, progress=progress, log=log or (lambda *_: None))


@recorded  # the call is stored in the artifact's manifest (edgexfer reproduce)
def run_adapt(
    model_dir: str | Path,
    source: str | Path | None,
    target: str | Path,
    out: str | Path,
    config: AdaptConfig,
    *,
    progress: bool = False,
    log: Callable[..., Any] = print,
) -> Artifact:
    """The adapt stage with a built config (see :func:`adapt`)."""
    from edgexfer.data.class_map import scan_labelled, scan_unlabelled

    problem = source_problem(config.method, source is not None)
    if problem:
        raise ConfigError(problem)
    if config.method in SOURCE_FREE_METHODS:
        from edgexfer.train.shot import run_shot

        return run_shot(model_dir, target, out, config, progress=progress, log=log)
    if config.method == "auto":
        from edgexfer.train.auto import run_auto

        return run_auto(model_dir, source, target, out, config, progress=progress, log=log)

    parent = Artifact(model_dir)
    refuse_input_as_out(out, parent)
    manifest = parent.manifest
    labels = manifest.label_names
    preprocessing = manifest.preprocessing
    started = time.perf_counter()

    # The source is carved as the parent's training data was (the lineage's record), so the
    # run's held-out source test split stays unseen here too; only its train split is trained on.
    split = _source_split(parent, config)
    source_data = scan_labelled(
        source,
        labels,
        {},
        val_fraction=split["val_fraction"],
        test_fraction=split["test_fraction"],
        seed=split["seed"],
        strict=config.strict,
        source_domain=True,
    )
    target_data = scan_unlabelled(target, labels, config.class_map, strict=config.strict)
    if target_data.had_labels:
        log(
            f"target {target}: has class folders ({', '.join(target_data.class_folders[:10])}"
            f"{' …' if len(target_data.class_folders) > 10 else ''}); their labels are ignored — adapt uses "
            "only the images"
        )
    source_train = random_subset(source_data.split("train"), config.max_source_images, config.seed)
    source_val = source_data.split("val")
    target_paths = random_subset(target_data.paths, config.max_target_images, config.seed)

    from edgexfer.data import Sample, data_errors, load_arrays
    from edgexfer.tf_env import import_tf
    from edgexfer.train import common

    tf, keras = import_tf()
    common.seed_everything(config.seed, config.deterministic)
    timings: dict[str, float] = {}
    images = len(source_train) + len(source_val) + len(target_paths)
    gigabytes = images * preprocessing.input_size**2 * 3 * 5 / 1e9  # uint8 pixels + float32 batches/caches
    if gigabytes > 4:
        log(
            f"note: adapt holds the {images} images in memory (about {gigabytes:.0f} GB at "
            f"{preprocessing.input_size}px); --max-source-images / --max-target-images lower it"
        )
    with data_errors(), writing_artifact(out) as writer:
        with common.timed(timings, "load_seconds"):
            xs, ys = load_arrays(source_train, preprocessing)
            xv, yv = load_arrays(source_val, preprocessing)
            xt, _ = load_arrays([Sample(p, -1) for p in target_paths], preprocessing)
        log(
            f"adapt ({_describe(config)}): {len(xs)} labelled source / {len(xv)} source val / "
            f"{len(xt)} unlabelled target images at {preprocessing.input_size}px"
        )
        # After the inputs were read (a bad input leaves no checkpoint behind); tied to them and the config.
        checkpoint = StageCheckpoint(
            "adapt",
            out,
            {
                "config": config.model_dump(),
                "parent": parent.parent_ref()["sha256"],
                "source": {"path": str(Path(source).resolve()), **source_data.fingerprint()},
                "target": {"path": str(Path(target).resolve()), **target_data.fingerprint()},
            },
            log=log,
        )
        model = load_keras_model(parent.model_path)
        adapter = Adapter(
            model, preprocessing, config, xs, ys, xv, yv, xt, log=log, progress=progress, checkpoint=checkpoint
        )
        metrics_before = adapter.report("input")
        with common.timed(timings, "adapt_seconds"):
            history = adapter.run()
        adapter.finish()
        metrics_after = adapter.report("output")
        save_keras_model(model, writer.file(MODEL_FILE))
        timings["checkpoint_seconds"] = round(adapter.checkpoint_seconds, 3)
        timings["total_seconds"] = round(time.perf_counter() - started, 3)

        settings = {
            "method": config.method,
            "after": config.first_method,
            "bn": config.bn_mode,
            "output_stats": config.output_stats,
        }
        metrics = adapted_metrics(
            {
                **settings,
                "source_val_accuracy": metrics_after["source_val_accuracy"],
                "input": metrics_before,
                "output": metrics_after,
                "source_stats_source_val_accuracy": adapter.source_stats_accuracy,
                "target_labels_used": False,
            },
            target_had_labels=target_data.had_labels,
            images={"source_train": len(xs), "source_val": len(xv), "target": len(xt)},
            split=adapter.split,
            history=history,
            resumed=checkpoint.resumed,
            model=model,
            model_file=writer.file(MODEL_FILE),
            timings=timings,
        )
        child = adapted_manifest(
            parent,
            config,
            # ``path`` is the target domain: the one the model is deployed on (export calibrates int8 on it).
            {
                "path": str(Path(target).resolve()),
                "domain": "target",
                **target_data.fingerprint(),
                "source": {"path": str(Path(source).resolve()), **source_data.fingerprint()},
            },
            {**settings, "target_labels_used": False},
            split=split,
        )
        artifact = writer.commit(child, metrics)
    checkpoint.finish()
    return artifact


def source_problem(method: str, has_source: bool) -> str | None:
    """Why ``method`` cannot run with (or without) source images, or ``None``."""
    if method in SOURCE_FREE_METHODS and has_source:
        return (
            f"method {method} is source-free and reads no source images; leave the source out (--source, or "
            "source: in a pipeline); for the source accuracy afterwards: edgexfer evaluate OUT --data source=DIR"
        )
    if method not in SOURCE_FREE_METHODS and not has_source:
        return (
            f"method {method} trains on labelled source images: give them (--source DIR, or source: in a "
            f"pipeline); without source images use method {SOURCE_FREE_METHODS[0]}"
        )
    return None


def _source_split(parent: Artifact, config: AdaptConfig) -> dict[str, Any]:
    """The split the parent's source data was carved with where its lineage records one (its
    test images stay held out); else ``config.val_fraction`` with no test split."""
    from edgexfer.evaluate.splits import recorded_split

    return recorded_split(parent) or {"seed": config.seed, "val_fraction": config.val_fraction, "test_fraction": 0.0}


def _describe(config: AdaptConfig) -> str:
    method = config.method if not config.first_method else f"{config.first_method} → {config.method}"
    return f"{method}, BatchNorm {config.bn_mode}"
