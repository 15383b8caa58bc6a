"""Fine-tuning a pretrained backbone on a target-domain image folder, in two phases.

Phase 1 trains a new head on the frozen backbone. The backbone's pooled features are
computed once and cached, so each epoch costs a pass over a small feature matrix instead
of the whole backbone. Phase 2 unfreezes the top layers at a lower learning rate, with
BatchNorm kept in inference mode (a frozen BN layer in tf_keras runs in inference mode),
on the image pipeline with augmentation.

Where the images and phase 1's features live between epochs (``image_cache``): see
:mod:`edgexfer.train.data_cache`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, Manifest
from edgexfer.config import FinetuneConfig
from edgexfer.data.subset import limit_samples
from edgexfer.errors import ConfigError
from edgexfer.keras_io import MODEL_FILE, build_classifier, build_head_layers, count_params, save_keras_model
from edgexfer.provenance import recorded
from edgexfer.seeding import derive_seed
from edgexfer.train import common, data_cache, distributed, fewshot
from edgexfer.train.resume import StageCheckpoint


@recorded  # the call is stored in the artifact's manifest (edgexfer reproduce)
def finetune(
    data_dir: str | Path, out: str | Path, config: FinetuneConfig, *, progress: bool = True, log=print
) -> Artifact:
    """Fine-tune ``config.backbone`` on the image folder ``data_dir``; write an artifact at ``out``."""
    from edgexfer.backbones.registry import create_backbone, get_backbone
    from edgexfer.data import scan_image_folder
    from edgexfer.data.pipeline import data_errors
    from edgexfer.tf_env import import_tf

    init_artifact = fewshot.check_init_artifact(config.init) if config.init else None
    if init_artifact is not None:  # the init model's preprocessing travels on
        preprocessing = init_artifact.manifest.preprocessing
        input_size = int(preprocessing.input_size)
        if config.img_size is not None and config.img_size != input_size:
            raise ConfigError(
                f"--init {config.init!r} takes {input_size}×{input_size} px images but --img-size is "
                f"{config.img_size}; pass --img-size {input_size} (or leave it out: the init model's size is used)"
            )
    else:
        spec = get_backbone(config.backbone)
        input_size = config.img_size or spec.default_input_size
        spec.check_options(input_size, config.width)
        preprocessing = spec.preprocessing(input_size)

    dataset = scan_image_folder(
        data_dir,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed if config.split_seed is None else config.split_seed,
        strict=config.strict,
    )
    target_classes = None
    if config.class_map and init_artifact is None:
        raise ConfigError("--class-map renames the folder's classes to the --init model's: it needs --init ARTIFACT")
    if init_artifact is not None:
        target_classes = fewshot.match_init_classes(
            dataset.class_names, init_artifact.manifest.label_names, dict(config.class_map)
        )
        if target_classes.keep_head:
            fewshot.relabel(dataset, target_classes.class_names, dict(config.class_map))
        else:
            log(target_classes.message)
    few_labels = None
    if config.per_class:
        few_labels = fewshot.per_class_split(dataset, config.per_class, config.seed, repr(str(data_dir)))
        # No labelled image is left over to validate on: the labelled images stand in for the
        # validation split (so early stopping, which would watch training images, is off) and
        # the held-out images, never trained on, give the reported test accuracy.
        train_samples, val_samples, test_samples = few_labels.train, few_labels.train, few_labels.held_out
        config = config.model_copy(update={"early_stopping_patience": 0})
        log(
            f"few labels: {len(train_samples)} images ({config.per_class} per class, seed {config.seed}) of "
            f"{few_labels.pool}; {len(test_samples)} held out ({few_labels.held_out_from}) for the test accuracy"
        )
    else:
        train_samples = limit_samples(dataset.split("train"), config.max_train_images, config.seed, sort_by_path=False)
        val_samples, test_samples = dataset.split("val"), dataset.split("test")
    class_names = dataset.class_names
    if not val_samples:
        raise ConfigError(f"{data_dir}: the validation split is empty; add images or raise --val-fraction")
    unlabelled: list = []
    if config.unlabelled:
        unlabelled, excluded = fewshot.unlabelled_paths(
            config.unlabelled, [*train_samples, *val_samples, *test_samples], config.strict
        )
        log(
            f"unlabelled: {len(unlabelled)} images of {config.unlabelled} for self-training "
            f"({excluded} left out: labelled or held-out images)"
        )

    tf, keras = import_tf()
    common.seed_everything(config.seed, config.deterministic)
    strategy = common.make_strategy(config.strategy)
    # Multi-worker: this worker's shard of the training images and its share of the global batch.
    user_config, cluster = config, distributed.cluster_of(config.strategy, strategy)
    train_samples, shard_info = distributed.shard(train_samples, cluster, config.seed)
    if cluster.multi_worker:
        config = config.model_copy(update={"batch_size": distributed.per_worker_batch(config.batch_size, cluster)})
        log(
            f"worker {cluster.index} of {cluster.workers}: {len(train_samples)} training images (its shard), "
            f"batch {config.batch_size} of the global {user_config.batch_size}"
            + ("; the chief writes the artifact" if not cluster.is_chief else "")
        )
    checkpoint = StageCheckpoint(
        "finetune",
        out,
        {"config": user_config.model_dump(), "data": {"path": str(Path(data_dir).resolve()), **dataset.fingerprint()}},
        log=log,
        is_chief=cluster.is_chief,
        strategy=strategy,
        multi_worker=cluster.multi_worker,
    )
    allreduce_bytes: dict[str, int] = {}
    timings: dict[str, float] = {}
    peak_rss: dict[str, float] = {}
    started = time.perf_counter()
    run_files = data_cache.RunFiles()

    with data_errors(), distributed.writing_artifact_on_chief(out, cluster) as writer, contextlib.closing(run_files):
        with strategy.scope():
            if init_artifact is not None:
                init = fewshot.load_init_model(init_artifact, config.img_size)
                backbone = init.backbone
            else:
                backbone = create_backbone(config.backbone, input_size, config.weights, config.width)
            backbone.trainable = False
            if target_classes is not None and target_classes.keep_head:
                head_layers, model = init.head_layers, init.model
            else:
                head_layers = build_head_layers(
                    len(class_names),
                    config.head.dropout,
                    config.head.hidden_units,
                    seed=derive_seed(config.seed, "finetune", "head"),
                )
                backbone_name = init_artifact.manifest.backbone if init_artifact is not None else config.backbone
                model = build_classifier(backbone, head_layers, name=f"{backbone_name}_classifier")
        plan = data_cache.plan_data_cache(
            config.image_cache,
            images=len(train_samples) + len(val_samples),
            input_size=input_size,
            feature_dim=int(np.prod(backbone.output_shape[1:])),
            cache_images=config.fine_tune_epochs > 0 or not config.feature_cache,
            cache_features=config.feature_cache,
        )
        image_cache = run_files.get() if plan["images"] == "disk" else plan["images"] == "memory"
        peak_rss["setup"] = round(common.peak_rss_mb(), 1)

        class_weight = _class_weights(train_samples, len(class_names)) if config.class_weights == "balanced" else None
        history: dict[str, Any] = {}
        log(
            f"phase 1: head on frozen {backbone.name} ({len(train_samples)} train / {len(val_samples)} val "
            f"images at {input_size}px, feature cache {'on' if config.feature_cache else 'off'}; "
            f"{data_cache.describe_plan(plan)})"
        )
        allreduce_bytes["phase1"] = _trainable_bytes(model)
        if checkpoint.completed("phase1") is not None:
            history["phase1"] = checkpoint.restore("phase1", model)
        elif config.feature_cache:
            history["phase1"] = _train_head_on_cached_features(
                backbone,
                head_layers,
                train_samples,
                val_samples,
                preprocessing,
                config,
                strategy,
                class_weight,
                timings,
                progress,
                spill_dir=run_files.get() if plan["features"] == "disk" else None,
                extra_callbacks=checkpoint.callbacks("phase1", config.epochs),
            )
        else:
            history["phase1"] = _fit_images(
                model,
                train_samples,
                val_samples,
                preprocessing,
                config,
                strategy,
                config.epochs,
                config.learning_rate,
                class_weight,
                timings,
                "phase1",
                progress,
                augment=True,
                cache=image_cache,
                extra_callbacks=checkpoint.callbacks("phase1", config.epochs),
            )
        if "skipped" not in checkpoint.resumed.get("phase1", {}):
            checkpoint.complete("phase1", model, history["phase1"])
        peak_rss["phase1"] = round(common.peak_rss_mb(), 1)

        if config.fine_tune_epochs > 0:
            unfrozen = _unfreeze_top(backbone, config.unfreeze_layers)
            log(f"phase 2: fine-tune the top {len(unfrozen)} layers (BatchNorm stays in inference mode)")
            allreduce_bytes["phase2"] = _trainable_bytes(model)
            if checkpoint.completed("phase2") is not None:
                history["phase2"] = checkpoint.restore("phase2", model)
            else:
                history["phase2"] = _fit_images(
                    model,
                    fewshot.fill_epoch(train_samples, config.batch_size) if few_labels else train_samples,
                    val_samples,
                    preprocessing,
                    config,
                    strategy,
                    config.fine_tune_epochs,
                    config.fine_tune_learning_rate,
                    class_weight,
                    timings,
                    "phase2",
                    progress,
                    augment=True,
                    cache=image_cache,
                    extra_callbacks=checkpoint.callbacks("phase2", config.fine_tune_epochs),
                )
                checkpoint.complete("phase2", model, history["phase2"])
            peak_rss["phase2"] = round(common.peak_rss_mb(), 1)
        if unlabelled:
            rate = config.fine_tune_learning_rate if config.fine_tune_epochs > 0 else config.learning_rate
            history["self_training"] = fewshot.self_train(
                model,
                train_samples,
                unlabelled,
                preprocessing,
                config,
                lambda samples, epochs: _fit_images(
                    fewshot.ready_to_fit_again(model),
                    samples,
                    val_samples,
                    preprocessing,
                    config,
                    strategy,
                    epochs,
                    rate,
                    class_weight,
                    timings,
                    "self_training",
                    progress,
                    augment=True,
                    cache=image_cache,
                ),
                log,
            )
        timings["total_train_seconds"] = round(time.perf_counter() - started, 3)
        run_files.close()  # the caches are not needed for evaluation: free the disk early

        from edgexfer.evaluate.evaluator import predict_samples
        from edgexfer.evaluate.metrics import classification_metrics

        if cluster.multi_worker:  # evaluate and save a plain copy: a distributed predict returns a shard
            model = distributed.local_copy(model)
        evaluations = {}
        for split, samples in (("val", val_samples), ("test", test_samples)):
            if samples:
                probs, labels = predict_samples(model, samples, preprocessing, config.batch_size)
                evaluations[split] = classification_metrics(labels, probs, class_names)

        save_keras_model(model, writer.file(MODEL_FILE))
        images_seen = len(train_samples) * (config.epochs + config.fine_tune_epochs)
        metrics = {
            "val_accuracy": evaluations["val"]["accuracy"],
            "test_accuracy": evaluations.get("test", {}).get("accuracy"),
            "val": evaluations.get("val"),
            "test": evaluations.get("test"),
            "params": count_params(model),
            "model_bytes": writer.file(MODEL_FILE).stat().st_size,
            "timings_seconds": timings,
            "train_images_per_second": round(images_seen / max(timings["total_train_seconds"], 1e-9), 1),
            "peak_rss_mb": round(common.peak_rss_mb(), 1),
            "peak_rss_mb_after": peak_rss,
            "data_cache": plan,
            "history": history,
            "splits": {"train": len(train_samples), "val": len(val_samples), "test": len(test_samples)},
            "skipped_files": [str(p) for p, _ in dataset.skipped],
            "distributed": _distributed_metrics(
                cluster, shard_info, user_config, allreduce_bytes, timings, len(train_samples)
            ),
            "resumed": checkpoint.resumed,
        }
        if init_artifact is not None:
            metrics["init"] = {**init_artifact.parent_ref(), "head": "kept" if target_classes.keep_head else "new"}
        if few_labels is not None:
            metrics["few_labels"] = {
                "per_class": config.per_class,
                "labelled": len(train_samples),
                "pool": few_labels.pool,
                "held_out": len(test_samples),
                "held_out_from": few_labels.held_out_from,
                "val_is_train": True,  # "val" metrics are on the labelled training images
                # which images were labelled (relative to the folder): fuse can select on them
                "labelled_files": sorted(Path(s.path).relative_to(dataset.root).as_posix() for s in train_samples),
            }
        manifest = Manifest(
            stage="finetune",
            label_names=class_names,
            preprocessing=preprocessing,
            backbone=init_artifact.manifest.backbone if init_artifact is not None else config.backbone,
            weights=(
                fewshot.init_provenance(init_artifact)
                if init_artifact is not None
                else _weights_provenance(spec, config.weights)
            ),
            parent=init_artifact.parent_ref() if init_artifact is not None else None,
            config=user_config.model_dump(),
            model_file=MODEL_FILE,
            dataset={"path": str(Path(data_dir).resolve()), **dataset.fingerprint()},
            seed=config.seed,
            extra={
                "width": config.width,
                "strategy": config.strategy,
                "replicas": strategy.num_replicas_in_sync,
                "workers": cluster.workers,
            },
        )
        artifact = writer.commit(manifest, metrics)
    checkpoint.finish()
    return artifact


def _trainable_bytes(model) -> int:
    """float32 bytes of the trainable weights: the gradient volume all-reduced per step."""
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_variables)) * 4


def _distributed_metrics(
    cluster, shard_info, user_config: FinetuneConfig, allreduce_bytes: dict, timings: dict, shard_images: int
) -> dict:
    """Cluster size, per-worker shards and batches, all-reduce volume and step time per phase."""
    result = distributed.describe(cluster, shard_info, user_config.batch_size)
    per_worker = result["per_worker_batch"]
    steps = {
        "phase1": int(np.ceil(shard_images / per_worker)) * user_config.epochs,
        "phase2": int(np.ceil(shard_images / per_worker)) * user_config.fine_tune_epochs,
    }
    result["allreduce_bytes_per_step"] = allreduce_bytes
    result["step_seconds"] = {
        phase: round(timings[f"{phase}_seconds"] / steps[phase], 4)
        for phase in allreduce_bytes
        if steps[phase] and f"{phase}_seconds" in timings
    }
    return result


def _class_weights(samples: list, num_classes: int) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([s.label for s in samples])
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(num_classes) if c not in present
    }


def _weights_provenance(spec, weights: str) -> str:
    if weights == "imagenet":
        return f"imagenet: {spec.weights_source}"
    return weights


def _train_head_on_cached_features(
    backbone,
    head_layers,
    train_samples,
    val_samples,
    preprocessing,
    config: FinetuneConfig,
    strategy,
    class_weight,
    timings,
    progress,
    spill_dir: Path | None = None,
    extra_callbacks=(),
) -> dict:
    """Phase 1 with the feature cache: the frozen backbone runs once over the data.

    The features are one in-memory matrix per split, or, with ``spill_dir``, a file per split
    that each epoch streams through tf.data (:mod:`edgexfer.train.data_cache`).
    """
    from edgexfer.keras_io import apply_layers
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    with common.timed(timings, "feature_extraction_seconds"):
        features, labels = data_cache.extract_features(
            backbone, {"train": train_samples, "val": val_samples}, preprocessing, config, spill_dir
        )
    feature_dim = int(np.prod(backbone.output_shape[1:]))

    with strategy.scope():
        feature_input = keras.Input((feature_dim,), name="features")
        head_model = keras.Model(feature_input, apply_layers(feature_input, head_layers), name="head")
    steps = int(np.ceil(len(labels["train"]) / config.batch_size))
    _compile(head_model, strategy, config.learning_rate, steps * config.epochs, config)
    targets = {split: _targets(split_labels, head_model) for split, split_labels in labels.items()}
    train_ds, val_ds = data_cache.feature_datasets(features, targets, feature_dim, config.batch_size, config.seed)
    cluster = distributed.cluster_of(config.strategy, strategy)
    inputs = distributed.fit_inputs(
        strategy, cluster, train_ds, val_ds, steps, int(np.ceil(len(labels["val"]) / config.batch_size))
    )
    with common.timed(timings, "phase1_seconds"):
        history = head_model.fit(
            **inputs,
            epochs=config.epochs,
            verbose=0,
            class_weight=class_weight,
            callbacks=_callbacks(config, "phase 1 (head, cached features)", config.epochs, steps, progress)
            + list(extra_callbacks),
        )
    return _history(history)


def _fit_images(
    model,
    train_samples,
    val_samples,
    preprocessing,
    config: FinetuneConfig,
    strategy,
    epochs: int,
    learning_rate: float,
    class_weight,
    timings,
    phase: str,
    progress: bool,
    augment: bool,
    cache: bool | Path = True,
    extra_callbacks=(),
) -> dict:
    """Train ``model`` end to end on the image pipeline (phase 2, or phase 1 without cache).

    ``cache``: True (decoded images in memory), a directory (tf.data cache files there) or
    False (decode every epoch), as ``make_dataset`` takes it.
    """
    from edgexfer.data import make_dataset

    augment_config = _augment_config(config) if augment else None
    num_classes = model.output_shape[-1]
    train_ds = make_dataset(
        train_samples,
        preprocessing,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        augment=augment_config,
        cache=cache,
    )
    val_ds = make_dataset(val_samples, preprocessing, batch_size=config.batch_size, cache=cache)
    if config.label_smoothing:
        train_ds = train_ds.map(lambda x, y: (x, _one_hot(y, num_classes)))
        val_ds = val_ds.map(lambda x, y: (x, _one_hot(y, num_classes)))
    steps = int(np.ceil(len(train_samples) / config.batch_size))
    _compile(model, strategy, learning_rate, steps * epochs, config)
    cluster = distributed.cluster_of(config.strategy, strategy)
    inputs = distributed.fit_inputs(
        strategy, cluster, train_ds, val_ds, steps, int(np.ceil(len(val_samples) / config.batch_size))
    )
    with common.timed(timings, f"{phase}_seconds"):
        history = model.fit(
            **inputs,
            epochs=epochs,
            verbose=0,
            class_weight=class_weight,
            callbacks=_callbacks(
                config, f"{phase} ({'fine-tune' if phase == 'phase2' else 'head'})", epochs, steps, progress
            )
            + list(extra_callbacks),
        )
    return _history(history)


def _augment_config(config: FinetuneConfig):
    from edgexfer.config import AugmentOptions as AugmentConfig  # the one augmentation type

    if not config.augment.enabled:
        return None
    return AugmentConfig(**config.augment.model_dump())


def _one_hot(labels, num_classes: int):
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes)


def _targets(labels: np.ndarray, model) -> np.ndarray:
    """Integer labels, or one-hot when the loss is categorical (label smoothing needs it)."""
    if model.loss.__class__.__name__ == "CategoricalCrossentropy":
        return np.eye(model.output_shape[-1], dtype="float32")[labels]
    return labels


def _compile(model, strategy, learning_rate: float, total_steps: int, config: FinetuneConfig) -> None:
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    with strategy.scope():
        schedule = common.cosine_with_warmup(learning_rate, total_steps, config.warmup_fraction)
        if config.label_smoothing:
            loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
            metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        else:
            loss = keras.losses.SparseCategoricalCrossentropy()
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics)


def _callbacks(config: FinetuneConfig, description: str, epochs: int, steps: int, progress: bool) -> list:
    callbacks = [
        common.rich_progress_callback(description, epochs, steps, enabled=progress),
        *common.tensorboard_callbacks(description.split()[0]),
    ]
    if config.early_stopping_patience:
        callbacks.append(common.restore_best_early_stopping(config.early_stopping_patience))
    return callbacks


def _unfreeze_top(backbone, count: int) -> list[str]:
    """Make the top ``count`` weighted non-BatchNorm layers trainable; BN stays frozen."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    backbone.trainable = True
    candidates = [layer for layer in backbone.layers if layer.weights]
    for layer in candidates:
        layer.trainable = False
    unfrozen = []
    for layer in reversed(candidates):
        if len(unfrozen) >= count:
            break
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        layer.trainable = True
        unfrozen.append(layer.name)
    return unfrozen


def _history(history) -> dict[str, list[float]]:
    return {key: [round(float(v), 5) for v in values] for key, values in history.history.items()}
