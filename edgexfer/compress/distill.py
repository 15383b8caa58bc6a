"""Knowledge distillation (Hinton et al., 2015) of a fine-tuned teacher into a small student.

``loss = alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(y, s)``, where ``t``
and ``s`` are the teacher's and the student's logits. The T² keeps the soft-target
gradients on the scale of the hard-label ones whatever the temperature.

The teacher artifact is a softmax classifier; its logits are the ``head_dense`` layer's
pre-activation (a linear copy of that layer), or its log-probabilities where the head is
not a plain Dense (valid logits up to a constant, which softmax ignores). Teacher and
student may differ in input size and normalisation: each sees the images through its own
preprocessing from its manifest. Without augmentation the teacher's logits are computed
once and cached, aligned with the training samples; with augmentation both models see the
same augmented image every step, so the teacher runs online, unless ``teacher_view="clean"``:
then the cached logits of the un-augmented image are the target for every augmented view.

``unlabelled`` adds images whose labels are not used — typically the target domain after
``adapt`` — that the student learns from the teacher's soft targets alone (their hard-label
loss is masked out): a source-domain student then also inherits the adapted teacher's
target-domain behaviour.

With no labelled folder at all (``data_dir`` None) the student learns from the ``unlabelled``
images alone, reading no label: the source-free road after ``adapt --method shot``, where a
small student trained on the teacher's answers under augmentation (``teacher_view="clean"``)
regularises the adapted teacher's mistakes. Progress and the result are then measured as
agreement with the teacher on a seeded share of those images, not as accuracy.

``feature_weight`` β > 0 adds a FitNets-style hint on the pooled embeddings
(``edgexfer.compress.distill_losses``): the teacher's is its ``head_dense`` layer's input,
cached with the logits or computed online alongside them.

``baseline=True`` trains the same student (same initialisation, data order, schedule)
with ``alpha = 0`` and no hint, so the gain from distillation is measured, not assumed.

The losses and the training model live in ``edgexfer.compress.distill_losses``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, Manifest, Preprocessing, refuse_input_as_out
from edgexfer.compress import measure, stage_io
from edgexfer.compress.config import DistillConfig
from edgexfer.compress.distill_losses import distiller
from edgexfer.data.subset import limit_samples
from edgexfer.errors import ConfigError
from edgexfer.keras_io import MODEL_FILE, build_classifier, build_head_layers, load_keras_model, save_keras_model
from edgexfer.provenance import recorded
from edgexfer.train import common as train_common
from edgexfer.train import distributed
from edgexfer.train.resume import StageCheckpoint, stage_checkpoint

_SHUFFLE_BUFFER_BYTES = 256 << 20
# Cached teacher features (N × width) above this size in float32 are kept in float16: half the
# memory (60,000 × 1280 Lite0 embeddings are 307 MB in float32), and the hint L2-normalises
# them, so float16's 3 significant digits are plenty.
_FEATURE_CACHE_FLOAT32_BYTES = 512 << 20


def student_settings(config: DistillConfig, teacher_preprocessing: Preprocessing):
    """The student's spec, input size, weights and preprocessing; ``ConfigError`` for an
    input size or width the student cannot take."""
    from edgexfer.backbones.registry import get_backbone

    spec = get_backbone(config.student)
    size = config.student_img_size or teacher_preprocessing.input_size
    if size < spec.min_input_size:
        given = f"--student-img-size {size}" if config.student_img_size else f"{size} px, the teacher's input size"
        raise ConfigError(
            f"student input size ({given}) is too small for {spec.name}: it needs at "
            f"least {spec.min_input_size} px; pass --student-img-size {spec.min_input_size} or more"
        )
    width = config.student_width
    if width is not None and width != spec.default_width and width not in spec.widths:
        allowed = ", ".join(str(w) for w in spec.widths) or "none (this backbone has one width)"
        raise ConfigError(f"--student-width {width} is not available for {spec.name}; allowed: {allowed}")
    weights = config.student_weights or ("none" if spec.weights_source.startswith("none") else "imagenet")
    return spec, size, weights, spec.preprocessing(size)


def teacher_logits_model(teacher, with_features: bool = False):
    """``teacher``'s input → logits: a linear copy of its ``head_dense`` layer, or log-probabilities.

    ``with_features``: → ``[logits, features]``, the features being ``head_dense``'s input
    (the pooled embedding the feature hint matches); ``ConfigError`` for a teacher whose
    classifier is not such a Dense layer.
    """
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    try:
        dense = teacher.get_layer("head_dense")
    except ValueError:
        dense = None
    if isinstance(dense, keras.layers.Dense) and getattr(dense.activation, "__name__", "") == "softmax":
        linear = keras.layers.Dense(dense.units, activation=None, use_bias=dense.use_bias, name="teacher_logits")
        logits = linear(dense.input)
        linear.set_weights(dense.get_weights())
        outputs = [logits, dense.input] if with_features else logits
        return keras.Model(teacher.input, outputs, name="teacher_logits_model"), "head_dense pre-activation"
    if with_features:
        raise ConfigError(
            "--feature-weight needs a teacher whose classifier is a softmax Dense layer named head_dense "
            "(the hint matches the embedding it reads); this teacher has none: leave --feature-weight at 0"
        )
    log_probs = keras.layers.Lambda(lambda p: tf.math.log(tf.maximum(p, 1e-12)), name="teacher_log_probs")(
        teacher.output
    )
    return keras.Model(teacher.input, log_probs, name="teacher_logits_model"), "log-probabilities"


def _normalise(tf, images, preprocessing: Preprocessing, from_size: int):
    """float 0–255 RGB images at ``from_size`` → a model's input (resize, colour order, mean/std)."""
    from edgexfer.data.preprocess import normalisation_constants

    x = images
    if preprocessing.input_size != from_size:
        method = {"nearest": "nearest", "bicubic": "bicubic", "area": "area", "lanczos": "lanczos3"}.get(
            preprocessing.resize, "bilinear"
        )
        x = tf.image.resize(x, [preprocessing.input_size] * 2, method=method, antialias=True)
    if preprocessing.color == "BGR":
        x = x[..., ::-1]
    mean, std = normalisation_constants(preprocessing)
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _cached_teacher_features(model, images, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's logits (float32) and pooled features for ``images`` (``count`` of them),
    written batch by batch into preallocated arrays: the features in float16 where float32
    would take more than ``_FEATURE_CACHE_FLOAT32_BYTES``."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    logits_width, feature_width = (int(out.shape[-1]) for out in model.outputs)
    dtype = np.float16 if count * feature_width * 4 > _FEATURE_CACHE_FLOAT32_BYTES else np.float32
    logits = np.empty((count, logits_width), np.float32)
    features = np.empty((count, feature_width), dtype)
    infer = tf.function(lambda x: model(x, training=False))
    start = 0
    for batch in images:
        batch_logits, batch_features = infer(batch)
        end = start + int(batch_logits.shape[0])
        logits[start:end] = batch_logits.numpy()
        features[start:end] = batch_features.numpy()
        start = end
    if start != count:
        raise RuntimeError(f"teacher features: {start} images read, {count} expected")
    return logits, features


def _cached_dataset(train, student_pre: Preprocessing, targets, config: DistillConfig):
    """``((student images, cached teacher targets), labels)``: samples and targets (the
    logits, or ``(logits, features)``) permuted together once (no shuffle before the zip),
    then the zipped pairs are shuffled."""
    from edgexfer.data import make_dataset
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    order = np.random.default_rng(config.seed).permutation(len(train))
    samples = [train[i] for i in order]
    # Augmentation here reaches the student's view only (teacher_view "clean"); disabled options are a no-op.
    images = make_dataset(samples, student_pre, batch_size=256, cache=True, augment=config.augment, seed=config.seed)
    images = images.unbatch()
    if isinstance(targets, tuple):
        logits, features = targets
        teacher = tf.data.Dataset.from_tensor_slices((logits[order].astype(np.float32), features[order]))
    else:
        teacher = tf.data.Dataset.from_tensor_slices(targets[order].astype(np.float32))
    size = student_pre.input_size
    # Sized on the images alone, with or without cached features, so that a run with the feature
    # hint sees the same data order as one without (they are compared); the features then add
    # at most one more copy of their cache (buffer × width × 4 bytes, 112 MB at 32 px for Lite0).
    buffer = int(min(len(samples), max(1024, _SHUFFLE_BUFFER_BYTES // (size * size * 3 * 4))))
    return (
        tf.data.Dataset.zip((images, teacher))
        .map(lambda pair, t: ((pair[0], t), pair[1]))
        .shuffle(buffer, seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _online_dataset(train, student_pre: Preprocessing, teacher_pre: Preprocessing, config: DistillConfig):
    """``((student images, teacher images), labels)`` of the SAME augmented image, decoded at
    the larger of the two input sizes and resized for each model."""
    from edgexfer.data import make_dataset
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    size = max(student_pre.input_size, teacher_pre.input_size)
    raw = Preprocessing(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize=student_pre.resize)
    ds = make_dataset(
        train,
        raw,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        augment=config.augment,
        cache=True,
    )
    return ds.map(
        lambda x, y: ((_normalise(tf, x, student_pre, size), _normalise(tf, x, teacher_pre, size)), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _train_student(
    config: DistillConfig,
    spec_name: str,
    size: int,
    weights: str,
    num_classes: int,
    train_ds,
    val_ds,
    steps: int,
    teacher,
    alpha: float,
    online: bool,
    description: str,
    progress: bool,
    strategy=None,
    checkpoint: StageCheckpoint | None = None,
    phase: str = "student",
    val_steps: int = 1,
    feature_weight: float = 0.0,
    teacher_width: int | None = None,
):
    from edgexfer.backbones.registry import create_backbone
    from edgexfer.data import data_errors
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    strategy = strategy or tf.distribute.get_strategy()
    train_common.seed_everything(config.seed, config.deterministic)  # same init for student and baseline
    with strategy.scope():
        backbone = create_backbone(spec_name, size, weights, config.student_width)
        backbone.trainable = True
        if config.bn_momentum is not None:
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = config.bn_momentum
        head = build_head_layers(num_classes, config.head.dropout, config.head.hidden_units)
        student = build_classifier(backbone, head, name=f"{spec_name}_student")
        model = distiller(
            student,
            head,
            teacher,
            config.temperature,
            alpha,
            online,
            feature_weight,
            teacher_width,
            config.seed,
            correct_teacher=config.correct_teacher,
        )
        total = steps * config.epochs
        model.compile(
            optimizer=keras.optimizers.Adam(
                train_common.cosine_with_warmup(config.learning_rate, total, config.warmup_fraction)
            )
        )
    if checkpoint is not None and checkpoint.completed(phase) is not None:
        return student, checkpoint.restore(phase, student)
    callbacks = [
        train_common.rich_progress_callback(description, config.epochs, steps, enabled=progress),
        *train_common.tensorboard_callbacks(description.split()[0]),
    ]
    if config.early_stopping_patience:
        callbacks.append(train_common.restore_best_early_stopping(config.early_stopping_patience))
    if checkpoint is not None:
        callbacks += checkpoint.callbacks(phase, config.epochs)
    cluster = distributed.cluster_of(config.strategy, strategy)
    with data_errors():
        history = model.fit(
            **distributed.fit_inputs(strategy, cluster, train_ds, val_ds, steps, val_steps),
            epochs=config.epochs,
            verbose=0,
            callbacks=callbacks,
        )
    history = {key: [round(float(v), 5) for v in values] for key, values in history.history.items()}
    if checkpoint is not None:
        checkpoint.complete(phase, student, history)
    return student, history


def _unlabelled(config: DistillConfig, label_names, log):
    """``(samples with label -1, UnlabelledImages)`` of the ``unlabelled`` folder; ``([], None)`` without one."""
    if not config.unlabelled:
        return [], None
    from edgexfer.data import Sample

    images = stage_io.unlabelled_images(
        config.unlabelled, label_names, config.max_unlabelled_images, config.seed, strict=config.strict
    )
    if images.had_labels:
        log(
            f"unlabelled {config.unlabelled}: its class folders are ignored; the student learns these "
            f"{len(images.paths)} images from the teacher's soft targets only"
        )
    return [Sample(Path(p), -1) for p in images.paths], images


# Without DATA, the student's agreement with the teacher is measured (and its progress logged) on
# a seeded share of the unlabelled images, labelled by the teacher: 10 %, at least 100, at most 2,000.
_AGREEMENT_FRACTION, _AGREEMENT_MIN, _AGREEMENT_MAX = 0.1, 100, 2000


@dataclass
class _Images:
    """What distill trains and measures on."""

    train: list  # labelled training samples (none without DATA)
    unlabelled: list  # label -1: the soft targets alone teach them
    val: list  # labelled; without DATA, unlabelled images the teacher's answers are filled in for
    eval_split: str
    eval_samples: list
    folder: Path  # the folder whose images define the run (DATA, or the unlabelled folder without it)
    scanned: Any  # that folder scanned (Dataset, UnlabelledImages): its fingerprint keys checkpoint and manifest
    split: dict | None  # DATA's split settings; None without DATA
    labels_read: bool


def _labelled_images(source, data_dir, config: DistillConfig, log) -> _Images:
    dataset, split = stage_io.scan_data(source, data_dir, strict=config.strict, role="teacher")
    train = limit_samples(dataset.split("train"), config.max_train_images, config.seed)
    unlabelled, _ = _unlabelled(config, source.manifest.label_names, log)
    val = dataset.split("val")
    if not val:
        raise ConfigError(f"{data_dir}: the validation split is empty; add images to the folder")
    eval_split, eval_samples = stage_io.evaluation_samples(dataset)
    return _Images(train, unlabelled, val, eval_split, eval_samples, Path(data_dir), dataset, split, True)


def label_free_problem(config: DistillConfig, has_unlabelled: bool) -> str | None:
    """Why ``config`` cannot distill without DATA (on unlabelled images alone), or ``None``."""
    if not has_unlabelled:
        return (
            "distill needs labelled images (DATA, or data: in a pipeline) or unlabelled ones alone (--unlabelled "
            "DIR, or unlabelled:), whose teacher's answers the student learns; give one of them"
        )
    for given, key, why in (
        (config.baseline, "baseline", "trains the same student on DATA's labels"),
        (config.correct_teacher, "correct_teacher", "corrects the teacher with DATA's labels"),
        (config.max_train_images, "max_train_images", "caps DATA's training images (max_unlabelled_images caps these)"),
    ):
        if given:
            flag = "--" + key.replace("_", "-")
            return f"{flag} ({key}: in a pipeline) {why}, and without DATA there are none: give DATA or drop {flag}"
    return None


def _label_free_images(config: DistillConfig, label_names, log) -> _Images:
    """No DATA: every unlabelled image trains; a seeded share of them is set aside (still trained
    on) to measure the student's agreement with the teacher, whose answers become its labels."""
    problem = label_free_problem(config, has_unlabelled=bool(config.unlabelled))
    if problem:
        raise ConfigError(problem)
    unlabelled, images = _unlabelled(config, label_names, log)
    count = min(len(unlabelled), max(_AGREEMENT_MIN, min(_AGREEMENT_MAX, round(_AGREEMENT_FRACTION * len(unlabelled)))))
    chosen = np.random.default_rng(config.seed).choice(len(unlabelled), count, replace=False)
    val = [unlabelled[i] for i in sorted(chosen)]
    return _Images([], unlabelled, val, "unlabelled", val, Path(config.unlabelled), images, None, False)


@recorded  # the call is stored in the artifact's manifest (edgexfer reproduce)
def distill(teacher_dir, data_dir, out, config: DistillConfig, *, progress: bool = True, log=print) -> Artifact:
    """Distill the Keras teacher artifact ``teacher_dir`` into ``config.student`` on ``data_dir``
    (labelled), plus ``config.unlabelled``; with ``data_dir`` None on the unlabelled images alone,
    reading no label (e.g. after source-free ``adapt --method shot``)."""
    from edgexfer.data import data_errors, make_dataset
    from edgexfer.tf_env import import_tf

    source = stage_io.keras_artifact(teacher_dir, "TEACHER")
    refuse_input_as_out(out, source)
    teacher_manifest = source.manifest
    teacher_pre = teacher_manifest.preprocessing
    spec, size, weights, student_pre = student_settings(config, teacher_pre)
    if data_dir is None:
        data = _label_free_images(config, teacher_manifest.label_names, log)
    else:
        data = _labelled_images(source, data_dir, config, log)
    train, unlabelled, labels_read = data.train, data.unlabelled, data.labels_read
    num_classes = teacher_manifest.num_classes
    # Without DATA the hard-label term has no image: the soft targets are the whole loss.
    alpha = config.alpha if labels_read else 1.0

    tf, keras = import_tf()
    train_common.seed_everything(config.seed, config.deterministic)
    strategy = train_common.make_strategy(config.strategy)
    user_config, cluster = config, distributed.cluster_of(config.strategy, strategy)
    config = distributed.worker_config(config, cluster)
    checkpoint = stage_checkpoint(
        "distill", out, user_config, source, data.folder, data.scanned, cluster, strategy, log
    )
    timings: dict[str, float] = {}
    started = time.perf_counter()
    teacher = load_keras_model(source.model_path)
    hinted = config.feature_weight > 0
    logits_model, logits_source = teacher_logits_model(teacher, with_features=hinted)
    teacher_width = int(logits_model.outputs[1].shape[-1]) if hinted else None
    eval_split, eval_samples = data.eval_split, data.eval_samples
    x_eval_teacher, y_eval = stage_io.load_uint8(eval_samples, teacher_pre)
    teacher_eval = measure.keras_probs(teacher, x_eval_teacher, teacher_pre).argmax(1)
    del x_eval_teacher
    teacher_accuracy = float((teacher_eval == y_eval).mean()) if labels_read else None
    if not labels_read:  # the teacher's answers are the labels the student's agreement is measured on
        from edgexfer.data import Sample

        y_eval = teacher_eval
        eval_samples = data.val = [Sample(s.path, int(a)) for s, a in zip(eval_samples, teacher_eval)]
    val = data.val

    online = config.augment.enabled and config.teacher_view == "augmented"
    labelled_count, train = len(train), train + unlabelled
    # Multi-worker: this worker's shard (labelled and unlabelled images alike) at its share of the batch.
    train, shard_info = distributed.worker_shard(
        train, cluster, config.seed, batch_size=config.batch_size, global_batch_size=user_config.batch_size, log=log
    )
    steps = max(1, math.ceil(len(train) / config.batch_size))
    val_steps = max(1, math.ceil(len(val) / config.batch_size))
    if online:
        train_ds = _online_dataset(train, student_pre, teacher_pre, config)
        logits_note = "online (augmentation on: the teacher sees each augmented image)"
        features_note = "online"
        teacher_errors = None  # the teacher runs on each augmented view: no single prediction to count
    else:
        with train_common.timed(timings, "teacher_logits_seconds"), data_errors():
            images = make_dataset(train, teacher_pre, batch_size=256, cache=False, return_labels=False)
            if hinted:
                logits, features = _cached_teacher_features(logits_model, images, len(train))
            else:
                logits = logits_model.predict(images, verbose=0)
        train_ds = _cached_dataset(train, student_pre, (logits, features) if hinted else logits, config)
        labels = np.array([sample.label for sample in train])
        labelled = labels >= 0  # unlabelled images carry -1
        teacher_errors = int(((logits.argmax(1) != labels) & labelled).sum()) if labels_read else None
        logits_note = f"cached ({len(logits)} × {logits.shape[1]}, computed once)"
        if config.augment.enabled:
            logits_note += " on the un-augmented images; the student sees augmented views"
        if hinted:
            features_note = f"cached ({features.shape[0]} × {features.shape[1]}, {features.dtype})"
            logits_note += f", features {features_note}"
            del features
        if labels_read:
            logits_note += (
                f"; it misses the label on {teacher_errors} of {int(labelled.sum())} labelled images"
                f"{' (their soft targets corrected)' if config.correct_teacher else ''}"
            )
    val_ds = make_dataset(val, student_pre, batch_size=config.batch_size, cache=True)
    if labels_read:
        images_note = f"{labelled_count} images{f' + {len(unlabelled)} unlabelled' if unlabelled else ''}"
    else:
        images_note = (
            f"{len(unlabelled)} unlabelled images and no label (no DATA: the soft targets are the whole loss; "
            f"agreement with the teacher measured on {len(val)} of them)"
        )
    log(
        f"distilling {teacher_manifest.backbone} ({teacher_pre.input_size}px) into {spec.name} at {size}px "
        f"(weights {weights}, T={config.temperature}, alpha={alpha}"
        f"{f', feature hint β={config.feature_weight}' if hinted else ''}) on {images_note}; "
        f"teacher logits {logits_note}"
    )

    with train_common.timed(timings, "distill_seconds"):
        student, history = _train_student(
            config,
            spec.name,
            size,
            weights,
            num_classes,
            train_ds,
            val_ds,
            steps,
            logits_model if online else None,
            alpha,
            online,
            f"distill → {spec.name}",
            progress,
            strategy=strategy,
            checkpoint=checkpoint,
            phase="student",
            val_steps=val_steps,
            feature_weight=config.feature_weight,
            teacher_width=teacher_width,
        )
    distill_step_seconds = timings["distill_seconds"] / (steps * config.epochs)
    allreduce = int(sum(int(np.prod(v.shape)) for v in student.trainable_variables)) * 4
    if cluster.multi_worker:  # evaluate and save a plain copy: a distributed predict returns a shard
        student = distributed.local_copy(student)
    x_eval, _ = stage_io.load_uint8(eval_samples, student_pre)
    student_eval = measure.keras_probs(student, x_eval, student_pre).argmax(1)
    teacher_agreement = float((student_eval == teacher_eval).mean())
    student_accuracy = student_val = None  # without DATA no label is read: agreement only
    if labels_read:
        student_accuracy = float((student_eval == y_eval).mean())
        x_val, y_val = stage_io.load_uint8(val, student_pre)
        student_val = measure.accuracy(measure.keras_probs(student, x_val, student_pre), y_val)

    baseline = None
    if config.baseline:
        log(f"baseline: the same {spec.name} without distillation (alpha 0, no hint, same init, data and schedule)")
        with train_common.timed(timings, "baseline_seconds"):
            plain, plain_history = _train_student(
                config,
                spec.name,
                size,
                weights,
                num_classes,
                train_ds,
                val_ds,
                steps,
                None,
                0.0,
                online,
                f"baseline {spec.name}",
                progress,
                strategy=strategy,
                checkpoint=checkpoint,
                phase="baseline",
                val_steps=val_steps,
            )
            if cluster.multi_worker:
                plain = distributed.local_copy(plain)
        baseline = {
            "accuracy": measure.accuracy(measure.keras_probs(plain, x_eval, student_pre), y_eval),
            "val_accuracy": measure.accuracy(measure.keras_probs(plain, x_val, student_pre), y_val),
            "history": plain_history,
        }

    from edgexfer.evaluate.macs import keras_macs

    with distributed.writing_artifact_on_chief(out, cluster) as writer:
        model_path = writer.file(MODEL_FILE)
        save_keras_model(student, model_path)
        teacher_stats = measure.weight_stats(teacher)
        student_stats = measure.weight_stats(student)
        size_before = measure.file_sizes(source.model_path)
        size_after = measure.file_sizes(model_path)
        timings["total_seconds"] = round(time.perf_counter() - started, 3)
        metrics: dict[str, Any] = {
            "eval_split": eval_split,
            "eval_images": int(len(y_eval)),
            "teacher_accuracy": teacher_accuracy,
            "accuracy_before": teacher_accuracy,
            "accuracy_after": student_accuracy,
            "student_accuracy": student_accuracy,
            **({f"{eval_split}_accuracy": student_accuracy} if labels_read else {}),
            "val_accuracy": student_val,
            "accuracy_gap_to_teacher": round(teacher_accuracy - student_accuracy, 6) if labels_read else None,
            # the share of the evaluation images (without DATA: unlabelled ones it trained on) where
            # the student's answer is the teacher's
            "teacher_agreement": round(teacher_agreement, 6),
            "labels_read": labels_read,
            "params_teacher": teacher_stats["params"],
            "params_before": teacher_stats["params"],
            "params": student_stats["params"],
            "params_after": student_stats["params"],
            "params_ratio": round(teacher_stats["params"] / student_stats["params"], 2),
            "macs_teacher": keras_macs(teacher),  # multiply-accumulates per image
            "macs": keras_macs(student),
            "size_bytes_before": size_before["size_bytes"],
            "size_bytes_after": size_after["size_bytes"],
            "gzip_bytes_before": size_before["gzip_bytes"],
            "gzip_bytes_after": size_after["gzip_bytes"],
            "model_bytes": size_after["size_bytes"],
            "sparsity_before": teacher_stats["sparsity"],
            "sparsity_after": student_stats["sparsity"],
            "teacher_logits": "online" if online else "cached",
            "teacher_logits_source": logits_source,
            "temperature": config.temperature,
            "alpha": alpha,
            "feature_weight": config.feature_weight,
            "correct_teacher": config.correct_teacher,
            # labelled training images (this worker's share) whose cached teacher logits miss the label
            "teacher_errors_on_labelled": teacher_errors,
            "history": history,
            "timings_seconds": timings,
            "splits": {"train": labelled_count, "val": len(val), eval_split: int(len(y_eval))}
            if labels_read
            else {"train": 0, "unlabelled": len(unlabelled), "agreement": len(val)},
            "unlabelled_images": len(unlabelled),
            "distributed": {
                **distributed.describe(cluster, shard_info, user_config.batch_size),
                "allreduce_bytes_per_step": allreduce,
                "step_seconds": round(distill_step_seconds, 4),
            },
            "resumed": checkpoint.resumed,
            "peak_rss_mb": round(train_common.peak_rss_mb(), 1),
        }
        if hinted:
            metrics.update(
                teacher_features=features_note,
                teacher_feature_width=teacher_width,
                feature_loss=history["feature_loss"][-1],
            )
        if baseline is not None:
            metrics.update(
                baseline_accuracy=baseline["accuracy"],
                baseline_val_accuracy=baseline["val_accuracy"],
                distillation_gain=round(student_accuracy - baseline["accuracy"], 6),
                baseline_history=baseline["history"],
            )
        manifest = Manifest(
            stage="distill",
            label_names=list(teacher_manifest.label_names),
            preprocessing=student_pre,
            backbone=spec.name,
            weights=f"imagenet: {spec.weights_source}" if weights == "imagenet" else weights,
            config=user_config.model_dump(),
            model_file=MODEL_FILE,
            parent=source.parent_ref(),
            dataset={"path": str(data.folder.resolve()), **data.scanned.fingerprint()},
            seed=config.seed,
            extra={
                "width": config.student_width,
                # without DATA no split is recorded: later stages take the teacher's (run_split)
                **({"split": data.split} if labels_read else {}),
                "strategy": config.strategy,
                "workers": cluster.workers,
                "teacher": {
                    "path": str(source.path.resolve()),
                    "backbone": teacher_manifest.backbone,
                    "input_size": teacher_pre.input_size,
                    "params": teacher_stats["params"],
                },
            },
        )
        artifact = writer.commit(manifest, metrics)
    checkpoint.finish()
    return artifact
