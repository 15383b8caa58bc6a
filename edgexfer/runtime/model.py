"""On-device inference for exported models: LiteRT for ``.tflite``, onnxruntime for ``.onnx``.

Imports no TensorFlow (a test asserts it): only numpy, Pillow, the two runtimes (each
imported when a model of its kind is loaded) and TF-free edgexfer modules.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import MANIFEST, Artifact, Preprocessing
from edgexfer.errors import ArtifactError, ConfigError, DataError
from edgexfer.runtime.images import load_images, normalize
from edgexfer.runtime.metadata import (
    EmbeddedInfo,
    first_line,
    info_from_onnx_props,
    is_tflite_bytes,
    read_tflite_metadata,
)
from edgexfer.runtime.tflite_metadata import info_from_standard_metadata

RUNTIME_SUFFIXES = {".tflite": "tflite", ".onnx": "onnx"}


@dataclass
class Prediction:
    """One file's prediction: the top class and the ``top_k`` (label, probability) pairs."""

    path: str
    label: str
    score: float
    top_k: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
        }


class _TFLiteBackend:
    """LiteRT interpreter (XNNPACK by default); resizes its input to each batch size."""

    kind = "tflite"

    def __init__(self, path: Path, num_threads: int | None):
        from ai_edge_litert.interpreter import Interpreter

        from edgexfer.stdio import quiet_native_stderr

        try:
            with quiet_native_stderr():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate"
                self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:
            raise ArtifactError(f"{str(path)!r} is not a TFLite model LiteRT can load ({first_line(exc)})") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(
                f"{str(path)!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "an edgexfer classifier has one of each"
            )
        self.input, self.output = inputs[0], outputs[0]
        self.input_dtype = np.dtype(self.input["dtype"])
        self.output_dtype = np.dtype(self.output["dtype"])
        self.input_quant = _quant_params(self.input)
        self.output_quant = _quant_params(self.output)
        self.input_shape = tuple(int(v) for v in self.input["shape"][1:])
        self.num_outputs = int(self.output["shape"][-1])
        self._batch = int(self.input["shape"][0])

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [x.shape[0], *self.input_shape])
            self.interpreter.allocate_tensors()
            self._batch = x.shape[0]
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])


