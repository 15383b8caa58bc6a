"""Source-free adaptation: SHOT (Liang, Hu & Feng, "Do We Really Need to Access the Source Data?",
ICML 2020; reference code github.com/tim-learn/SHOT).

Only the source MODEL and unlabelled TARGET images are read; no source image. The classifier
(every layer after the penultimate features: dropout and the final Dense) is frozen as the
"hypothesis"; the top ``train_layers`` weighted layers below it learn, on the target images, to
produce features that the frozen classifier labels confidently and diversely:

- information maximisation: the mean per-sample entropy of the predictions minus the entropy of
  their mean (confident, yet not all one class);
- plus ``shot_weight`` (SHOT's β) × the cross-entropy to self-supervised pseudo-labels: class
  centroids in feature space weighted by the predicted probabilities, each image labelled by its
  nearest centroid (cosine distance), then the centroids recomputed from those labels and the
  labels recomputed once more. The labels are recomputed at the start of every epoch.

BatchNorm: with ``bn="domain"`` (the default for shot) every BatchNorm layer carries TARGET
statistics, estimated over all target images (PreciseBN) before training and re-estimated for
the trained layers after every epoch; the written model carries them. That is the natural
choice with no source data, it is what SHOT's reference does (its network trains in train mode
on target batches), and it measured better than the model's own statistics (``bn="frozen"``)
on mnist-5k → uci-digits (Lite0 64 px demo teacher: 27.8 % against 18.8 %). It assumes the
source model carries SOURCE statistics, as a model trained with BatchNorm in train mode does.
``finetune`` keeps the pretraining statistics instead (BN frozen); from such a model shot
reached 27.8 %, from the same model re-fitted under source statistics (``adapt --method adabn
--output-stats source`` with the source as both domains: source data only) 86.7 %. shot says
so when its input comes straight from finetune. The BatchNorm scales and offsets stay as
they are, as in ``adapt``.

Restarts: SHOT's outcome depends on its batch order. From one CORAL model of the demo, three
seeds ended at 90.3, 69.5 and 74.5 % on uci-digits (the last with 7/8/9 permuted), and their
information maximisation on the unlabelled target ranked them the same way. ``restarts=N`` trains
N times from the same start, on the same cached features, and keeps the run that scores highest
(the objective SHOT maximises, so picking by it reads no label); restart 1 is the run without
restarts. Like any unsupervised score it can mis-rank near-ties.

Speed: as in ``adapt``, the frozen part below the trained layers runs once per image (its
output is cached) and each epoch costs only the top of the network. The loop is epoch by
epoch: pseudo-labels, then one pass over the target, then the statistics refreshed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, refuse_input_as_out, writing_artifact
from edgexfer.data.subset import random_subset
from edgexfer.errors import ConfigError
from edgexfer.keras_io import MODEL_FILE, load_keras_model, save_keras_model
from edgexfer.train import common
from edgexfer.train.adapt_record import adapted_manifest, adapted_metrics
from edgexfer.train.batchnorm import SplitRunner, batchnorm_layers, layers_to_train, split_at_cut
from edgexfer.train.resume import (
    LoopCheckpoint,
    StageCheckpoint,
    assign_arrays,
    optimizer_arrays,
    restore_optimizer,
    variable_arrays,
)

# A fine-tuned artifact keeps its backbone's pretraining BatchNorm statistics (finetune trains with
# BN frozen), not source-domain ones, so swapping in target statistics is not what SHOT assumes.
PRETRAINING_STATISTICS = (
    "this model comes straight from finetune, so its BatchNorm layers carry the backbone's pretraining "
    "statistics, not source-domain ones; shot assumes source statistics (measured on mnist-5k → uci-digits: "
    "28 % from the fine-tuned model, 87 % from the same model re-fitted under source statistics). Where you "
    "have the source data, prepare the source model once with: edgexfer adapt MODEL --source SRC --target SRC "
    "--method adabn --output-stats source --out SOURCE_MODEL"
)
# Layers a separable classifier head may hold: its final Dense and weightless dropout/activations.
_HEAD_LAYERS = ("Dropout", "Activation", "Softmax", "Dense")


# ----------------------------------------------------------------------------- the losses (numpy + TF)


def centroid_pseudo_labels(features: np.ndarray, probs: np.ndarray, refinements: int = 1) -> np.ndarray:
    """SHOT's self-supervised pseudo-labels: probability-weighted class centroids of the
    features (with a constant 1 appended and L2-normalised, as in the reference code), each
    image labelled by its nearest centroid by cosine distance; then ``refinements`` times the
    centroids are recomputed from those hard labels and the images relabelled. Classes the model
    never predicts get no centroid (the reference's ``labelset``)."""
    features = np.concatenate([features.astype(np.float64), np.ones((len(features), 1))], axis=1)
    features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
    num_classes = probs.shape[1]
    present = np.flatnonzero(np.bincount(probs.argmax(1), minlength=num_classes) > 0)
    weights = probs.astype(np.float64)
    labels = probs.argmax(1)
    for _ in range(refinements + 1):
        centroids = weights.T @ features / (1e-8 + weights.sum(0)[:, None])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
        similarity = features @ centroids[present].T  # cosine distance = 1 − similarity
        labels = present[similarity.argmax(1)]
        weights = np.eye(num_classes)[labels]
    return labels.astype(np.int32)


def information_maximisation(probs, epsilon: float = 1e-5):
    """Mean per-sample entropy minus the entropy of the mean prediction (a TF tensor; lower is better)."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    entropy = tf.reduce_mean(-tf.reduce_sum(probs * tf.math.log(probs + epsilon), axis=1))
    mean = tf.reduce_mean(probs, axis=0)
    diversity = -tf.reduce_sum(mean * tf.math.log(mean + epsilon))
    return entropy - diversity


def prediction_summary(probs: np.ndarray) -> dict[str, float]:
    """Label-free statistics of predictions: mean confidence, mean per-sample entropy and the
    entropy of the predicted class histogram (both divided by log K: 0..1), and their
    information-maximisation score (class entropy of the mean − mean entropy, by log K)."""
    k = probs.shape[1]
    log_k = math.log(k) if k > 1 else 1.0
    sample_entropy = float(np.mean(-(probs * np.log(probs + 1e-12)).sum(1))) / log_k
    mean = probs.mean(0)
    mean_entropy = float(-(mean * np.log(mean + 1e-12)).sum()) / log_k
    counts = np.bincount(probs.argmax(1), minlength=k) / max(len(probs), 1)
    class_entropy = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum()) / log_k
    return {
        "target_mean_confidence": round(float(probs.max(1).mean()), 4),
        "target_mean_entropy": round(sample_entropy, 4),
        "target_predicted_class_entropy": round(class_entropy, 4),
        "target_information_maximisation": round(mean_entropy - sample_entropy, 4),
    }


# ----------------------------------------------------------------------------- the model's anatomy


def classifier_head(model):
    """``(features_layer, head_layers)``: the layer whose output the final Dense classifies and
    the layers after it (the frozen hypothesis: that Dense, with only dropout/activations
    besides). A hidden Dense layer below it is a feature layer (SHOT's bottleneck) and trains.
    ``ConfigError`` naming what is missing: no BatchNorm, or no final Dense on a features layer."""
    name = getattr(model, "name", "model")
    if not batchnorm_count(model):
        raise ConfigError(
            f"shot needs BatchNorm layers (it adapts with target statistics) and model {name!r} has none; "
            "use a source-based method (--method coral|dann|pseudo-label with --source) instead"
        )
    layers = model.layers
    position = len(layers) - 1
    while position > 0 and type(layers[position]).__name__ in ("Activation", "Softmax"):
        position -= 1
    dense = layers[position]
    producer = None
    if type(dense).__name__ == "Dense" and len(dense._inbound_nodes) == 1:
        inbound = dense._inbound_nodes[0].inbound_layers
        producer = inbound[0] if isinstance(inbound, list) and len(inbound) == 1 else inbound
        if isinstance(producer, list) or type(producer).__name__ == "InputLayer" or producer not in layers:
            producer = None
    if producer is None or len(dense.input_shape) != 2:
        last = layers[position]
        raise ConfigError(
            f"shot needs a separable classifier head (a final Dense layer on a features layer, e.g. after "
            f"global pooling) and model {name!r} ends in {type(last).__name__} {last.name!r}; adapt it with a "
            "source-based method (--method coral|dann|pseudo-label with --source)"
        )
    head = layers[layers.index(producer) + 1 :]
    odd = [
        layer for layer in head if type(layer).__name__ not in _HEAD_LAYERS or (layer.weights and layer is not dense)
    ]
    if odd:
        raise ConfigError(
            f"shot freezes the classifier after {producer.name!r} and it holds {type(odd[0]).__name__} "
            f"{odd[0].name!r} besides the final Dense; adapt this model with a source-based method "
            "(--method coral|dann|pseudo-label with --source)"
        )
    return producer, head


def batchnorm_count(model) -> int:
    return len(batchnorm_layers(model))


# ----------------------------------------------------------------------------- the stage


def run_shot(
    model_dir: str | Path,
    target: str | Path,
    out: str | Path,
    config,
    *,
    progress: bool = False,
    log: Callable[..., Any] = print,
) -> Artifact:
    """SHOT from the artifact ``model_dir`` on the unlabelled ``target`` images into ``out``
    (``config``: an ``AdaptConfig`` with method ``shot``). Reads no source image."""
    from edgexfer.data import Sample, data_errors, load_arrays
    from edgexfer.data.class_map import scan_unlabelled
    from edgexfer.tf_env import import_tf

    parent = Artifact(model_dir)
    refuse_input_as_out(out, parent)
    manifest = parent.manifest
    labels = manifest.label_names
    preprocessing = manifest.preprocessing
    started = time.perf_counter()
    if manifest.stage == "finetune" and config.bn_mode == "domain":
        log(f"note: {PRETRAINING_STATISTICS}")
    target_data = scan_unlabelled(target, labels, config.class_map, strict=config.strict)
    if target_data.had_labels:
        log(f"target {target}: has class folders; their labels are ignored — shot uses only the images")
    target_paths = random_subset(target_data.paths, config.max_target_images, config.seed)  # as adapt draws
    if len(target_paths) < 2:
        raise ConfigError(f"shot needs at least 2 target images; {target} has {len(target_paths)}")

    import_tf()
    common.seed_everything(config.seed, config.deterministic)
    timings: dict[str, float] = {}
    with data_errors(), writing_artifact(out) as writer:
        model = load_keras_model(parent.model_path)
        classifier_head(model)  # refuse a model shot cannot adapt before any work
        with common.timed(timings, "load_seconds"):
            xt, _ = load_arrays([Sample(p, -1) for p in target_paths], preprocessing)
        log(
            f"adapt (shot, source-free, BatchNorm {config.bn_mode}): {len(xt)} unlabelled target images at "
            f"{preprocessing.input_size}px, no source images"
        )
        # Claimed once the inputs were read (a bad input leaves nothing in the cache); tied to the
        # config and inputs, so a changed command starts afresh (edgexfer.train.resume).
        checkpoint = StageCheckpoint(
            "adapt",
            out,
            {
                "config": config.model_dump(),
                "parent": parent.parent_ref()["sha256"],
                "target": {"path": str(Path(target).resolve()), **target_data.fingerprint()},
            },
            log=log,
        )
        shot = Shot(model, preprocessing, config, xt, log=log, progress=progress, checkpoint=checkpoint)
        with common.timed(timings, "adapt_seconds"):
            history = shot.run()
        shot.finish()
        before = {"source_val_accuracy": None, **shot.input_summary}  # no source image to score on
        after = {"source_val_accuracy": None, **shot.output_summary}
        save_keras_model(model, writer.file(MODEL_FILE))
        timings["total_seconds"] = round(time.perf_counter() - started, 3)
        record = {
            "method": "shot",
            "bn": config.bn_mode,
            "source_free": True,
            "source_images_used": 0,
            "target_labels_used": False,
        }
        metrics = adapted_metrics(
            {
                **record,
                "after": None,
                "output_stats": "target" if config.bn_mode == "domain" else "model",
                "source_val_accuracy": None,
                "source_stats_source_val_accuracy": None,
                "input": before,
                "output": after,
            },
            target_had_labels=target_data.had_labels,
            images={"source_train": 0, "source_val": 0, "target": len(xt)},
            split=shot.split,
            history=history,
            resumed=checkpoint.resumed,
            model=model,
            model_file=writer.file(MODEL_FILE),
            timings=timings,
            frozen_head=[layer.name for layer in shot.head],
        )
        child = adapted_manifest(
            parent,
            config,
            # the target domain only: no source dataset was read (``source`` is absent on purpose).
            {"path": str(Path(target).resolve()), "domain": "target", **target_data.fingerprint()},
            {**record, "after": None, "output_stats": metrics["output_stats"]},
        )
        artifact = writer.commit(child, metrics)
    checkpoint.finish()
    return artifact


def _empty_history() -> dict[str, list]:
    return {"im_loss": [], "pseudo_label_loss": [], "pseudo_label_agreement": []}


def _phase(restart: int, restarts: int) -> str:
    """The name a restart's progress and checkpoint go by ("shot" when there is one)."""
    return "shot" if restarts == 1 else f"shot restart {restart + 1}/{restarts}"


class _RestartState:
    """What the restarts carry between them: the finished restarts' scores, the best one so far
    (its index, history and weights) and the history of the restart in progress."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.best: int | None = None
        self.best_history: dict[str, list] = {}
        self.best_arrays: dict[str, np.ndarray] = {}
        self.history: dict[str, list] = _empty_history()

    def add(self, score: dict[str, Any], history: dict[str, list], arrays: dict[str, np.ndarray]) -> None:
        self.results.append(score)
        key = "target_information_maximisation"
        if self.best is None or score[key] > self.results[self.best][key]:
            self.best = len(self.results) - 1
            self.best_history = {k: list(v) for k, v in history.items()}
            self.best_arrays = {f"best.{name}": value for name, value in arrays.items()}

    def restore(self, saved: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.history = {key: list(saved["history"][key]) for key in self.history}
        self.results = list(saved.get("restarts", []))
        self.best = saved.get("best")
        self.best_arrays = {name: value for name, value in arrays.items() if name.startswith("best.")}
        if self.best is not None:
            self.best_history = saved["best_history"]


class Shot:
    """The trained top of the model on cached target features, and SHOT's epoch loop."""

    def __init__(self, model, preprocessing, config, xt: np.ndarray, *, log, progress, checkpoint=None):
        from edgexfer.tf_env import import_tf

        tf, keras = import_tf()
        self.tf, self.keras = tf, keras
        self.model, self.config, self.log, self.progress = model, config, log, progress
        self.xt = xt
        self.rng: np.random.Generator | None = None  # each restart's batch order (set in run)
        # The input's and the kept model's prediction statistics on the target (set in run).
        self.input_summary: dict[str, float] = {}
        self.output_summary: dict[str, float] = {}
        # Interrupted runs resume after the last completed epoch: the trained weights, the trained
        # part's BatchNorm statistics, the optimizer and the position of the random stream are
        # saved, so the resumed run continues the same stream and gives the same model.
        self.checkpoint = checkpoint
        self._loop = LoopCheckpoint(checkpoint) if checkpoint is not None else None
        self.num_classes = int(model.output_shape[-1])

        features_layer, self.head = classifier_head(model)
        # The head (the hypothesis) stays frozen; the feature layers below it train.
        trained = layers_to_train(model, features_layer, config.train_layers)
        if not trained:
            raise ConfigError(
                "shot trains the feature layers below the frozen classifier; --train-layers 0 leaves none"
            )
        self.split = split_at_cut(model, features_layer, trained, name="shot")
        self._full_stats = self.split.full_stats(config.batch_size)
        self._top_stats = self.split.top_stats(config.batch_size)
        self.runner = SplitRunner(self.split, preprocessing, config.batch_size)
        self.target_stats = config.bn_mode == "domain"
        if self.target_stats:
            self.log("estimating BatchNorm statistics of the target images")
            self._full_stats.assign(self._full_stats.estimate(self.runner.batches(self.xt, images=True)))
        # The frozen bottom runs once, under the statistics the written model will carry.
        self.zt = self.runner.bottom(self.xt)

    # -- helpers ------------------------------------------------------------------------------
    def _refresh_top_stats(self) -> None:
        """Re-estimate the target statistics of the BN layers in the trained part (their inputs
        change as the layers below them train)."""
        if self.target_stats and self.split.top_bns:
            self._top_stats.assign(self._top_stats.estimate(self.runner.batches(self.zt, images=False)))

    # -- training -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train ``config.restarts`` times from the same start (each restart its own batch order)
        and keep the restart whose predictions on the target score the highest information
        maximisation (SHOT's own objective, label-free; ties go to the earlier restart). The
        history is the kept restart's; ``restarts`` lists every restart's score. Sets
        ``input_summary`` and ``output_summary``: the label-free statistics of the input model's
        and the kept model's predictions on the target."""
        tf, keras = self.tf, self.keras
        config = self.config
        epochs = config.epochs_for("shot")
        restarts = config.restarts
        batch = config.batch_size
        steps = max(1, math.ceil(len(self.zt) / batch))
        total = max(steps * epochs, 1)
        optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(config.learning_rate, total))
        ce = keras.losses.SparseCategoricalCrossentropy()
        top, variables, beta = self.split.top, self.split.variables, float(config.shot_weight)

        @tf.function
        def step(z, pseudo):
            with tf.GradientTape() as tape:
                _, probs = top(z, training=False)  # the frozen head's dropout stays off, as in SHOT's
                im = information_maximisation(probs)
                pl = ce(pseudo, probs)
                loss = im + beta * pl
            gradients = tape.gradient(loss, variables)
            optimizer.apply_gradients([(g, v) for g, v in zip(gradients, variables) if g is not None])
            return im, pl

        statistics = [v for layer in self.split.top_bns for v in (layer.moving_mean, layer.moving_variance)]
        optimizer.build(variables)  # the same variables in the same order in every run
        # Every restart starts from here: the input weights, statistics and a fresh optimizer.
        initial = {
            **variable_arrays("weights", variables),
            **variable_arrays("statistics", statistics),
            **optimizer_arrays(optimizer),
        }
        input_probs = self.runner.top(self.zt)[1]
        self.input_summary = prediction_summary(input_probs)
        input_predictions = input_probs.argmax(1)
        state = _RestartState()
        first, start = self._resume(variables, statistics, optimizer, state, epochs)
        for restart in range(first, restarts):
            phase = _phase(restart, restarts)
            if restart > first or start == 0:  # a fresh restart (not one the checkpoint continues)
                assign_arrays("weights", variables, initial)
                assign_arrays("statistics", statistics, initial)
                assign_arrays("optimizer", optimizer.variables, initial)
                # Restart 0 draws what a run without restarts draws; the others their own streams.
                self.rng = np.random.default_rng(config.seed if restart == 0 else [config.seed, restart])
                state.history = _empty_history()
                start = 0
            history = state.history
            with common.step_progress(
                f"adapt {phase}", steps * epochs, self.progress, completed=start * steps
            ) as advance:
                for epoch in range(start, epochs):
                    features, probs = self.runner.top(self.zt)
                    pseudo = centroid_pseudo_labels(features, probs)
                    history["pseudo_label_agreement"].append(round(float((pseudo == probs.argmax(1)).mean()), 4))
                    order = self.rng.permutation(len(self.zt))
                    if len(order) < steps * batch:  # fixed batch shapes: one trace for the whole run
                        order = np.concatenate([order, self.rng.choice(len(self.zt), steps * batch - len(order))])
                    ims, pls = [], []
                    for s in range(steps):
                        idx = order[s * batch : (s + 1) * batch]
                        im, pl = step(self.zt[idx], pseudo[idx])
                        ims.append(float(im))
                        pls.append(float(pl))
                        advance()
                    self._refresh_top_stats()
                    history["im_loss"].append(round(float(np.mean(ims)), 5))
                    history["pseudo_label_loss"].append(round(float(np.mean(pls)), 5))
                    if self._loop is not None:
                        self._loop.save(
                            {
                                "restart": restart,
                                "epochs_done": epoch + 1,
                                "history": history,
                                "rng": self.rng.bit_generator.state,
                                "restarts": state.results,
                                "best": state.best,
                                "best_history": state.best_history,
                            },
                            {
                                **variable_arrays("weights", variables),
                                **variable_arrays("statistics", statistics),
                                **optimizer_arrays(optimizer),
                                **state.best_arrays,
                            },
                            phase=phase,
                            epochs_done=epoch + 1,
                            epochs=epochs,
                        )
            predictions = self.runner.top(self.zt)[1]
            score = {
                "restart": restart + 1,
                **prediction_summary(predictions),
                "agreement_with_input": round(float((predictions.argmax(1) == input_predictions).mean()), 4),
            }
            state.add(
                score, history, {**variable_arrays("weights", variables), **variable_arrays("statistics", statistics)}
            )
            if restarts > 1:
                self.log(
                    f"  {phase}: information maximisation {score['target_information_maximisation']:.4f}, "
                    f"agreement with the input model {score['agreement_with_input']:.4f}"
                )
        if restarts > 1:  # put the kept restart's model back
            assign_arrays("best.weights", variables, state.best_arrays)
            assign_arrays("best.statistics", statistics, state.best_arrays)
            self.log(
                f"  adapt shot: kept restart {state.best + 1} of {restarts} (the highest information maximisation "
                "on the target images; no label read)"
            )
        kept = state.results[state.best]
        self.output_summary = {key: kept[key] for key in self.input_summary}  # the model as it is now
        history = state.best_history
        if epochs:
            self.log(
                f"  adapt shot: {epochs} epochs, information maximisation {history['im_loss'][-1]:.4f}, "
                f"pseudo-label loss {history['pseudo_label_loss'][-1]:.4f}"
            )
        restart_record = {"restarts": state.results, "kept_restart": state.best + 1} if restarts > 1 else {}
        return {"epochs": epochs, **history, **restart_record}

    def _resume(self, variables, statistics, optimizer, state: _RestartState, epochs: int) -> tuple[int, int]:
        """``(restart, epoch)`` to start from: ``(0, 0)``, or where the checkpoint stopped (then the
        weights, statistics, optimizer, random stream, history and the finished restarts' scores
        and best model are put back)."""
        saved = self._loop.load() if self._loop is not None else None
        if saved is None:
            return 0, 0
        saved_state, arrays = saved
        restart, done = int(saved_state.get("restart", 0)), int(saved_state.get("epochs_done", 0))
        if not (0 <= restart < self.config.restarts and 0 < done <= epochs):
            return 0, 0
        assign_arrays("weights", variables, arrays)
        assign_arrays("statistics", statistics, arrays)
        restore_optimizer(optimizer, variables, arrays)
        self.rng = np.random.default_rng(self.config.seed)
        self.rng.bit_generator.state = saved_state["rng"]
        state.restore(saved_state, arrays)
        self.checkpoint.note_resume(_phase(restart, self.config.restarts), done, epochs)
        return restart, done

    def finish(self) -> None:
        """Restore the trainable flags (the statistics in place are the ones to keep)."""
        self.split.restore_trainable()
