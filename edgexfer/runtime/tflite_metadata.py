"""Standard TFLite Metadata: what MediaPipe Tasks, the TFLite Task Library and Android Studio's
ML Model Binding read from an image classifier, written by the exporter and read back by the
runtime.

The layout is the one the TFLite Metadata schema (``metadata_schema.fbs``) and its reference
populator (``MetadataPopulator`` in mediapipe / tflite-support) define:

- a ``ModelMetadata`` flatbuffer (file identifier ``M001``) in a model buffer named by the
  model's ``metadata`` entry ``"TFLITE_METADATA"``: name, description, version, one
  subgraph whose input tensor has ``ImageProperties`` (colour space) and a
  ``NormalizationOptions`` process unit (mean/std), and whose output tensor has
  ``FeatureProperties``, score ``Stats`` and an associated ``labels.txt`` of type
  ``TENSOR_AXIS_LABELS``;
- the associated files packed after the flatbuffer as an uncompressed zip archive (a
  ``.tflite`` with metadata is also a zip file).

edgexfer's own ``"edgexfer"`` entry (``edgexfer.runtime.metadata``) stays next to it; the
runtime reads that first and this second, so files made by other tools (e.g. MediaPipe Model
Maker) run with ``edgexfer predict`` too.

The flatbuffer is built and read with the schema's generated code (vendored in
``_tflite_metadata_schema``; see its header for why) and the ``flatbuffers`` runtime; the model
itself with ``ai_edge_litert``'s schema. Imports no TensorFlow.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgexfer.artifact import Preprocessing
from edgexfer.errors import ArtifactError
from edgexfer.runtime.metadata import EmbeddedInfo, is_tflite_bytes

STANDARD_METADATA_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
TFLITE_FILE_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
# The oldest metadata parser that reads what is written here: ImageProperties (without its
# later default_size), NormalizationOptions, FeatureProperties, Stats and TENSOR_AXIS_LABELS
# are all in the schema's first version; nothing that raises it (tokenizers, audio, tensor
# groups, score thresholding, file versions) is used. The reference populator computes it
# with a C++ helper that the mediapipe 1.2.3 wheel does not ship.
MIN_PARSER_VERSION = "1.0.0"
# Bounds for untrusted files: a labels file of a few MB is already absurd for a classifier.
MAX_LABELS_BYTES = 16 << 20
MAX_PACKED_FILES = 64

COLOR_SPACES = {"RGB": 1}  # edgexfer color → ColorSpaceType (BGR has none: UNKNOWN, 0)


@dataclass(frozen=True)
class ModelDescription:
    """The general information of ``ModelMetadata``."""

    name: str
    description: str
    version: str
    author: str = "edgexfer"


# --------------------------------------------------------------------------------- writing


def build_model_metadata(
    info: EmbeddedInfo, description: ModelDescription, input_dtype: str, output_dtype: str
) -> bytes:
    """The ``ModelMetadata`` flatbuffer (identifier ``M001``) for an image classifier.

    ``input_dtype``/``output_dtype``: the model's I/O tensor types (``float32``, ``uint8``,
    ``int8``). The normalisation is edgexfer's ``(x - mean) / std`` per channel, exactly; for a
    uint8 input (fed raw pixels by MediaPipe and the Task Library) it documents what the
    input tensor's quantization already does.
    """
    import flatbuffers

    from edgexfer.runtime import _tflite_metadata_schema as fb

    pre = info.preprocessing
    image = fb.TensorMetadataT()
    image.name = "image"
    image.description = (
        f"Input image: {pre.input_size}×{pre.input_size} {pre.color}, resized "
        f"with {pre.resize}; {_normalisation_words(pre)}."
    )
    image.content = fb.ContentT()
    image.content.contentPropertiesType = fb.ContentProperties.ImageProperties
    image.content.contentProperties = fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = COLOR_SPACES.get(pre.color, fb.ColorSpaceType.UNKNOWN)
    normalisation = fb.ProcessUnitT()
    normalisation.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    normalisation.options = fb.NormalizationOptionsT()
    normalisation.options.mean = [float(v) for v in pre.mean]
    normalisation.options.std = [float(v) for v in pre.std]
    image.processUnits = [normalisation]
    image.stats = fb.StatsT()
    if input_dtype == "uint8":
        image.stats.min, image.stats.max = [0.0], [255.0]
    elif input_dtype == "float32":
        image.stats.min = [(0.0 - m) / s for m, s in zip(pre.mean, pre.std)]
        image.stats.max = [(255.0 - m) / s for m, s in zip(pre.mean, pre.std)]

    scores = fb.TensorMetadataT()
    scores.name = "probability"
    scores.description = (
        f"Probabilities of the {len(info.label_names)} classes (softmax, summing to 1), in the order of {LABELS_FILE}."
    )
    scores.content = fb.ContentT()
    scores.content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    scores.content.contentProperties = fb.FeaturePropertiesT()
    scores.stats = fb.StatsT()
    if output_dtype == "uint8":
        scores.stats.min, scores.stats.max = [0.0], [255.0]
    elif output_dtype == "float32":
        scores.stats.min, scores.stats.max = [0.0], [1.0]
    labels = fb.AssociatedFileT()
    labels.name = LABELS_FILE
    labels.description = "Labels for categories that the model can recognize."
    labels.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [labels]

    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [scores]
    model = fb.ModelMetadataT()
    model.name = description.name
    model.description = description.description
    model.version = description.version
    model.author = description.author
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def embed_standard_metadata(content: bytes, info: EmbeddedInfo, description: ModelDescription) -> bytes:
    """Return ``content`` (a bare flatbuffer, as the converter writes it) with standard TFLite
    Metadata and its ``labels.txt`` packed after it.

    Replaces a ``TFLITE_METADATA`` entry already there; keeps every other metadata entry
    (edgexfer's own, the converter's ``min_runtime_version``). Embed edgexfer's entry first:
    rewriting the flatbuffer afterwards would drop the packed files.
    """
    model = _read_model_object(content)
    graph = model.subgraphs[0]
    dtypes = [_dtype_name(graph.tensors[graph.inputs[0]].type), _dtype_name(graph.tensors[graph.outputs[0]].type)]
    metadata = build_model_metadata(info, description, *dtypes)
    flat = _with_metadata_buffer(model, STANDARD_METADATA_NAME, metadata)
    labels = ("\n".join(info.label_names) + "\n").encode("utf-8")
    return pack_files(flat, {LABELS_FILE: labels})


# The earliest time a zip entry can carry: packed files have no meaningful time of their own.
PACKED_FILE_TIME = (1980, 1, 1, 0, 0, 0)


def pack_files(flatbuffer: bytes, files: dict[str, bytes]) -> bytes:
    """``flatbuffer`` followed by ``files`` as an uncompressed zip archive, as the reference
    populator writes them (Python's ``zipfile`` appending to a non-zip file)."""
    if not files:
        return flatbuffer
    stream = io.BytesIO(flatbuffer)
    stream.seek(0, io.SEEK_END)
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            # A fixed timestamp: with the writing time the same export differed byte for byte
            # from run to run (``edgexfer reproduce`` compares the files' bytes).
            entry = zipfile.ZipInfo(name, date_time=PACKED_FILE_TIME)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, data)
    return stream.getvalue()


