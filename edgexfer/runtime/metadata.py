"""What an exported model file carries about itself: labels, preprocessing and provenance.

The one place that defines how edgexfer embeds this information, used by the exporter to
write it and by the runtime to read it, so a ``.tflite`` or ``.onnx`` file copied on its own
to a device still knows its class names and how to turn pixels into input.

- TFLite: a named entry ``"edgexfer"`` in the flatbuffer's ``metadata`` list (the schema's
  own mechanism; the converter uses it for ``min_runtime_version``) whose buffer holds UTF-8
  JSON. Read and written with the flatbuffer schema that ships with ``ai_edge_litert``, so
  neither side needs TensorFlow or ``tflite_support``.
- ONNX: ``metadata_props`` entries ``edgexfer.labels`` (JSON list), ``edgexfer.preprocessing``
  (JSON object) and ``edgexfer.manifest`` (JSON object: stage, backbone, quantization …),
  read back through ``onnxruntime``'s ``custom_metadata_map``.

This module imports no TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgexfer.artifact import Preprocessing
from edgexfer.errors import ArtifactError

TFLITE_METADATA_NAME = "edgexfer"
TFLITE_IDENTIFIER = b"TFL3"
ONNX_LABELS_KEY = "edgexfer.labels"
ONNX_PREPROCESSING_KEY = "edgexfer.preprocessing"
ONNX_MANIFEST_KEY = "edgexfer.manifest"


@dataclass
class EmbeddedInfo:
    """Labels, preprocessing and a short manifest summary embedded in a model file."""

    label_names: list[str]
    preprocessing: Preprocessing
    manifest: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "label_names": list(self.label_names),
                "preprocessing": self.preprocessing.to_dict(),
                "manifest": self.manifest,
            },
            sort_keys=True,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> EmbeddedInfo:
        try:
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            _check_label_names(data["label_names"])
            return cls(
                label_names=[str(name) for name in data["label_names"]],
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                manifest=dict(data.get("manifest") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: malformed edgexfer metadata ({exc}); re-export the model") from None


def _check_label_names(names: Any) -> None:
    """Label names from a model file are untrusted: a list of at most ``MAX_LABELS`` strings."""
    from edgexfer.artifact import MAX_LABELS

    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("label_names must be a list of strings")
    if len(names) > MAX_LABELS:
        raise ValueError(f"{len(names)} label names (at most {MAX_LABELS})")


# --------------------------------------------------------------------------------- TFLite


def is_tflite_bytes(content: bytes) -> bool:
    """True when ``content`` carries the TFLite flatbuffer file identifier."""
    return len(content) >= 8 and content[4:8] == TFLITE_IDENTIFIER


def embed_tflite_metadata(content: bytes, info: EmbeddedInfo) -> bytes:
    """Return ``content`` with ``info`` stored as the ``"edgexfer"`` metadata entry (replaced
    if present). Uses the schema's object API (``flatbuffer_utils``) rather than hand-built
    flatbuffers."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(info.to_json().encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _text(m.name) != TFLITE_METADATA_NAME]
    model.metadata = kept + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_tflite_metadata(content: bytes, where: str = "model") -> EmbeddedInfo | None:
    """The embedded info of a TFLite file, or ``None`` when it has none.

    Reads only the metadata table through the generated accessors (no full unpack), so it
    is cheap even for large models.
    """
    from ai_edge_litert import schema_py_generated as schema

    if not is_tflite_bytes(content):
        raise ArtifactError(f"{where} is not a TFLite model (no TFL3 flatbuffer identifier)")
    try:
        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _text(entry.Name()) != TFLITE_METADATA_NAME:
                continue
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
                raw = content[buffer.Offset() : buffer.Offset() + buffer.Size()]
            else:
                raw = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
            return EmbeddedInfo.from_dict(json.loads(raw.decode("utf-8")), where)
    except ArtifactError:
        raise
    except Exception as exc:  # a damaged flatbuffer raises anything from IndexError to struct.error
        raise ArtifactError(f"{where}: cannot read TFLite metadata ({type(exc).__name__}: {exc})") from None
    return None


# ----------------------------------------------------------------------------------- ONNX


def onnx_metadata_props(info: EmbeddedInfo) -> dict[str, str]:
    """The ``metadata_props`` entries that carry ``info`` in an ONNX model."""
    return {
        ONNX_LABELS_KEY: json.dumps(list(info.label_names)),
        ONNX_PREPROCESSING_KEY: json.dumps(info.preprocessing.to_dict(), sort_keys=True),
        ONNX_MANIFEST_KEY: json.dumps(info.manifest, sort_keys=True),
    }


def embed_onnx_metadata(model_proto, info: EmbeddedInfo) -> None:
    """Set (replace) the edgexfer ``metadata_props`` of an ``onnx.ModelProto`` in place."""
    props = onnx_metadata_props(info)
    kept = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for key, value in kept + sorted(props.items()):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def info_from_onnx_props(props: dict[str, str], where: str = "model") -> EmbeddedInfo | None:
    """The embedded info from an ONNX ``metadata_props`` map, or ``None`` when it has none."""
    if ONNX_LABELS_KEY not in props or ONNX_PREPROCESSING_KEY not in props:
        return None
    try:
        data = {
            "label_names": json.loads(props[ONNX_LABELS_KEY]),
            "preprocessing": json.loads(props[ONNX_PREPROCESSING_KEY]),
            "manifest": json.loads(props.get(ONNX_MANIFEST_KEY, "{}")),
        }
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{where}: malformed edgexfer metadata ({exc}); re-export the model") from None
    return EmbeddedInfo.from_dict(data, where)


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def read_embedded_info(path: str | Path) -> EmbeddedInfo | None:
    """Embedded info of a ``.tflite`` or ``.onnx`` file (``None`` when the file has none)."""
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        return read_tflite_metadata(path.read_bytes(), where=str(path))
    if path.suffix.lower() == ".onnx":
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"{str(path)!r} is not an ONNX model ({first_line(exc)})") from None
        return info_from_onnx_props(dict(session.get_modelmeta().custom_metadata_map), where=str(path))
    raise ArtifactError(f"{str(path)!r} is not a TFLite/ONNX model (expected a .tflite or .onnx file)")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
