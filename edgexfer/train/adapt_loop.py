"""adapt's training loop: the trained top of the model on cached bottom features, per-domain
BatchNorm statistics, the methods' losses, pseudo-label rounds, and a checkpoint per completed
epoch (see :mod:`edgexfer.train.adapt` for the methods and :mod:`edgexfer.train.resume`)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError
from edgexfer.seeding import derive_seed
from edgexfer.train import common as train_common
from edgexfer.train.adapt_losses import coral_loss, dann_coefficient, gradient_reversal
from edgexfer.train.batchnorm import SplitRunner, find_features_layer, layers_to_train, split_at_cut
from edgexfer.train.config import AdaptConfig
from edgexfer.train.resume import (
    LoopCheckpoint,
    SeededRandomLayers,
    StageCheckpoint,
    assign_arrays,
    epoch_rng,
    optimizer_arrays,
    restore_optimizer,
    variable_arrays,
)


class Adapter:
    """One adapt run's model, data and training (``run``), its reports and its checkpoints."""

    def __init__(
        self, model, preprocessing, config: AdaptConfig, xs, ys, xv, yv, xt, *, log, progress, checkpoint=None
    ):
        from edgexfer.tf_env import import_tf

        tf, keras = import_tf()
        self.tf, self.keras = tf, keras
        self.model, self.config, self.log, self.progress = model, config, log, progress
        self.xs, self.ys, self.xv, self.yv, self.xt = xs, ys.astype(np.int32), xv, yv.astype(np.int32), xt
        # Resuming: training units (one per method trained, one per pseudo-label round) are
        # numbered; ``_resume`` is what an interrupted run saved at its last completed epoch.
        self.checkpoint: StageCheckpoint | None = checkpoint
        self._loop = LoopCheckpoint(checkpoint) if checkpoint is not None else None
        self._resume = self._loop.load() if self._loop is not None else None
        self._unit = 0
        self._finished: list[dict[str, Any]] = []  # per finished unit: label, pre-training info, history
        self._random_layers = SeededRandomLayers(model, config.seed, "adapt", "dropout")
        self.checkpoint_seconds = 0.0  # writing the per-epoch checkpoints (part of adapt_seconds)
        self.num_classes = int(model.output_shape[-1])
        self.source_stats_accuracy: float | None = None

        # Trained layers: the head (everything after the features) and the top weighted non-BN layers.
        features_layer = find_features_layer(model)
        head = [layer for layer in model.layers[model.layers.index(features_layer) + 1 :] if layer.weights]
        trained = head + layers_to_train(model, features_layer, config.train_layers)
        self.split = split_at_cut(model, features_layer, trained, name="adapt")
        self._full_stats = self.split.full_stats(config.batch_size)
        self._top_stats = self.split.top_stats(config.batch_size)
        self.runner = SplitRunner(self.split, preprocessing, config.batch_size)

        self.domain = config.bn_mode == "domain"
        self.stats_input = self._full_stats.current()
        if self.domain:
            self.log("estimating BatchNorm statistics of each domain (source, target)")
            self.stats_source = self._full_stats.estimate(self.runner.batches(self.xs, images=True))
            self.stats_target = self._full_stats.estimate(self.runner.batches(self.xt, images=True))
        else:
            self.stats_source = self.stats_target = self.stats_input
        # Cache what the frozen bottom computes, each domain under its own statistics.
        self._full_stats.assign(self.stats_source)
        self.zs = self.runner.bottom(self.xs)
        self.zv = self.runner.bottom(self.xv)
        self._full_stats.assign(self.stats_target)
        self.zt = self.runner.bottom(self.xt)
        n_bottom = len(self.split.bottom_bns)
        self.top_source = [tuple(map(np.copy, s)) for s in self.stats_source[n_bottom:]]
        self.top_target = [tuple(map(np.copy, s)) for s in self.stats_target[n_bottom:]]
        self._full_stats.assign(self.stats_input)

    # -- helpers ------------------------------------------------------------------------------
    def _set_top(self, stats) -> None:
        self._top_stats.assign(stats)

    def _refresh_top_stats(self) -> None:
        """Re-estimate the statistics of the BN layers in the trained part (their inputs change
        as the layers below them train)."""
        if self.domain and self.split.top_bns:
            self.top_source = self._top_stats.estimate(self.runner.batches(self.zs, images=False))
            self.top_target = self._top_stats.estimate(self.runner.batches(self.zt, images=False))

    def _accuracy(self, probs: np.ndarray, labels: np.ndarray) -> float | None:
        return float((probs.argmax(1) == labels).mean()) if len(labels) else None

    def _target_summary(self) -> dict[str, Any]:
        """Label-free diagnostics of the model on the target domain."""
        self._set_top(self.top_target)
        _, probs = self.runner.top(self.zt)
        confidence = probs.max(1)
        counts = np.bincount(probs.argmax(1), minlength=self.num_classes) / max(len(probs), 1)
        entropy = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum() / math.log(self.num_classes))
        return {
            "target_mean_confidence": round(float(confidence.mean()), 4),
            "target_confident_fraction": round(float((confidence >= self.config.threshold).mean()), 4),
            "target_predicted_class_entropy": round(entropy, 4),
        }

    # -- reports ------------------------------------------------------------------------------
    def report(self, which: str) -> dict[str, Any]:
        """Source-val accuracy (labels known) and label-free target diagnostics of the model as
        it is (``input``: before adapting; ``output``: the written model)."""
        probs = self.runner.model(self.xv) if len(self.xv) else np.zeros((0, self.num_classes))
        result: dict[str, Any] = {"source_val_accuracy": self._accuracy(probs, self.yv)}
        xt_probs = self.runner.model(self.xt)
        if which == "input":
            self.input_target_probs = xt_probs
        confidence = xt_probs.max(1)
        result.update(
            target_mean_confidence=round(float(confidence.mean()), 4),
            target_confident_fraction=round(float((confidence >= self.config.threshold).mean()), 4),
        )
        return result

    def _source_stats_val_accuracy(self) -> float | None:
        self._set_top(self.top_source)
        _, probs = self.runner.top(self.zv)
        return self._accuracy(probs, self.yv)

    # -- training -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        config = self.config
        history: dict[str, Any] = {}
        stages = ([config.first_method] if config.first_method else []) + [config.method]
        with self._random_layers:
            for method in stages:
                epochs = config.epochs_for(method)
                if method == "pseudo-label":
                    history[method] = self._pseudo_label(epochs)
                else:
                    history[method] = self._train(method, epochs)
        self.source_stats_accuracy = self._source_stats_val_accuracy()
        return history

    def finish(self) -> None:
        """Put the written model's statistics in place and restore its trainable flags."""
        n_bottom = len(self.split.bottom_bns)
        if self.config.output_stats == "target":
            stats = self.stats_target[:n_bottom] + list(self.top_target)
        else:
            stats = self.stats_source[:n_bottom] + list(self.top_source)
        self._full_stats.assign(stats)
        self.split.restore_trainable()

    def _train(
        self,
        method: str,
        epochs: int,
        pseudo: tuple[np.ndarray, np.ndarray] | None = None,
        label: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if epochs <= 0:
            self._refresh_top_stats()
            return {"epochs": 0}
        description = label or f"adapt {method}"
        finished = self._skip_finished(description)
        if finished is not None:
            return finished["history"]
        unit = self._unit
        self._unit += 1
        tf, keras = self.tf, self.keras
        config = self.config
        batch = config.batch_size
        steps = max(1, math.ceil(len(self.zs) / batch))
        total = steps * epochs
        uses_target = method in ("coral", "dann") or pseudo is not None
        if uses_target and not len(self.zt):
            raise ConfigError(f"method {method} needs target images; the target folder has none")
        discriminator = None
        if method == "dann":
            discriminator = keras.Sequential(
                [
                    keras.layers.Dense(
                        config.dann_hidden,
                        activation="relu",
                        name="domain_hidden",
                        kernel_initializer=keras.initializers.GlorotUniform(
                            seed=derive_seed(config.seed, "adapt", "domain_classifier", str(unit), "hidden")
                        ),
                    ),
                    keras.layers.Dense(
                        1,
                        name="domain_logit",
                        kernel_initializer=keras.initializers.GlorotUniform(
                            seed=derive_seed(config.seed, "adapt", "domain_classifier", str(unit), "logit")
                        ),
                    ),
                ],
                name="domain_classifier",
            )
            discriminator.build((None, int(self.split.top.output_shape[0][-1])))
        variables = list(self.split.variables) + (list(discriminator.trainable_variables) if discriminator else [])
        schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
        optimizer = keras.optimizers.Adam(schedule)
        optimizer.build(variables)  # every variable, in this order, in every run: the checkpoint's layout
        bn_vars = [v for layer in self.split.top_bns for v in (layer.moving_mean, layer.moving_variance)]
        history: dict[str, Any] = {"loss": [], "extra_loss": []}
        start = 0
        if self._resume is not None and self._resume[0]["unit"] == unit:
            state, arrays = self._resume
            self._restore(arrays, bn_vars, optimizer, variables, discriminator)
            history, start = state["history"], state["epochs_done"]
            self._resume = None
            self.checkpoint.note_resume(description.removeprefix("adapt "), start, epochs)
        source_stats = [tf.constant(v) for pair in self.top_source for v in pair]
        target_stats = [tf.constant(v) for pair in self.top_target for v in pair]
        domain = self.domain and bool(bn_vars)
        ce = keras.losses.SparseCategoricalCrossentropy(reduction="none")
        bce = keras.losses.BinaryCrossentropy(from_logits=True)
        top = self.split.top

        def assign(values):
            for var, value in zip(bn_vars, values):
                var.assign(value)

        @tf.function
        def step(zs, ys, zt, yt, wt, coefficient, s_stats, t_stats):
            with tf.GradientTape() as tape:
                if domain:
                    assign(s_stats)
                fs, ps = top(zs, training=True)
                classification = tf.reduce_mean(ce(ys, ps))
                loss = classification
                extra = tf.constant(0.0)
                if uses_target:
                    if domain:
                        assign(t_stats)
                    ft, pt = top(zt, training=True)
                    if method == "coral":
                        extra = coral_loss(fs, ft)
                        loss += config.coral_weight * extra
                    if method == "dann":
                        reversed_features = gradient_reversal(tf.concat([fs, ft], 0), coefficient)
                        logits = discriminator(reversed_features, training=True)
                        domains = tf.concat([tf.zeros([tf.shape(fs)[0], 1]), tf.ones([tf.shape(ft)[0], 1])], 0)
                        extra = bce(domains, logits)
                        loss += extra  # the reversal coefficient scales what reaches the features
                    if pseudo is not None:
                        extra = tf.reduce_sum(ce(yt, pt) * wt) / tf.maximum(tf.reduce_sum(wt), 1.0)
                        loss += config.pseudo_weight * extra
            gradients = tape.gradient(loss, variables)
            optimizer.apply_gradients([(g, v) for g, v in zip(gradients, variables) if g is not None])
            return classification, extra

        target_pool = np.arange(len(self.zt)) if pseudo is None else pseudo[0]
        target_labels = np.zeros(len(self.zt), np.int32) if pseudo is None else None
        if pseudo is not None:
            target_labels = np.zeros(len(self.zt), np.int32)
            target_labels[pseudo[0]] = pseudo[1]
        done = start * steps
        writer = train_common.tensorboard_writer(description.replace(" ", "_"))
        with train_common.step_progress(description, total, self.progress, completed=done) as advance:
            for epoch in range(start, epochs):
                # Every draw of the epoch depends on (seed, unit, epoch) only: a resumed run repeats it.
                rng = epoch_rng(config.seed, "adapt", unit, epoch)
                self._random_layers.reseed(unit, epoch)
                order = rng.permutation(len(self.zs))
                if len(order) < steps * batch:  # fixed batch shapes: one trace for the whole run
                    order = np.concatenate([order, rng.choice(len(self.zs), steps * batch - len(order))])
                target_order = self._cycle(rng, target_pool, steps * batch) if uses_target else None
                losses, extras = [], []
                for s in range(steps):
                    idx = order[s * batch : (s + 1) * batch]
                    if uses_target:
                        tidx = target_order[s * batch : (s + 1) * batch]
                        zt, yt = self.zt[tidx], target_labels[tidx]
                    else:
                        zt, yt = self.zs[idx[:2]], self.ys[idx[:2]]  # unused placeholders
                    wt = np.ones(len(yt), np.float32)
                    coefficient = dann_coefficient(done / max(total - 1, 1), config.dann_weight)
                    cls, extra = step(
                        self.zs[idx], self.ys[idx], zt, yt, wt, np.float32(coefficient), source_stats, target_stats
                    )
                    losses.append(float(cls))
                    extras.append(float(extra))
                    done += 1
                    advance()
                if domain:
                    self._refresh_top_stats()
                    source_stats = [tf.constant(v) for pair in self.top_source for v in pair]
                    target_stats = [tf.constant(v) for pair in self.top_target for v in pair]
                history["loss"].append(round(float(np.mean(losses)), 5))
                history["extra_loss"].append(round(float(np.mean(extras)), 5))
                self._save_epoch(
                    unit, description, epoch + 1, epochs, history, info, pseudo, optimizer, bn_vars, discriminator
                )
                if writer is not None:
                    with writer.as_default(step=epoch):
                        tf.summary.scalar("classification_loss", history["loss"][-1])
                        tf.summary.scalar(
                            f"{method}_loss" if method in ("coral", "dann") else "pseudo_label_loss",
                            history["extra_loss"][-1],
                        )
        if writer is not None:
            writer.close()
        if domain:
            self._set_top(self.top_target)
        history["source_val_accuracy_source_stats"] = self._source_stats_val_accuracy()
        history.update(self._target_summary())
        self.log(
            f"  {description}: {epochs} epochs, loss {history['loss'][-1]:.4f}, source val accuracy "
            f"(source statistics) {history['source_val_accuracy_source_stats']:.4f}, target confident "
            f"{history['target_confident_fraction']:.2%}"
        )
        self._finished.append({"label": description, "info": info, "history": history})
        return history

    def _cycle(self, rng: np.random.Generator, pool: np.ndarray, count: int) -> np.ndarray:
        reps = math.ceil(count / max(len(pool), 1))
        return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:count]

    # -- resuming -------------------------------------------------------------------------------
    def _skip_finished(self, description: str) -> dict[str, Any] | None:
        """The record of the next training unit when an interrupted run finished it (it is then
        not trained again: the weights restored later already contain it)."""
        if self._resume is None or self._unit >= self._resume[0]["unit"]:
            return None
        record = self._resume[0]["finished"][self._unit]
        self._unit += 1
        self._finished.append(record)
        self.checkpoint.note_skipped(description.removeprefix("adapt "))
        return record

    def _save_epoch(self, unit, description, epochs_done, epochs, history, info, pseudo, optimizer, bn_vars, disc):
        """Checkpoint the state after a completed epoch of training unit ``unit``."""
        if self._loop is None:
            return
        started = time.perf_counter()
        arrays = {
            **variable_arrays("trained", self.split.variables),
            **variable_arrays("bn", bn_vars),
            **optimizer_arrays(optimizer),
            **(variable_arrays("discriminator", disc.weights) if disc is not None else {}),
        }
        for name, stats in (("top_source", self.top_source), ("top_target", self.top_target)):
            for i, (mean, variance) in enumerate(stats):
                arrays[f"{name}.{i}.mean"], arrays[f"{name}.{i}.variance"] = mean, variance
        if pseudo is not None:
            arrays["pseudo.index"], arrays["pseudo.label"] = pseudo
        state = {
            "unit": unit,
            "label": description,
            "epochs_done": epochs_done,
            "epochs": epochs,
            "history": history,
            "info": info,
            "finished": self._finished,
        }
        self._loop.save(state, arrays, phase=description.removeprefix("adapt "), epochs_done=epochs_done, epochs=epochs)
        self.checkpoint_seconds += time.perf_counter() - started

    def _restore(self, arrays, bn_vars, optimizer, variables, discriminator) -> None:
        """Put the saved state of the interrupted unit back (weights, optimizer, statistics)."""
        try:
            assign_arrays("trained", self.split.variables, arrays)
            assign_arrays("bn", bn_vars, arrays)
            restore_optimizer(optimizer, variables, arrays)
            if discriminator is not None:
                assign_arrays("discriminator", discriminator.weights, arrays)
            count = len(self.top_source)
            for name in ("top_source", "top_target"):
                setattr(
                    self, name, [(arrays[f"{name}.{i}.mean"], arrays[f"{name}.{i}.variance"]) for i in range(count)]
                )
        except (KeyError, ValueError) as error:  # same digest, other layout: a bug, not the user's doing
            raise ConfigError(
                f"the checkpoint at {self.checkpoint.dir} does not fit this model ({error}); "
                "remove it with `edgexfer clean --remove --out OUT` and run again"
            ) from error

    def _resumed_round(self) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]] | None:
        """The pre-training info and pseudo-labels of the round an interrupted run was training."""
        if self._resume is None or self._resume[0]["unit"] != self._unit:
            return None
        state, arrays = self._resume
        return dict(state["info"]), (arrays["pseudo.index"], arrays["pseudo.label"])

    def _pseudo_label(self, epochs: int) -> dict[str, Any]:
        config = self.config
        rounds = []
        for round_index in range(config.rounds):
            label = f"adapt pseudo-label round {round_index + 1}"
            finished = self._skip_finished(label) if epochs > 0 else None
            if finished is not None:
                rounds.append({**finished["info"], **finished["history"]})
                continue
            resumed = self._resumed_round() if epochs > 0 else None
            if resumed is not None:  # the labels of the interrupted round (not re-drawn from the model)
                info, (chosen, labels) = resumed
                self.log(
                    f"  pseudo-label round {round_index + 1}/{config.rounds}: {len(chosen)} of "
                    f"{len(self.zt)} target images (as labelled before the interruption)"
                )
                rounds.append({**info, **self._train("pseudo-label", epochs, (chosen, labels), label, dict(info))})
                continue
            if round_index == 0 and config.first_method is None:
                probs = self.input_target_probs  # the input model, with its own statistics, is the teacher
            else:
                self._set_top(self.top_target)
                _, probs = self.runner.top(self.zt)
            confidence, predicted = probs.max(1), probs.argmax(1)
            chosen = np.flatnonzero(confidence >= config.threshold)
            if config.class_balance and len(chosen):
                cap = int(math.ceil(len(self.zt) / self.num_classes))
                kept = []
                for c in range(self.num_classes):
                    members = chosen[predicted[chosen] == c]
                    kept.extend(members[np.argsort(-confidence[members])][:cap])
                chosen = np.array(sorted(kept), dtype=int)
            info = {
                "round": round_index + 1,
                "pseudo_labels": int(len(chosen)),
                "fraction": round(len(chosen) / max(len(self.zt), 1), 4),
                "per_class": np.bincount(predicted[chosen], minlength=self.num_classes).tolist(),
            }
            self.log(
                f"  pseudo-label round {round_index + 1}/{config.rounds}: {len(chosen)} of {len(self.zt)} "
                f"target images at confidence ≥ {config.threshold}"
            )
            if len(chosen) == 0:
                info["skipped"] = "no target image reached the threshold"
                rounds.append(info)
                break
            info.update(
                self._train(
                    "pseudo-label",
                    epochs,
                    pseudo=(chosen, predicted[chosen].astype(np.int32)),
                    label=label,
                    info=dict(info),
                )
            )
            rounds.append(info)
        return {"rounds": rounds}