def split_packed_files(content: bytes, where: str) -> tuple[bytes, dict[str, bytes]]:
    """The model flatbuffer and the files packed after it (empty when there is no archive).

    A file that has a zip end record but whose archive cannot be read (truncated, damaged)
    raises ``ArtifactError`` naming ``where``.
    """
    if not _has_zip_end_record(content):
        return content, {}
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_PACKED_FILES:
                raise ArtifactError(
                    f"{where}: {len(infos)} files packed after the model (at most "
                    f"{MAX_PACKED_FILES} are read); the file is not a classifier"
                )
            files = {}
            for entry in infos:
                if entry.file_size > MAX_LABELS_BYTES:
                    raise ArtifactError(
                        f"{where}: packed file {entry.filename!r} is {entry.file_size} bytes "
                        f"(at most {MAX_LABELS_BYTES} are read)"
                    )
                files[entry.filename] = archive.read(entry)
            start = min((entry.header_offset for entry in infos), default=len(content))
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ArtifactError(
            f"{where}: the files packed after the model (standard TFLite metadata) "
            f"cannot be read: {exc}; re-export or re-populate the model"
        ) from None
    return content[:start], files


# --------------------------------------------------------------------------------- reading


@dataclass
class StandardMetadata:
    """What the runtime uses from a file's standard metadata."""

    name: str
    label_names: list[str]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    color: str | None


