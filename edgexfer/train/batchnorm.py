"""A classifier cut for adaptation and fusion: the penultimate features layer, the split into a
frozen bottom and a trained top (``split_at_cut``) and running its parts on images
(``SplitRunner``), its BatchNorm layers, and BatchNorm statistics estimated over a whole domain
(PreciseBN: batch moments averaged over every batch).

Shared by ``adapt``, ``shot`` and ``fuse``. TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgexfer.errors import ConfigError


def find_features_layer(model):
    """The layer whose output is the penultimate feature (the classifier head's input): the
    last global pooling/flatten layer, else the input of the last Dense layer's producer."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    pools = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
    for layer in reversed(model.layers):
        if isinstance(layer, pools):
            return layer
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise ConfigError(
            f"model {model.name!r} has no pooling or Dense layer: cannot find its penultimate features to adapt"
        )
    producer = dense[-1]._inbound_nodes[0].inbound_layers
    return producer if not isinstance(producer, list) else producer[0]


def build_top(model, cut_layer, features_layer):
    """The part of ``model`` above ``cut_layer`` as a model from the cut tensor to
    ``[features, probabilities]``, sharing the layers (and weights) of ``model``; and the
    input tensor of each of its layers in its own graph."""
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    layers = model.layers
    start = layers.index(cut_layer) + 1
    nodes = {id(layer): layer._inbound_nodes[0] for layer in layers}
    cut_tensor = _flat(nodes[id(cut_layer)].outputs)[0]
    inputs = keras.Input(shape=tuple(cut_tensor.shape[1:]), name="adapt_cut")
    tensors = {id(cut_tensor): inputs}
    layer_inputs = {}
    for layer in layers[start:]:
        node = nodes[id(layer)]
        mapped = lambda t: tensors.get(id(t), t)  # noqa: E731
        args = tf.nest.map_structure(mapped, node.call_args)
        kwargs = tf.nest.map_structure(mapped, node.call_kwargs)
        layer_inputs[layer.name] = tf.nest.map_structure(mapped, node.input_tensors)
        outputs = layer(*args, **kwargs)
        for old, new in zip(_flat(node.outputs), _flat(outputs)):
            tensors[id(old)] = new
    features = tensors[id(_flat(nodes[id(features_layer)].outputs)[0])]
    if features is inputs:
        features = keras.layers.Activation("linear", name="adapt_features")(inputs)
    probabilities = tensors[id(_flat(model.outputs)[0])]
    return keras.Model(inputs, [features, probabilities], name="adapt_top"), layer_inputs


def layers_to_train(model, features_layer, count: int) -> list:
    """The top ``count`` weighted layers below ``features_layer`` that are not BatchNorm (their
    scales and offsets stay as they are), top first: the feature layers adapt and shot train."""
    layers = model.layers
    bns = {id(layer) for layer in batchnorm_layers(model)}
    below = layers[: layers.index(features_layer)]
    return [layer for layer in reversed(below) if layer.weights and id(layer) not in bns][: max(count, 0)]


@dataclass(frozen=True)
class ModelSplit:
    """A classifier split for training its top: ``bottom`` (input → cut tensor, frozen, so it runs
    once per image; ``None`` when there is no cut and the whole model is the top), ``top`` (cut
    tensor → ``[features, probabilities]``, sharing the model's layers and weights), the BatchNorm
    layers of each part and the trained layers' variables (in the order the layers were given)."""

    model: Any
    bottom: Any
    top: Any
    cut_name: str | None
    trained_layer_names: list[str]
    variables: list
    bottom_bns: list
    top_bns: list
    bn_inputs: list  # each BatchNorm layer's input tensor in the whole model's graph
    top_bn_inputs: list  # each top BatchNorm layer's input tensor in the top's graph
    original_trainable: dict[str, bool]  # each layer's flag before the split froze the bottom

    def restore_trainable(self) -> None:
        """Give every layer back the trainable flag it had before the split."""
        for layer in self.model.layers:
            layer.trainable = self.original_trainable.get(layer.name, layer.trainable)

    def full_stats(self, batch_size: int) -> BatchNormStats:
        """Every BatchNorm layer's statistics, estimated through the whole model."""
        return BatchNormStats(self.model, self.bottom_bns + self.top_bns, self.bn_inputs, batch_size)

    def top_stats(self, batch_size: int) -> BatchNormStats:
        """The top's BatchNorm statistics, estimated from cut tensors (the cached bottom outputs)."""
        return BatchNormStats(self.top, self.top_bns, self.top_bn_inputs, batch_size)


def split_at_cut(model, features_layer, trained: list, *, name: str) -> ModelSplit:
    """Freeze every layer of ``model`` but ``trained`` and split it at the cut below the lowest
    trained layer (:func:`find_cut`; at most the layer after ``features_layer``). ``name`` prefixes
    the parts' model names. ``ConfigError`` when the BatchNorm layers do not fall into a frozen
    bottom followed by a trained top."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    original_trainable = {layer.name: layer.trainable for layer in model.layers}
    for layer in model.layers:
        layer.trainable = False
    for layer in trained:
        layer.trainable = True
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    first = min([index[layer.name] for layer in trained] + [index[features_layer.name] + 1])
    cut_layer = find_cut(model, first)
    all_bns = batchnorm_layers(model)
    bn_inputs = [layer.input for layer in all_bns]  # before build_top adds nodes to the layers
    if cut_layer is None:
        bottom = None
        top = keras.Model(model.inputs, [features_layer.output, model.output], name=f"{name}_top")
        top_inputs = {layer.name: t for layer, t in zip(all_bns, bn_inputs)}
    else:
        bottom = keras.Model(model.inputs, cut_layer.output, name=f"{name}_bottom")
        top, top_inputs = build_top(model, cut_layer, features_layer)
    top_bns = [layer for layer in all_bns if layer.name in top_inputs]
    bottom_bns = [layer for layer in all_bns if layer.name not in top_inputs]
    if all_bns != bottom_bns + top_bns:
        raise ConfigError("cannot split this model's BatchNorm layers into a frozen and a trained part")
    return ModelSplit(
        model=model,
        bottom=bottom,
        top=top,
        cut_name=cut_layer.name if cut_layer is not None else None,
        trained_layer_names=sorted((layer.name for layer in trained), key=index.get),
        variables=[v for layer in trained for v in layer.trainable_weights],
        bottom_bns=bottom_bns,
        top_bns=top_bns,
        bn_inputs=bn_inputs,
        top_bn_inputs=[top_inputs[layer.name] for layer in top_bns],
        original_trainable=original_trainable,
    )


class SplitRunner:
    """Runs a :class:`ModelSplit` on uint8 images in batches (normalised with the artifact's mean
    and std): its bottom once per image (the cache the top trains on), its top on that cache, and
    the whole model; each compiled once for inference."""

    def __init__(self, split: ModelSplit, preprocessing, batch_size: int):
        self.split = split
        self.mean = np.asarray(preprocessing.mean, np.float32)
        self.std = np.asarray(preprocessing.std, np.float32)
        self.batch_size = max(batch_size, 128)
        self._bottom = _inference(split.bottom) if split.bottom is not None else None
        self._top = _inference(split.top)
        self._model = _inference(split.model)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        return (images.astype(np.float32) - self.mean) / self.std

    def batches(self, array: np.ndarray, images: bool):
        """``array`` in batches, normalised when they are ``images`` (not cached bottom outputs)."""
        for start in range(0, len(array), self.batch_size):
            chunk = array[start : start + self.batch_size]
            yield self.normalise(chunk) if images else chunk

    def bottom(self, images: np.ndarray) -> np.ndarray:
        """What the frozen bottom makes of ``images``: the top's input."""
        if self._bottom is None:
            return self.normalise(images) if len(images) else images.astype(np.float32)
        if not len(images):
            return np.zeros((0, *self.split.bottom.output_shape[1:]), np.float32)
        return np.concatenate([self._bottom(b).numpy() for b in self.batches(images, images=True)])

    def top(self, cached: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(features, probabilities)`` of the top on ``cached`` bottom outputs."""
        feats, probs = [], []
        for batch in self.batches(cached, images=False):
            f, p = self._top(batch)
            feats.append(f.numpy())
            probs.append(p.numpy())
        return np.concatenate(feats), np.concatenate(probs)

    def model(self, images: np.ndarray) -> np.ndarray:
        """The whole model's probabilities on non-empty ``images``."""
        return np.concatenate([self._model(b).numpy() for b in self.batches(images, images=True)])


def _inference(part):
    """``part`` called in inference mode, as one ``tf.function``."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()

    @tf.function(reduce_retracing=True)
    def infer(x):
        return part(x, training=False)

    return infer


def batchnorm_layers(model) -> list:
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _flat(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def find_cut(model, first_trainable: int):
    """The last layer before ``first_trainable`` (an index into ``model.layers``) whose output
    is the only tensor the rest of the network reads: the frozen part below it can run once
    per image. ``None`` when there is none (the whole model is then the trained part)."""
    layers = model.layers
    try:
        last_use: dict[int, int] = {}
        for index, layer in enumerate(layers):
            if len(layer._inbound_nodes) != 1:
                return None  # a layer called more than once: keep it simple, no cut
            if index == 0:
                continue
            for tensor in _flat(layer.input):
                last_use[id(tensor)] = index
        for tensor in _flat(model.output):
            last_use[id(tensor)] = len(layers)
        live: set[int] = set()
        best = None
        for index, layer in enumerate(layers[:first_trainable]):
            live = {t for t in live if last_use.get(t, -1) > index}
            for tensor in _flat(layer.output):
                if last_use.get(id(tensor), -1) > index:
                    live.add(id(tensor))
            if len(live) == 1 and index > 0:
                best = layer
        return best
    except AttributeError:  # a layer without a single well-defined input/output
        return None


class BatchNormStats:
    """Per-domain moving statistics of a list of BN layers, estimated PreciseBN-style: a pass
    in training mode over the domain, averaging the batch moments of every BN layer's input."""

    def __init__(self, part, layers, inputs, batch_size: int):
        from edgexfer.tf_env import import_tf

        tf, keras = import_tf()
        self.layers = layers
        self.batch_size = batch_size
        self._probe = None
        if layers:
            probe = keras.Model(part.inputs, list(inputs))
            axes = [
                [a for a in range(len(t.shape)) if a != (channel_axis(layer) % len(t.shape))]
                for layer, t in zip(layers, inputs)
            ]

            @tf.function(reduce_retracing=True)
            def moments(x):
                outputs = _flat(probe(x, training=True))
                sums = [tf.reduce_sum(o, axis=ax) for o, ax in zip(outputs, axes)]
                squares = [tf.reduce_sum(tf.square(o), axis=ax) for o, ax in zip(outputs, axes)]
                counts = [tf.cast(tf.size(o), tf.float32) / tf.cast(tf.shape(o)[-1], tf.float32) for o in outputs]
                return sums, squares, counts

            self._probe = moments

    def current(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()) for layer in self.layers]

    def assign(self, stats) -> None:
        for layer, (mean, var) in zip(self.layers, stats):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(var)

    def estimate(self, batches) -> list[tuple[np.ndarray, np.ndarray]]:
        """Statistics of the BN inputs over all ``batches`` (the model's weights are not changed;
        the moving statistics are restored afterwards)."""
        if not self.layers:
            return []
        saved = self.current()
        flags = [layer.trainable for layer in self.layers]
        for layer in self.layers:
            layer.trainable = True  # a frozen BN layer ignores training=True in tf_keras
        totals = None
        try:
            for batch in batches:
                if len(batch) < 2:
                    continue
                sums, squares, counts = self._probe(batch)
                values = [
                    (s.numpy().astype(np.float64), q.numpy().astype(np.float64), float(c.numpy()))
                    for s, q, c in zip(sums, squares, counts)
                ]
                if totals is None:
                    totals = values
                else:
                    totals = [(a + s, b + q, n + c) for (a, b, n), (s, q, c) in zip(totals, values)]
        finally:
            for layer, flag in zip(self.layers, flags):
                layer.trainable = flag
            self.assign(saved)
        if totals is None:
            raise ConfigError("too few images to estimate BatchNorm statistics (need at least 2)")
        stats = []
        for total, square, count in totals:
            mean = total / count
            var = np.maximum(square / count - mean * mean, 0.0) * count / max(count - 1.0, 1.0)
            stats.append((mean.astype(np.float32), var.astype(np.float32)))
        return stats


def channel_axis(layer) -> int:
    axis = layer.axis
    return axis[0] if isinstance(axis, (list, tuple)) else axis
