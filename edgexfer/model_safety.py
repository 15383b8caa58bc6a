"""An artifact is data, never code: check a stored Keras model before it is deserialised.

Keras can store code in a model file: a ``Lambda`` layer keeps the bytecode of its function,
and a custom layer class runs whatever its ``from_config`` does. Artifacts are shared (between
teammates, from a model zoo, in CI caches), so before ``load_model`` sees a file, this module
reads the architecture the file stores (the ``model_config`` attribute of an ``.h5`` file, the
``config.json`` of a ``.keras`` zip) as plain JSON and refuses any layer class edgexfer does
not itself create. Nothing in the file is deserialised by Keras until the check passed.

Keras' own ``safe_mode`` only covers ``.keras`` files and only ``Lambda``; it does not stop a
registered custom class or a ``TFOpLambda`` that names an arbitrary TensorFlow function, hence
the allow-list here. Imports no TensorFlow (h5py and the standard library only).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgexfer.errors import ArtifactError

# Layer classes edgexfer's builders produce (first set) and code-free built-ins (second set): every
# registered backbone (EfficientNet-Lite, keras.applications MobileNetV2/V3, EfficientNetB0, VGG16,
# the small CNNs) with the head,
# and their pruned (tfmot PruneLowMagnitude) and QAT (QuantizeLayer/QuantizeWrapperV2) forms.
# Collected by building each one (tests/unit/test_model_safety.py keeps this list honest), plus
# a few pure-arithmetic layers of the same kind (pooling, flatten, softmax, concatenate).
SAFE_LAYER_CLASSES = frozenset(
    {
        "InputLayer",
        "Conv2D",
        "DepthwiseConv2D",
        "SeparableConv2D",
        "BatchNormalization",
        "ReLU",
        "Activation",
        "Softmax",
        "Add",
        "Multiply",
        "Concatenate",
        "Dense",
        "Dropout",
        "Reshape",
        "Flatten",
        "ZeroPadding2D",
        "MaxPooling2D",
        "AveragePooling2D",
        "GlobalAveragePooling2D",
        "GlobalMaxPooling2D",
        "Rescaling",
        "Normalization",
        "TFOpLambda",
        # tfmot's quantization and pruning layers (their configs are tfmot's registered classes)
        "QuantizeLayer",
        "QuantizeWrapper",
        "QuantizeWrapperV2",
        "PruneLowMagnitude",
    }
) | frozenset(
    {
        # Other tf_keras built-in layers that hold no code (configs of numbers, names and built-in
        # initializers/activations only), so a model made by hand with them can still be quantized,
        # pruned or exported. Not listed on purpose: Lambda, and wrappers of arbitrary layers or cells
        # (RNN, Bidirectional, TimeDistributed), whose contents this check would have to follow.
        "LayerNormalization",
        "GroupNormalization",
        "UnitNormalization",
        "Conv1D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "SeparableConv1D",
        "DepthwiseConv1D",
        "MaxPooling1D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling3D",
        "ZeroPadding1D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "UpSampling1D",
        "UpSampling2D",
        "Permute",
        "RepeatVector",
        "Subtract",
        "Average",
        "Maximum",
        "Minimum",
        "Dot",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "ThresholdedReLU",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
        "Resizing",
        "CenterCrop",
    }
)
# Classes that hold other layers: a model (its ``layers``) or a wrapper (its ``layer``).
MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
WRAPPER_CLASSES = frozenset({"QuantizeWrapper", "QuantizeWrapperV2", "PruneLowMagnitude"})
# TFOpLambda calls the TensorFlow function its config names (any of them: ``io.write_file`` …),
# so only the arithmetic keras.applications models use is allowed (MobileNetV3's hard-swish).
SAFE_TF_FUNCTIONS = frozenset(
    {"__operators__.add", "math.multiply", "__operators__.mul", "math.add", "nn.relu6", "math.truediv"}
)
KERAS_MODEL_SUFFIXES = (".h5", ".keras")


def stored_model_config(path: str | Path) -> dict[str, Any]:
    """The architecture a ``.h5``/``.keras`` file stores, as plain JSON (nothing deserialised)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in KERAS_MODEL_SUFFIXES:
        raise ArtifactError(
            f"{str(path)!r}: edgexfer loads Keras models only from a .h5 or .keras file; "
            "re-run the stage that wrote the artifact"
        )
    try:
        if suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                raw = archive.read("config.json")
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise ArtifactError(
            f"cannot read Keras model {str(path)!r} ({_first_line(exc)}); re-run the stage that wrote it"
        ) from None
    if raw is None:
        raise ArtifactError(f"{str(path)!r} holds weights but no model architecture; re-run the stage that wrote it")
    try:
        config = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{str(path)!r}: the stored model architecture is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{str(path)!r}: the stored model architecture is not a Keras model config")
    return config