def read_standard_metadata(content: bytes, where: str = "model") -> StandardMetadata | None:
    """The standard metadata of a ``.tflite`` file, or ``None`` when it has none.

    Checks what a classifier needs and raises ``ArtifactError`` (naming ``where`` and what is
    wrong) for a damaged archive, a labels file that is missing or has another count than the
    output has classes, or normalisation values that are not finite positive numbers.
    """
    from ai_edge_litert import schema_py_generated as schema

    from edgexfer.runtime import _tflite_metadata_schema as fb

    if not is_tflite_bytes(content):
        raise ArtifactError(f"{where} is not a TFLite model (no TFL3 flatbuffer identifier)")
    raw = _metadata_buffer(content, STANDARD_METADATA_NAME, where)
    if raw is None:
        return None
    _, files = split_packed_files(content, where)
    try:
        if not fb.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
            raise ValueError("its buffer lacks the M001 identifier")
        metadata = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(raw, 0))
        model = schema.Model.GetRootAs(content, 0)
        graph = model.Subgraphs(0)
        output_shape = graph.Tensors(graph.Outputs(0)).ShapeAsNumpy()
    except Exception as exc:  # a damaged flatbuffer raises anything from IndexError to struct.error
        raise ArtifactError(
            f"{where}: malformed standard TFLite metadata ({type(exc).__name__}: {exc}); re-export the model"
        ) from None
    if (
        not metadata.subgraphMetadata
        or not metadata.subgraphMetadata[0].outputTensorMetadata
        or not metadata.subgraphMetadata[0].inputTensorMetadata
    ):
        raise ArtifactError(f"{where}: standard TFLite metadata describes no input/output tensor")
    subgraph = metadata.subgraphMetadata[0]
    classes = int(output_shape[-1]) if len(output_shape) else 0
    labels = _axis_labels(subgraph.outputTensorMetadata[0], files, classes, where)
    mean, std = _normalisation(subgraph.inputTensorMetadata[0], where)
    return StandardMetadata(
        name=_text(metadata.name), label_names=labels, mean=mean, std=std, color=_color(subgraph.inputTensorMetadata[0])
    )


def info_from_standard_metadata(content: bytes, where: str = "model") -> EmbeddedInfo | None:
    """Labels and preprocessing from a file's standard metadata, as ``EmbeddedInfo``.

    The input size comes from the model's input tensor (the metadata does not carry it);
    a uint8 input is fed raw pixels the way MediaPipe Tasks and the Task Library feed it:
    mean/std are then the input tensor's zero point and 1/scale (so the runtime's
    quantisation of ``(x - mean) / std`` gives back the pixel), whatever the metadata says.
    """
    standard = read_standard_metadata(content, where)
    if standard is None:
        return None
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    graph = model.Subgraphs(0)
    tensor = graph.Tensors(graph.Inputs(0))
    shape = [int(v) for v in tensor.ShapeAsNumpy()]
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise ArtifactError(
            f"{where}: input shape {shape} is not a square N×H×W×3 image; the runtime runs square RGB image classifiers"
        )
    mean, std = standard.mean, standard.std
    dtype = _dtype_name(tensor.Type())
    # uint8: fed raw pixels by MediaPipe and the Task Library, whatever NormalizationOptions
    # say; int8 (which neither accepts): NormalizationOptions when present, as for float
    if dtype == "uint8" or (dtype == "int8" and mean is None):
        quantization = tensor.Quantization()
        scales = quantization.ScaleAsNumpy() if quantization is not None and quantization.ScaleLength() else None
        if scales is None or len(scales) != 1 or not 0 < float(scales[0]) < math.inf:
            raise ArtifactError(f"{where}: {dtype} input has no per-tensor quantization scale")
        offset = 128 if dtype == "int8" else 0  # MediaPipe maps pixels 0..255 to -128..127
        zero_point = float(quantization.ZeroPointAsNumpy()[0]) + offset
        mean, std = (zero_point,) * 3, (1.0 / float(scales[0]),) * 3
    elif mean is None:
        raise ArtifactError(
            f"{where}: float input without NormalizationOptions in its standard metadata; "
            "pass preprocessing= to load_model"
        )
    preprocessing = Preprocessing(
        input_size=shape[1], channels=3, mean=_three(mean), std=_three(std), color=standard.color or "RGB"
    )
    return EmbeddedInfo(
        standard.label_names, preprocessing, {"source": "standard TFLite metadata", "name": standard.name}
    )


