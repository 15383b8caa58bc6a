"""The ONNX metadata that consumers other than edgexfer read, written next to edgexfer's own
``edgexfer.*`` ``metadata_props``.

What each consumer reads (checked against their loading code):

- Ultralytics ``AutoBackend`` and the many apps written after it: ``metadata_props`` ``names``
  (a Python literal ``{0: 'cat', 1: 'dog'}``, read with ``ast.literal_eval``), ``imgsz``
  (``[h, w]``), ``task``, ``channels``, ``description``, ``author``, ``version``.
- onnxruntime ``session.get_modelmeta()``: ``description`` is the model's ``doc_string``,
  ``graph_description`` the graph's, ``version`` the ``model_version``, ``producer_name``;
  ``custom_metadata_map`` all ``metadata_props``.
- Netron shows the same fields in its model properties.

Not written: ONNX's ``Image.BitmapPixelFormat`` / ``Image.NominalPixelRange`` keys
(``docs/MetadataProps.md``), because they apply to inputs with the ``IMAGE`` denotation, which
Windows ML binds as NCHW images, and edgexfer's ONNX input is NHWC float; claiming it would
make such a client feed the wrong layout.
"""

from __future__ import annotations

from edgexfer.runtime.metadata import EmbeddedInfo

ULTRALYTICS_KEYS = ("names", "imgsz", "task", "channels", "description", "author", "version")


def preprocessing_words(info: EmbeddedInfo) -> str:
    """The preprocessing in words, for a ``doc_string``."""
    pre = info.preprocessing
    return (
        f"Input: float32 N×{pre.input_size}×{pre.input_size}×{pre.channels} ({pre.layout}), "
        f"{pre.color} pixels resized to {pre.input_size}×{pre.input_size} ({pre.resize}, aspect ratio not "
        f"kept), then (pixel - mean) / std per channel with mean {list(pre.mean)} and std {list(pre.std)} "
        f"(pixels 0..255). Output: N×{len(info.label_names)} class probabilities (softmax), in the order "
        "of the 'names' metadata."
    )


def common_onnx_metadata(info: EmbeddedInfo) -> dict[str, str]:
    """``metadata_props`` that Ultralytics-style consumers read (see the module docstring)."""
    from edgexfer import __version__

    pre = info.preprocessing
    manifest = info.manifest
    names = {i: name for i, name in enumerate(info.label_names)}
    return {
        "names": repr(names),
        "imgsz": repr([pre.input_size, pre.input_size]),
        "task": "classify",
        "channels": str(pre.channels),
        "description": (
            f"{manifest.get('backbone', 'image')} classifier exported by edgexfer "
            f"({manifest.get('quant', 'none')}); " + preprocessing_words(info)
        ),
        "author": "edgexfer",
        "version": __version__,
    }


def embed_common_onnx_metadata(model_proto, info: EmbeddedInfo) -> None:
    """Set the common keys, the model's and the graph's ``doc_string`` in place (replacing
    keys of the same name; edgexfer's own keys are untouched)."""
    props = common_onnx_metadata(info)
    kept = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for key, value in kept + sorted(props.items()):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    words = preprocessing_words(info)
    model_proto.doc_string = f"Image classifier ({len(info.label_names)} classes) exported by edgexfer. " + words
    model_proto.graph.doc_string = words