def check_model_config(config: dict[str, Any], where: str) -> None:
    """``ArtifactError`` naming the first layer whose class edgexfer does not create."""
    if config.get("class_name") not in MODEL_CLASSES:
        raise ArtifactError(
            f"{where}: the stored model is a {config.get('class_name')!r}, not a Keras "
            "functional model edgexfer wrote; refused (an artifact must hold data, not code)"
        )
    try:
        layers = list(_layers(config))
    except ArtifactError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    for name, class_name, layer in layers:
        if class_name not in SAFE_LAYER_CLASSES and class_name not in MODEL_CLASSES:
            raise ArtifactError(
                f"{where}: layer {name!r} is a {class_name!r}, a class edgexfer does not create; the model "
                "was refused before loading because such a layer can run code. Use artifacts written by "
                "edgexfer, or rebuild the model without it"
            )
        if class_name == "TFOpLambda":
            function = (layer.get("config") or {}).get("function")
            if function not in SAFE_TF_FUNCTIONS:
                raise ArtifactError(
                    f"{where}: layer {name!r} calls the TensorFlow function {function!r}, which edgexfer "
                    "models do not use; the model was refused before loading. Use artifacts written by edgexfer"
                )


def check_keras_model_file(path: str | Path) -> None:
    """Refuse a ``.h5``/``.keras`` file whose stored architecture holds code (see module doc)."""
    check_model_config(stored_model_config(path), where=str(path))


def _layers(config: dict[str, Any]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Every layer of a stored model, nested models and wrapped layers included."""
    inner = config.get("config")
    if not isinstance(inner, dict):
        raise ArtifactError("the stored model architecture is malformed (a layer without config)")
    layers = inner.get("layers", [])
    if not isinstance(layers, list):
        raise ArtifactError("the stored model architecture is malformed (layers is not a list)")
    for layer in layers:
        if not isinstance(layer, dict):
            raise ArtifactError("the stored model architecture is malformed (a layer is not an object)")
        yield from _layer_and_children(layer)


def _layer_and_children(layer: dict[str, Any]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    class_name = layer.get("class_name")
    layer_config = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    name = layer_config.get("name") or layer.get("name") or "?"
    yield str(name), class_name, layer
    if class_name in MODEL_CLASSES:
        yield from _layers(layer)
    elif class_name in WRAPPER_CLASSES:
        wrapped = layer_config.get("layer")
        if not isinstance(wrapped, dict):
            raise ArtifactError(f"layer {name!r} ({class_name}) wraps no layer (malformed model)")
        yield from _layer_and_children(wrapped)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# TensorFlow ops a SavedModel's graph must not hold: they read or write files, run Python, or
# map files into memory when the serving function is called. The checkpoint ops (SaveV2,
# RestoreV2, MergeV2Checkpoints) every SavedModel has in its saver functions are not listed.
# A deny-list (not an allow-list as for Keras layers): TensorFlow has over a thousand ops and
# which ones a graph of a registered backbone lowers to varies with the TF version.
FORBIDDEN_TF_OPS = frozenset(
    {
        "WriteFile",
        "ReadFile",
        "MatchingFiles",
        "ImmutableConst",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "Save",
        "SaveSlices",
        "Restore",
        "RestoreSlice",
        "WholeFileReader",
        "WholeFileReaderV2",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "TextLineDataset",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord",
        "SaveDataset",
        "SaveDatasetV2",
        "LoadDataset",
        "CreateSummaryFileWriter",
        "CreateSummaryDbWriter",
        "WriteSummary",
        "WriteRawProtoSummary",
        "WriteGraphSummary",
        "WriteScalarSummary",
        "WriteHistogramSummary",
        "WriteImageSummary",
        "WriteAudioSummary",
        "ShellCommand",
    }
)


def check_saved_model(path: str | Path) -> None:
    """Refuse a SavedModel directory whose graph holds an op that touches files or runs Python,
    before TensorFlow loads it (``FORBIDDEN_TF_OPS``). Needs TensorFlow's protobuf classes."""
    from edgexfer.tf_env import import_tf

    import_tf()
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(path)
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except (OSError, DecodeError) as exc:
        raise ArtifactError(f"cannot read SavedModel {str(path)!r} ({_first_line(exc)}); re-export it") from None
    for graph in proto.meta_graphs:
        nodes = list(graph.graph_def.node) + [n for f in graph.graph_def.library.function for n in f.node_def]
        for node in nodes:
            if node.op in FORBIDDEN_TF_OPS:
                raise ArtifactError(
                    f"{str(path)!r}: the SavedModel's graph holds a {node.op} op ({node.name!r}), "
                    "which touches files or runs code; refused before loading. Re-export it "
                    "with edgexfer export"
                )