def remove_metadata_entry(content: bytes, name: str) -> bytes:
    """``content`` without the metadata entry ``name`` (its buffer emptied), packed files kept.

    Used to show that a file still works from its standard metadata alone.
    """
    flat, files = split_packed_files(content, "model")
    model = _read_model_object(flat)
    kept = []
    for entry in model.metadata or []:
        if _text(entry.name) == name:
            model.buffers[entry.buffer].data = None
        else:
            kept.append(entry)
    model.metadata = kept
    return pack_files(_model_bytes(model), files)


# --------------------------------------------------------------------------------- helpers


def _normalisation_words(pre: Preprocessing) -> str:
    return f"model input = (pixel - mean) / std per channel, mean {list(pre.mean)}, std {list(pre.std)}"


def _axis_labels(tensor, files: dict[str, bytes], classes: int, where: str) -> list[str]:
    from edgexfer.runtime import _tflite_metadata_schema as fb

    names = [
        _text(f.name)
        for f in (tensor.associatedFiles or [])
        if f.type == fb.AssociatedFileType.TENSOR_AXIS_LABELS and not _text(f.locale)
    ]
    names = names or [
        _text(f.name) for f in (tensor.associatedFiles or []) if f.type == fb.AssociatedFileType.TENSOR_AXIS_LABELS
    ]
    if not names:
        raise ArtifactError(
            f"{where}: standard TFLite metadata has no TENSOR_AXIS_LABELS file for the output; "
            "re-export the model or pass label_names="
        )
    if names[0] not in files:
        raise ArtifactError(
            f"{where}: labels file {names[0]!r} named in the standard TFLite metadata is not "
            "packed in the model (the zip archive after the model is missing or truncated); "
            "re-export or re-populate it"
        )
    try:
        text = files[names[0]].decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{where}: labels file {names[0]!r} is not UTF-8 text") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != classes:
        raise ArtifactError(
            f"{where}: labels file {names[0]!r} has {len(labels)} labels but the model has "
            f"{classes} output classes; re-export the model"
        )
    return labels


def _normalisation(tensor, where: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    from edgexfer.runtime import _tflite_metadata_schema as fb

    for unit in tensor.processUnits or []:
        if unit.optionsType != fb.ProcessUnitOptions.NormalizationOptions:
            continue
        mean = tuple(float(v) for v in (unit.options.mean if unit.options.mean is not None else []))
        std = tuple(float(v) for v in (unit.options.std if unit.options.std is not None else []))
        if len(mean) not in (1, 3) or len(std) != len(mean):
            raise ArtifactError(
                f"{where}: NormalizationOptions has {len(mean)} means and {len(std)} stds (expected 1 or 3 of each)"
            )
        if not all(math.isfinite(v) and abs(v) <= 1e6 for v in mean) or not all(
            math.isfinite(v) and 1e-6 <= v <= 1e6 for v in std
        ):
            raise ArtifactError(
                f"{where}: NormalizationOptions mean {list(mean)} / std {list(std)} are not "
                "finite (std must be positive)"
            )
        return mean, std
    return None, None


def _color(tensor) -> str | None:
    from edgexfer.runtime import _tflite_metadata_schema as fb

    content = tensor.content
    if content is None or content.contentPropertiesType != fb.ContentProperties.ImageProperties:
        return None
    if content.contentProperties.colorSpace == fb.ColorSpaceType.RGB:
        return "RGB"
    return None


def _three(values) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    return values * 3 if len(values) == 1 else values  # type: ignore[return-value]


def _metadata_buffer(content: bytes, name: str, where: str) -> bytes | None:
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _text(entry.Name()) != name:
                continue
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
                return bytes(content[buffer.Offset() : buffer.Offset() + buffer.Size()])
            return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    except Exception as exc:
        raise ArtifactError(f"{where}: cannot read TFLite metadata ({type(exc).__name__}: {exc})") from None
    return None


def _read_model_object(flat: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flat))


def _model_bytes(model) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _with_metadata_buffer(model, name: str, data: bytes) -> bytes:
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    for entry in model.metadata or []:
        if _text(entry.name) == name:
            model.buffers[entry.buffer] = buffer
            break
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata = list(model.metadata or []) + [entry]
    return _model_bytes(model)


def _has_zip_end_record(content: bytes) -> bool:
    # The end-of-central-directory record sits in the last 22 bytes (+ a comment of ≤ 64 KiB).
    return b"PK\x05\x06" in content[-(22 + 65535) :]


_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 9: "int8"}


def _dtype_name(code: int) -> str:
    return _DTYPES.get(int(code), f"type{int(code)}")


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)