class _OrtBackend:
    """onnxruntime session (CPU provider unless ``providers`` says otherwise); runs whole batches."""

    kind = "onnx"

    def __init__(self, path: Path, num_threads: int | None, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:
            raise ArtifactError(
                f"{str(path)!r} is not an ONNX model onnxruntime can load ({first_line(exc)})"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(
                f"{str(path)!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
                "an edgexfer classifier has one of each"
            )
        self.input_name = inputs[0].name
        if inputs[0].type != "tensor(float)" or outputs[0].type != "tensor(float)":
            raise ArtifactError(
                f"{str(path)!r} takes {inputs[0].type} and returns {outputs[0].type}; "
                "the runtime runs ONNX models with float input and output"
            )
        self.input_dtype = self.output_dtype = np.dtype(np.float32)
        self.input_quant = self.output_quant = None
        self.input_shape = tuple(v if isinstance(v, int) else None for v in inputs[0].shape[1:])
        last = outputs[0].shape[-1] if outputs[0].shape else None
        self.num_outputs = last if isinstance(last, int) else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers = list(self.session.get_providers())

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class EdgeModel:
    """An exported classifier ready to predict: labels, preprocessing and a runtime backend.

    ``predict_proba`` takes raw uint8 pixels and applies the model's own preprocessing, so a
    caller needs nothing but the model file.
    """

    def __init__(self, path: Path, backend, info: EmbeddedInfo):
        self.path = path
        self._backend = backend
        self.label_names = list(info.label_names)
        self.preprocessing: Preprocessing = info.preprocessing
        self.manifest = info.manifest
        self._check_input_shape()
        self._pixel_input = _takes_raw_pixels(backend, self.preprocessing)

    # -- what the model is
    @property
    def backend(self) -> str:
        return self._backend.kind

    @property
    def input_dtype(self) -> np.dtype:
        return self._backend.input_dtype

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` of a quantized input tensor, else ``None``."""
        return self._backend.input_quant

    @property
    def output_quantization(self) -> tuple[float, int] | None:
        return self._backend.output_quant

    @property
    def input_shape(self) -> tuple[int, int, int]:
        p = self.preprocessing
        return (p.input_size, p.input_size, p.channels)

    # -- prediction
    def predict_proba(self, images_uint8: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (float32 ``N×C``) for uint8 ``N×H×W×C`` pixels at the input size."""
        images = np.asarray(images_uint8)
        if images.dtype != np.uint8:
            raise DataError(
                f"predict_proba takes uint8 pixels, got dtype {images.dtype}; "
                "for already preprocessed float input use predict_preprocessed"
            )
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise DataError(
                f"images must have shape N×{'×'.join(map(str, self.input_shape))}, got "
                f"{'×'.join(map(str, images.shape))}; predict_files resizes for you"
            )
        if self._pixel_input:
            # a uint8 input quantized as (pixel - mean) / std takes the pixels themselves, as
            # MediaPipe Tasks and the Task Library feed it (no float round trip, no rounding)
            if batch_size < 1:
                raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
            outputs = [
                self._dequantize(self._backend.run(np.ascontiguousarray(images[start : start + batch_size])))
                for start in range(0, len(images), batch_size)
            ]
            if not outputs:
                return np.zeros((0, len(self.label_names)), np.float32)
            return np.concatenate(outputs)
        return self.predict_preprocessed(normalize(images, self.preprocessing), batch_size)

    def predict_preprocessed(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities for input that is already preprocessed (float32 ``(x-mean)/std``)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        x = np.asarray(x, dtype=np.float32)
        outputs = [self._run(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
        if not outputs:
            return np.zeros((0, len(self.label_names)), np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def predict_files(
        self, paths: Iterable[str | os.PathLike[str]], top_k: int = 5, batch_size: int = 32
    ) -> list[Prediction]:
        """Read, resize and classify image files; a bad file raises ``DataError`` naming it."""
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        paths = [Path(p) for p in paths]
        k = min(top_k, len(self.label_names))
        results: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            probs = self.predict_proba(load_images(chunk, self.preprocessing), batch_size)
            for path, row in zip(chunk, probs):
                order = np.argsort(-row, kind="stable")[:k]
                ranked = [(self.label_names[i], float(row[i])) for i in order]
                results.append(Prediction(str(path), ranked[0][0], ranked[0][1], ranked))
        return results

    def invoke_fn(self, x: np.ndarray):
        """A zero-argument callable that runs the model on the preprocessed batch ``x``,
        converted to the input dtype (quantized) once here: what latency measurements time."""
        backend = self._backend
        prepared = self._prepare_input(np.asarray(x, dtype=np.float32))
        return lambda: backend.run(prepared)

    @property
    def providers(self) -> list[str]:
        """The onnxruntime execution providers in use (empty for LiteRT)."""
        return list(getattr(self._backend, "providers", []))

    def _prepare_input(self, x: np.ndarray) -> np.ndarray:
        backend = self._backend
        if backend.input_quant is not None:
            scale, zero_point = backend.input_quant
            info = np.iinfo(backend.input_dtype)
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(backend.input_dtype)
        return np.ascontiguousarray(x, dtype=backend.input_dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._dequantize(self._backend.run(self._prepare_input(x)))

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        backend = self._backend
        if backend.output_quant is not None:
            scale, zero_point = backend.output_quant
            y = (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32, copy=False)

    def _check_input_shape(self) -> None:
        shape = self._backend.input_shape
        expected = self.input_shape
        if len(shape) != 3 or any(s is not None and s != e for s, e in zip(shape, expected)):
            raise ArtifactError(
                f"{str(self.path)!r}: the model's input {shape} does not match its "
                f"preprocessing (input_size {expected[0]}, channels {expected[2]}); "
                "re-export the model"
            )
        outputs = self._backend.num_outputs
        if outputs is not None and outputs != len(self.label_names):
            raise ArtifactError(
                f"{str(self.path)!r}: the model has {outputs} outputs but "
                f"{len(self.label_names)} label names; re-export the model"
            )

    def __repr__(self) -> str:
        return (
            f"EdgeModel({str(self.path)!r}, backend={self.backend!r}, "
            f"classes={len(self.label_names)}, input_dtype={self.input_dtype.name})"
        )


def load_model(
    path: str | os.PathLike[str],
    *,
    num_threads: int | None = None,
    label_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    providers: Sequence[str] | None = None,
) -> EdgeModel:
    """Load a ``.tflite``/``.onnx`` file or an export artifact directory for inference.

    Labels and preprocessing come from the artifact's manifest, else from the metadata
    embedded in the file: edgexfer's own entry, else (``.tflite``) the standard TFLite Metadata
    that MediaPipe Model Maker and other tools write; ``label_names``/``preprocessing`` override both (for models not
    exported by edgexfer). ``providers``: onnxruntime execution providers in priority order
    (default CPU only), e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``.
    """
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0
    ):
        raise ConfigError(f"threads must be a count of at least 1, or 0 for all cores; got {num_threads!r}")
    if num_threads == 0:  # all cores, as `edgexfer check --threads 0` means
        num_threads = _usable_cores()
    path = Path(path)
    manifest_info = None
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"{str(path)!r} is not an export artifact (no {MANIFEST}) nor a model file")
        artifact = Artifact(path)
        model_path = artifact.model_path
        if model_path.suffix.lower() not in RUNTIME_SUFFIXES:
            raise ArtifactError(
                f"artifact {str(path)!r} holds {model_path.name}, which the runtime "
                "cannot run; export it to tflite or onnx first (edgexfer export)"
            )
        manifest_info = EmbeddedInfo(
            artifact.manifest.label_names,
            artifact.manifest.preprocessing,
            {
                "stage": artifact.manifest.stage,
                "backbone": artifact.manifest.backbone,
                "quantization": artifact.manifest.quantization,
            },
        )
        path = model_path
    if not path.is_file():
        raise ArtifactError(f"model {str(path)!r} does not exist")
    kind = RUNTIME_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ArtifactError(
            f"{str(path)!r} is not a TFLite/ONNX model: expected a .tflite or .onnx "
            "file or an export artifact directory"
        )

    if kind == "tflite":
        content = path.read_bytes()
        if not is_tflite_bytes(content):
            raise ArtifactError(f"{str(path)!r} is not a TFLite model (no TFL3 flatbuffer identifier)")
        embedded = read_tflite_metadata(content, where=str(path))
        standard = info_from_standard_metadata(content, where=str(path))  # checked even when not used
        if embedded is not None and standard is not None and standard.label_names != embedded.label_names:
            raise ArtifactError(
                f"{str(path)!r}: its standard TFLite metadata and its edgexfer entry name "
                "different labels; re-export the model"
            )
        embedded = embedded or standard
        backend = _TFLiteBackend(path, num_threads)
    else:
        backend = _OrtBackend(path, num_threads, providers)
        embedded = info_from_onnx_props(backend.metadata, where=str(path))

    info = manifest_info or embedded
    if label_names is not None or preprocessing is not None:
        base = info or EmbeddedInfo([], Preprocessing(input_size=0))
        info = EmbeddedInfo(
            list(label_names) if label_names is not None else base.label_names,
            preprocessing or base.preprocessing,
            base.manifest,
        )
    if info is None or not info.label_names or not info.preprocessing.input_size:
        raise ArtifactError(
            f"{str(path)!r} carries no edgexfer labels and preprocessing (it was not exported "
            "by edgexfer); export the model's artifact with `edgexfer export`"
        )
    return EdgeModel(path, backend, info)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _takes_raw_pixels(backend, preprocessing: Preprocessing) -> bool:
    """Whether a uint8 input's quantization is ``(pixel - mean) / std`` itself (scale 1/std,
    zero point mean, the same for every channel): what ``export --io-type uint8`` writes."""
    if backend.input_dtype != np.dtype(np.uint8) or backend.input_quant is None:
        return False
    scale, zero_point = backend.input_quant
    mean, std = set(preprocessing.mean), set(preprocessing.std)
    if len(mean) != 1 or len(std) != 1:
        return False
    (mean_value,), (std_value,) = mean, std
    return abs(scale * std_value - 1.0) < 1e-5 and abs(zero_point - mean_value) <= 0.5


def _quant_params(detail: dict[str, Any]) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of an int8/uint8 per-tensor quantized TFLite tensor."""
    if np.dtype(detail["dtype"]) not in (np.dtype(np.int8), np.dtype(np.uint8)):
        return None
    scale, zero_point = detail["quantization"]
    return (float(scale), int(zero_point)) if scale else None
