"""Building classifiers on backbones, and saving/loading Keras models the way tfmot needs.

Models are saved as ``.h5`` without the optimizer: QAT/pruned models do not round-trip
through ``.keras`` ("expected 5 variables, but received 3"), and ``.h5`` with the optimizer
is ~2.7× larger (DESIGN.md, compatibility facts).
"""

from __future__ import annotations

from pathlib import Path

from edgexfer.errors import ArtifactError

MODEL_FILE = "model.h5"


def build_head_layers(num_classes: int, dropout: float, hidden_units: int = 0, seed: int | None = None):
    """The head's layers, created once so they can be trained on cached features and then
    applied to the backbone's output with the same weights.

    ``seed``: when given, every random draw of the head (its initial weights, its dropout
    masks) comes from seeds derived from it, not from global state that building the
    backbone may have advanced (``edgexfer.seeding``).
    """
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()

    def seeded(*purpose: str) -> dict:
        if seed is None:
            return {}
        from edgexfer.seeding import derive_seed

        return {"seed": derive_seed(seed, *purpose)}

    def kernel(*purpose: str):
        return keras.initializers.GlorotUniform(**seeded(*purpose)) if seed is not None else "glorot_uniform"

    layers = []
    if hidden_units:
        layers.append(
            keras.layers.Dense(
                hidden_units, activation="relu", kernel_initializer=kernel("head_hidden"), name="head_hidden"
            )
        )
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout, name="head_dropout", **seeded("head_dropout")))
    layers.append(
        keras.layers.Dense(
            num_classes, activation="softmax", kernel_initializer=kernel("head_dense"), name="head_dense"
        )
    )
    return layers


def apply_layers(x, layers):
    for layer in layers:
        x = layer(x)
    return x


def build_classifier(backbone, head_layers, name: str = "classifier"):
    """A FLAT functional classifier: the head on ``backbone.output`` (a nested Model could
    not be quantized by tfmot)."""
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    return keras.Model(backbone.input, apply_layers(backbone.output, head_layers), name=name)


def save_keras_model(model, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # .h5 is a deliberate choice here, not legacy use
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
        model.save(str(path), include_optimizer=False, save_format="h5")
    return path


def load_keras_model(path: Path):
    """Load a ``.h5``/``.keras`` model, inside tfmot's scopes so QAT and pruned models load.

    The stored architecture is checked first (``edgexfer.model_safety``): a model with a layer
    edgexfer does not create (``Lambda``, a custom class …) is refused before Keras
    deserialises anything, so loading an artifact never runs code from it.
    """
    from edgexfer.model_safety import check_keras_model_file

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"model file {str(path)!r} does not exist; re-run the stage that wrote it")
    check_keras_model_file(path)
    from edgexfer.tf_env import import_tf

    _, keras = import_tf()
    import tensorflow_model_optimization as tfmot

    try:
        with tfmot.quantization.keras.quantize_scope(), tfmot.sparsity.keras.prune_scope():
            return keras.models.load_model(str(path), compile=False, safe_mode=True)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"cannot load Keras model {str(path)!r}: {first_line}") from None


def count_params(model) -> int:
    return int(sum(int(w.shape.num_elements()) for w in model.weights))
