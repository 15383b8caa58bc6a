"""Fine-tuning a pretrained backbone on a target-domain image folder, in two phases.

Phase 1 trains a new head on the frozen backbone. The backbone's pooled features are
computed once and cached, so each epoch costs a pass over a small feature matrix instead
of the whole backbone. Phase 2 unfreezes the top layers at a lower learning rate, with
BatchNorm kept in inference mode (a frozen BN layer in tf_keras runs in inference mode),
on the image pipeline with augmentation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, Manifest, writing_artifact
from edgexfer.config import FinetuneConfig
from edgexfer.errors import ConfigError
from edgexfer.models_io import MODEL_FILE, build_classifier, build_head_layers, count_params, save_keras_model
from edgexfer.train import common


def finetune(data_dir: str | Path, out: str | Path, config: FinetuneConfig, *, progress: bool = True,
             log=print) -> Artifact:
    """Fine-tune ``config.backbone`` on the image folder ``data_dir``; write an artifact at ``out``."""
    from edgexfer._env import import_tf
    from edgexfer.backbones.registry import create_backbone, get_backbone
    from edgexfer.data import scan_image_folder
    from edgexfer.data.pipeline import data_errors

    spec = get_backbone(config.backbone)
    input_size = config.img_size or spec.default_input_size
    spec.check_options(input_size, config.width)
    preprocessing = spec.preprocessing(input_size)

    dataset = scan_image_folder(data_dir, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                                seed=config.seed, strict=config.strict)
    train_samples = _limit(dataset.split("train"), config.max_train_images, config.seed)
    val_samples, test_samples = dataset.split("val"), dataset.split("test")
    class_names = dataset.class_names
    if not val_samples:
        raise ConfigError(f"{data_dir}: the validation split is empty; add images or raise --val-fraction")

    tf, keras = import_tf()
    common.seed_everything(config.seed, config.deterministic)
    strategy = common.make_strategy(config.strategy)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    with data_errors(), writing_artifact(out) as writer:
        with strategy.scope():
            backbone = create_backbone(config.backbone, input_size, config.weights, config.width)
            backbone.trainable = False
            head_layers = build_head_layers(len(class_names), config.head.dropout, config.head.hidden_units)
            model = build_classifier(backbone, head_layers, name=f"{config.backbone}_classifier")

        class_weight = _class_weights(train_samples, len(class_names)) if config.class_weights == "balanced" else None
        history: dict[str, Any] = {}
        log(f"phase 1: head on frozen {config.backbone} ({len(train_samples)} train / {len(val_samples)} val "
            f"images at {input_size}px, feature cache {'on' if config.feature_cache else 'off'})")
        if config.feature_cache:
            history["phase1"] = _train_head_on_cached_features(
                backbone, head_layers, train_samples, val_samples, preprocessing, config, strategy,
                class_weight, timings, progress)
        else:
            history["phase1"] = _fit_images(model, train_samples, val_samples, preprocessing, config, strategy,
                                            config.epochs, config.learning_rate, class_weight, timings,
                                            "phase1", progress, augment=True)

        if config.fine_tune_epochs > 0:
            unfrozen = _unfreeze_top(backbone, config.unfreeze_layers)
            log(f"phase 2: fine-tune the top {len(unfrozen)} layers (BatchNorm stays in inference mode)")
            history["phase2"] = _fit_images(model, train_samples, val_samples, preprocessing, config, strategy,
                                            config.fine_tune_epochs, config.fine_tune_learning_rate, class_weight,
                                            timings, "phase2", progress, augment=True)
        timings["total_train_seconds"] = round(time.perf_counter() - started, 3)

        from edgexfer.evaluate.evaluator import predict_samples
        from edgexfer.evaluate.metrics import classification_metrics

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
            "history": history,
            "splits": {"train": len(train_samples), "val": len(val_samples), "test": len(test_samples)},
            "skipped_files": [str(p) for p, _ in dataset.skipped],
        }
        manifest = Manifest(
            stage="finetune", label_names=class_names, preprocessing=preprocessing, backbone=config.backbone,
            weights=_weights_provenance(spec, config.weights), config=config.model_dump(),
            model_file=MODEL_FILE, dataset={"path": str(Path(data_dir).resolve()), **dataset.fingerprint()},
            seed=config.seed, extra={"width": config.width, "strategy": config.strategy,
                                     "replicas": strategy.num_replicas_in_sync},
        )
        return writer.commit(manifest, metrics)


def _limit(samples: list, limit: int | None, seed: int) -> list:
    """A stratified, seeded subset of at most ``limit`` samples."""
    if not limit or len(samples) <= limit:
        return samples
    from sklearn.model_selection import train_test_split

    labels = [s.label for s in samples]
    kept, _ = train_test_split(samples, train_size=limit, stratify=labels, random_state=seed)
    return kept


def _class_weights(samples: list, num_classes: int) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([s.label for s in samples])
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(num_classes) if c not in present}


def _weights_provenance(spec, weights: str) -> str:
    if weights == "imagenet":
        return f"imagenet: {spec.weights_source}"
    return weights


def _train_head_on_cached_features(backbone, head_layers, train_samples, val_samples, preprocessing,
                                   config: FinetuneConfig, strategy, class_weight, timings, progress) -> dict:
    """Phase 1 with the feature cache: the frozen backbone runs once over the data."""
    from edgexfer._env import import_tf
    from edgexfer.data import make_dataset
    from edgexfer.models_io import apply_layers

    tf, keras = import_tf()
    with common.timed(timings, "feature_extraction_seconds"):
        features = {}
        for split, samples in (("train", train_samples), ("val", val_samples)):
            images = make_dataset(samples, preprocessing, batch_size=config.batch_size, cache=False,
                                  return_labels=False)
            features[split] = backbone.predict(images, verbose=0)
    train_labels = np.array([s.label for s in train_samples])
    val_labels = np.array([s.label for s in val_samples])

    with strategy.scope():
        feature_input = keras.Input((features["train"].shape[1],), name="features")
        head_model = keras.Model(feature_input, apply_layers(feature_input, head_layers), name="head")
    steps = int(np.ceil(len(train_labels) / config.batch_size))
    _compile(head_model, strategy, config.learning_rate, steps * config.epochs, config)
    train_ds = (tf.data.Dataset.from_tensor_slices((features["train"], _targets(train_labels, head_model)))
                .shuffle(len(train_labels), seed=config.seed).batch(config.batch_size).prefetch(2))
    val_ds = tf.data.Dataset.from_tensor_slices((features["val"], _targets(val_labels, head_model))).batch(
        config.batch_size)
    with common.timed(timings, "phase1_seconds"):
        history = head_model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, verbose=0,
                                 class_weight=class_weight,
                                 callbacks=_callbacks(config, "phase 1 (head, cached features)", config.epochs,
                                                      steps, progress))
    return _history(history)


def _fit_images(model, train_samples, val_samples, preprocessing, config: FinetuneConfig, strategy, epochs: int,
                learning_rate: float, class_weight, timings, phase: str, progress: bool, augment: bool) -> dict:
    """Train ``model`` end to end on the image pipeline (phase 2, or phase 1 without cache)."""
    from edgexfer.data import make_dataset

    augment_config = _augment_config(config) if augment else None
    num_classes = model.output_shape[-1]
    train_ds = make_dataset(train_samples, preprocessing, batch_size=config.batch_size, shuffle=True,
                            seed=config.seed, augment=augment_config, cache=True)
    val_ds = make_dataset(val_samples, preprocessing, batch_size=config.batch_size, cache=True)
    if config.label_smoothing:
        train_ds = train_ds.map(lambda x, y: (x, _one_hot(y, num_classes)))
        val_ds = val_ds.map(lambda x, y: (x, _one_hot(y, num_classes)))
    steps = int(np.ceil(len(train_samples) / config.batch_size))
    _compile(model, strategy, learning_rate, steps * epochs, config)
    with common.timed(timings, f"{phase}_seconds"):
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, class_weight=class_weight,
                            callbacks=_callbacks(config, f"{phase} ({'fine-tune' if phase == 'phase2' else 'head'})",
                                                 epochs, steps, progress))
    return _history(history)


def _augment_config(config: FinetuneConfig):
    from edgexfer.data import AugmentConfig

    if not config.augment.enabled:
        return None
    return AugmentConfig(**config.augment.model_dump())


def _one_hot(labels, num_classes: int):
    from edgexfer._env import import_tf

    tf, _ = import_tf()
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes)


def _targets(labels: np.ndarray, model) -> np.ndarray:
    """Integer labels, or one-hot when the loss is categorical (label smoothing needs it)."""
    if model.loss.__class__.__name__ == "CategoricalCrossentropy":
        return np.eye(model.output_shape[-1], dtype="float32")[labels]
    return labels


def _compile(model, strategy, learning_rate: float, total_steps: int, config: FinetuneConfig) -> None:
    from edgexfer._env import import_tf

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
    callbacks = [common.rich_progress_callback(description, epochs, steps, enabled=progress),
                 *common.tensorboard_callbacks(description.split()[0])]
    if config.early_stopping_patience:
        callbacks.append(common.restore_best_early_stopping(config.early_stopping_patience))
    return callbacks


def _unfreeze_top(backbone, count: int) -> list[str]:
    """Make the top ``count`` weighted non-BatchNorm layers trainable; BN stays frozen."""
    from edgexfer._env import import_tf

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
