"""``export --format tflite-micro``: a fully int8 TFLite model as C source for TFLite Micro.

Writes, next to the int8 ``model.tflite`` it is made from:

- ``model.h``  — declarations and ``#define``s: model length, input shape, class count, the
  input and output quantisation (scale, zero point), the preprocessing (mean, std, resize,
  colour order) and ``EDGEXFER_TENSOR_ARENA_SIZE``, the estimated tensor arena;
- ``model.c``  — the flatbuffer bytes in a 16-byte-aligned ``const unsigned char`` array, the
  labels, and a lookup table ``edgexfer_input_lut[channel][pixel]`` that maps a raw 0–255 pixel
  straight to the model's int8 input (preprocessing and quantisation folded, no float on the
  device).

The files are C11 and C++11 (TFLite Micro projects are C++; they include ``model.h`` and
compile ``model.c`` as C, or rename it ``model.cc``). A model with any float tensor is refused,
naming the operators at fault: TFLite Micro's int8 kernels (and the MCUs without an FPU
it targets) need every activation in int8.

The arena estimate (:func:`estimate_arena`): TFLite Micro keeps weights in the flatbuffer
(flash) and puts only the non-constant tensors (the input, every operator's output) in the
arena. Walking the operators in execution order, a tensor lives from the operator that
writes it to the last one that reads it (model outputs to the end); the peak of the summed
live sizes (each rounded up to 16 bytes, TFLM's alignment) is what its greedy memory planner
needs at best. To that it adds the interpreter's own bookkeeping in the arena (an estimate of
TfLiteEvalTensor/TfLiteTensor structs per tensor, node data per operator, and the per-channel
requantisation multipliers and shifts of Conv/DepthwiseConv/FullyConnected ops), then 10 %
headroom for planner fragmentation and kernel scratch buffers (CMSIS-NN's im2col), rounded up
to 1 KiB. It is an estimate: confirm on the device with ``MicroInterpreter::arena_used_bytes()``.

Imports no TensorFlow: the flatbuffer is read with the schema that ships with ai-edge-litert.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import ExportError
from edgexfer.stdio import quiet_native_stderr
from edgexfer.tempfiles import write_text_atomically

ALIGNMENT = 16
HEADER_NAME = "model.h"
SOURCE_NAME = "model.c"
TFLITE_NAME = "model.tflite"
# Bookkeeping TFLite Micro keeps in the arena (bytes, 64-bit host sizes, which are ≥ the 32-bit MCU's).
_PER_TENSOR_BYTES = 64  # TfLiteEvalTensor + its dims + allocation-info record
_PER_IO_TENSOR_BYTES = 128  # the full TfLiteTensor of each model input/output
_PER_OP_BYTES = 96  # TfLiteNode, its input/output index arrays, the op's user data
_PER_CHANNEL_BYTES = 8  # int32 multiplier + int32 shift of per-channel requantisation
_HEADROOM = 0.10
_PER_CHANNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


@dataclass(frozen=True)
class _Tensor:
    index: int
    name: str
    type: str
    shape: tuple[int, ...]
    constant: bool

    @property
    def nbytes(self) -> int:
        itemsize = {
            "INT8": 1,
            "UINT8": 1,
            "BOOL": 1,
            "INT16": 2,
            "FLOAT16": 2,
            "BFLOAT16": 2,
            "INT32": 4,
            "FLOAT32": 4,
            "UINT32": 4,
            "INT64": 8,
            "FLOAT64": 8,
        }.get(self.type, 4)
        return int(np.prod([max(d, 1) for d in self.shape], dtype=np.int64)) * itemsize


@dataclass(frozen=True)
class _Operator:
    index: int
    code: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class TFLiteGraph:
    """The main subgraph of a TFLite flatbuffer: tensors, operators in execution order, I/O."""

    tensors: tuple[_Tensor, ...]
    operators: tuple[_Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraphs: int


def read_graph(content: bytes, where: str = "model") -> TFLiteGraph:
    """Parse the first subgraph of a TFLite flatbuffer with ai-edge-litert's schema."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        graph = model.subgraphs[0]
        codes = [
            op_names.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "CUSTOM") for c in model.operatorCodes
        ]
        buffers = model.buffers
        tensors = []
        for index, t in enumerate(graph.tensors):
            buffer = buffers[t.buffer] if t.buffer is not None and 0 < t.buffer < len(buffers) else None
            constant = buffer is not None and (
                (buffer.data is not None and len(buffer.data) > 0) or (buffer.offset or 0) > 1
            )
            name = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else str(t.name or "")
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
            tensors.append(_Tensor(index, name, type_names.get(t.type, str(t.type)), shape, constant))
        operators = tuple(
            _Operator(
                i,
                codes[op.opcodeIndex],
                tuple(int(x) for x in (op.inputs if op.inputs is not None else []) if x >= 0),
                tuple(int(x) for x in (op.outputs if op.outputs is not None else [])),
            )
            for i, op in enumerate(graph.operators or [])
        )
        return TFLiteGraph(
            tuple(tensors),
            operators,
            tuple(int(i) for i in graph.inputs),
            tuple(int(i) for i in graph.outputs),
            len(model.subgraphs),
        )
    except Exception as exc:  # a damaged flatbuffer raises anything from IndexError to struct.error
        raise ExportError(f"{where}: cannot read the TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def float_operators(graph: TFLiteGraph) -> list[str]:
    """``"OP 'layer'"`` for every operator that reads or writes a float tensor (model I/O included)."""
    floats = {t.index for t in graph.tensors if t.type in _FLOAT_TYPES}
    found = []
    for op in graph.operators:
        if floats & set(op.inputs + op.outputs):
            found.append(f"{op.code} {layer_name(graph.tensors[op.outputs[0]].name) if op.outputs else '?'!r}")
    for index in graph.inputs:
        if index in floats:
            found.insert(0, f"model input {layer_name(graph.tensors[index].name)!r}")
    return found


def layer_name(tensor_name: str) -> str:
    """The Keras layers in a converter tensor name, ``model/conv1/Relu;model/conv1/BiasAdd`` → ``conv1``
    (fused ops name several: ``stage0_relu+stage0_conv``); names without a model prefix as they are."""
    layers = []
    for segment in tensor_name.split(";"):
        parts = [p for p in segment.split("/") if p]
        name = parts[1] if len(parts) >= 3 else (parts[0] if parts else segment)
        if name not in layers:
            layers.append(name)
    return "+".join(layers) or tensor_name


def check_fully_int8(graph: TFLiteGraph, where: str) -> None:
    """``ExportError`` naming the float operators unless every tensor is integer."""
    if graph.subgraphs != 1:
        raise ExportError(f"{where} has {graph.subgraphs} subgraphs; tflite-micro takes single-graph classifiers")
    found = float_operators(graph)
    if not found:
        return
    count = sum(1 for t in graph.tensors if t.type in _FLOAT_TYPES)
    shown = ", ".join(found[:12]) + (f" … and {len(found) - 12} more" if len(found) > 12 else "")
    raise ExportError(
        f"{where} is not fully int8: {count} float tensors, in {shown}; tflite-micro needs every "
        "tensor in int8: export the Keras artifact with --format tflite-micro --quant int8 (post-"
        "training quantization with --calibration-data DIR, or from a QAT model)"
    )


def estimate_arena(graph: TFLiteGraph) -> dict[str, int]:
    """Tensor-arena estimate (bytes) by liveness over the operator order; see the module docstring."""
    born: dict[int, int] = {i: -1 for i in graph.inputs}
    last: dict[int, int] = {}
    for op in graph.operators:
        for index in op.outputs:
            born.setdefault(index, op.index)
        for index in op.inputs:
            last[index] = op.index
    end = len(graph.operators)
    for index in graph.outputs:
        last[index] = end
    live = {i: (start, last.get(i, start)) for i, start in born.items() if not graph.tensors[i].constant}

    def aligned(n: int) -> int:
        return -(-n // ALIGNMENT) * ALIGNMENT

    peak = 0
    for step in range(-1, end + 1):
        total = sum(aligned(graph.tensors[i].nbytes) for i, (a, b) in live.items() if a <= step <= b)
        peak = max(peak, total)
    channels = sum(
        graph.tensors[op.outputs[0]].shape[-1]
        for op in graph.operators
        if op.code in _PER_CHANNEL_OPS and op.outputs and graph.tensors[op.outputs[0]].shape
    )
    overhead = (
        _PER_TENSOR_BYTES * len(graph.tensors)
        + _PER_IO_TENSOR_BYTES * (len(graph.inputs) + len(graph.outputs))
        + _PER_OP_BYTES * len(graph.operators)
        + _PER_CHANNEL_BYTES * channels
    )
    total = int(math.ceil((peak + overhead) * (1 + _HEADROOM) / 1024.0)) * 1024
    return {
        "activation_peak_bytes": int(peak),
        "bookkeeping_bytes": int(overhead),
        "arena_bytes": total,
        "activation_tensors": len(live),
        "operators": len(graph.operators),
    }


def _c_string(text: str) -> str:
    """A C string literal valid in C and C++: printable ASCII as is, every other byte of the
    UTF-8 encoding (and backslash, quote, ``?`` against trigraphs) as an octal escape."""
    return (
        '"'
        + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '\\"?' else f"\\{b:03o}" for b in text.encode("utf-8"))
        + '"'
    )


def _c_float(value: float) -> str:
    text = repr(float(value))
    if "e" not in text and "." not in text and "inf" not in text and "nan" not in text:
        text += ".0"
    return text + "f"


def input_lut(preprocessing, scale: float, zero_point: int) -> np.ndarray:
    """int8 ``[channels][256]``: raw pixel → quantised model input, as the runtime computes it
    (``round(((p - mean) / std) / scale) + zero_point``, clipped)."""
    pixels = np.arange(256, dtype=np.float32)
    rows = []
    for c in range(preprocessing.channels):
        x = (pixels - np.float32(preprocessing.mean[c])) / np.float32(preprocessing.std[c])
        rows.append(np.clip(np.round(x / np.float32(scale)) + zero_point, -128, 127).astype(np.int8))
    return np.stack(rows)


def write_c_sources(
    content: bytes, dest_dir: str | os.PathLike[str], *, label_names: Sequence[str], preprocessing, where: str = "model"
) -> dict[str, Any]:
    """Check ``content`` is fully int8 and write ``model.h``/``model.c`` into ``dest_dir``.

    Returns what it measured: model bytes, the arena estimate, input/output quantisation.
    """
    graph = read_graph(content, where)
    check_fully_int8(graph, where)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ExportError(
            f"{where} has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; an edgexfer "
            "classifier has one of each"
        )
    quant = _io_quantization(content, where)
    in_t, out_t = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    if in_t.type != "INT8" or out_t.type != "INT8":
        raise ExportError(
            f"{where}: input {in_t.type} and output {out_t.type}; tflite-micro needs int8 input and "
            "output (export the Keras artifact with --format tflite-micro, or a .tflite with "
            "--quant int8 --io-type int8)"
        )
    arena = estimate_arena(graph)
    height, width, channels = (list(in_t.shape[1:]) + [1, 1, 1])[:3]
    if channels != preprocessing.channels or height != preprocessing.input_size:
        raise ExportError(
            f"{where}: input shape {in_t.shape} does not match the preprocessing "
            f"({preprocessing.input_size} px, {preprocessing.channels} channels); re-export the model"
        )
    ops = sorted({op.code for op in graph.operators})
    dest = Path(dest_dir)
    lut = input_lut(preprocessing, *quant["input"])
    defines = {
        "EDGEXFER_MODEL_LEN": f"{len(content)}u",
        "EDGEXFER_TENSOR_ARENA_SIZE": f"{arena['arena_bytes']}u",
        "EDGEXFER_INPUT_HEIGHT": str(height),
        "EDGEXFER_INPUT_WIDTH": str(width),
        "EDGEXFER_INPUT_CHANNELS": str(channels),
        "EDGEXFER_NUM_CLASSES": str(len(label_names)),
        "EDGEXFER_INPUT_SCALE": _c_float(quant["input"][0]),
        "EDGEXFER_INPUT_ZERO_POINT": str(quant["input"][1]),
        "EDGEXFER_OUTPUT_SCALE": _c_float(quant["output"][0]),
        "EDGEXFER_OUTPUT_ZERO_POINT": str(quant["output"][1]),
    }
    header = _HEADER.format(
        defines="\n".join(f"#define {k} {v}" for k, v in defines.items()),
        mean=", ".join(_c_float(v) for v in preprocessing.mean[:channels]),
        std=", ".join(_c_float(v) for v in preprocessing.std[:channels]),
        resize=preprocessing.resize,
        color=preprocessing.color,
        ops="\n".join(f" *   {op}" for op in ops),
        peak=arena["activation_peak_bytes"],
        book=arena["bookkeeping_bytes"],
        channels=channels,
        resolver=len(ops),
    )
    data = ",".join(("\n  " if i % 16 == 0 else "") + f"0x{b:02x}" for i, b in enumerate(content))
    lut_rows = ",\n".join("  {" + ",".join(str(int(v)) for v in row) + "}" for row in lut)
    source = _SOURCE.format(
        data=data,
        labels=",\n".join(f"  {_c_string(name)}" for name in label_names),
        lut=lut_rows,
        mean=", ".join(_c_float(v) for v in preprocessing.mean[:channels]),
        std=", ".join(_c_float(v) for v in preprocessing.std[:channels]),
    )
    write_text_atomically(dest / HEADER_NAME, header)
    write_text_atomically(dest / SOURCE_NAME, source)
    return {
        "model_bytes": len(content),
        "arena": arena,
        "operators": ops,
        "input": {"scale": quant["input"][0], "zero_point": quant["input"][1]},
        "output": {"scale": quant["output"][0], "zero_point": quant["output"][1]},
        "files": [HEADER_NAME, SOURCE_NAME, TFLITE_NAME],
    }


def _io_quantization(content: bytes, where: str) -> dict[str, tuple[float, int]]:
    """Per-tensor (scale, zero point) of the input and output, read with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_native_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
        interpreter = Interpreter(model_content=content)
    result = {}
    for key, detail in (("input", interpreter.get_input_details()[0]), ("output", interpreter.get_output_details()[0])):
        scale, zero_point = detail["quantization"]
        if not scale:
            raise ExportError(f"{where}: the {key} tensor has no quantisation parameters; export with --quant int8")
        result[key] = (float(scale), int(zero_point))
    return result


_HEADER = """\
/* Generated by edgexfer (export --format tflite-micro). Do not edit: re-export instead.
 *
 * A fully int8 TFLite classifier for TensorFlow Lite Micro. Use:
 *
 *   #include "model.h"
 *   alignas(16) static uint8_t arena[EDGEXFER_TENSOR_ARENA_SIZE];
 *   const tflite::Model* model = tflite::GetModel(edgexfer_model);
 *   tflite::MicroMutableOpResolver<{resolver}> resolver;  // add the operators listed below
 *   tflite::MicroInterpreter interpreter(model, resolver, arena, sizeof(arena));
 *   interpreter.AllocateTensors();
 *   int8_t* in = interpreter.input(0)->data.int8;          // H x W x C, row-major (NHWC)
 *   for (i ...) in[i] = edgexfer_input_lut[i % EDGEXFER_INPUT_CHANNELS][pixel[i]];
 *   interpreter.Invoke();
 *   int8_t* out = interpreter.output(0)->data.int8;        // one score per class
 *   // probability of class k = (out[k] - EDGEXFER_OUTPUT_ZERO_POINT) * EDGEXFER_OUTPUT_SCALE
 *   // its name: edgexfer_labels[k]
 *
 * Operators the resolver needs:
{ops}
 *
 * Preprocessing (done by edgexfer_input_lut): resize the image to
 * EDGEXFER_INPUT_WIDTH x EDGEXFER_INPUT_HEIGHT ({resize}), {color} channel order, then per channel
 * x = (pixel - mean) / std and q = round(x / EDGEXFER_INPUT_SCALE) + EDGEXFER_INPUT_ZERO_POINT.
 *
 * EDGEXFER_TENSOR_ARENA_SIZE is an estimate: {peak} bytes of activations live at the peak
 * (liveness over the operator order), {book} bytes of interpreter bookkeeping, +10 % headroom,
 * rounded up to 1 KiB. Check it on the device with interpreter.arena_used_bytes().
 */
#ifndef EDGEXFER_MODEL_H_
#define EDGEXFER_MODEL_H_

#include <stdint.h>

{defines}

#ifdef __cplusplus
extern "C" {{
#endif

/* The .tflite flatbuffer, 16-byte aligned (TFLite Micro reads it in place, from flash). */
extern const unsigned char edgexfer_model[EDGEXFER_MODEL_LEN];
extern const unsigned int edgexfer_model_len;
/* Class names, index order of the model's output. */
extern const char* const edgexfer_labels[EDGEXFER_NUM_CLASSES];
/* Per-channel preprocessing: x = (pixel - mean) / std (channel order {color}). */
extern const float edgexfer_input_mean[EDGEXFER_INPUT_CHANNELS];
extern const float edgexfer_input_std[EDGEXFER_INPUT_CHANNELS];
/* Raw pixel (0..255) -> int8 model input, preprocessing and quantisation folded. */
extern const int8_t edgexfer_input_lut[EDGEXFER_INPUT_CHANNELS][256];

#ifdef __cplusplus
}}
#endif

#endif /* EDGEXFER_MODEL_H_ */
"""

_SOURCE = """\
/* Generated by edgexfer (export --format tflite-micro). Do not edit: re-export instead. */
#include "model.h"

#if defined(__cplusplus)
#define EDGEXFER_ALIGNED alignas(16)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define EDGEXFER_ALIGNED _Alignas(16)
#else
#define EDGEXFER_ALIGNED __attribute__((aligned(16)))
#endif

#ifdef __cplusplus
extern "C" {{
#endif

EDGEXFER_ALIGNED const unsigned char edgexfer_model[EDGEXFER_MODEL_LEN] = {{{data}
}};
const unsigned int edgexfer_model_len = EDGEXFER_MODEL_LEN;

const char* const edgexfer_labels[EDGEXFER_NUM_CLASSES] = {{
{labels}
}};

const float edgexfer_input_mean[EDGEXFER_INPUT_CHANNELS] = {{{mean}}};
const float edgexfer_input_std[EDGEXFER_INPUT_CHANNELS] = {{{std}}};

const int8_t edgexfer_input_lut[EDGEXFER_INPUT_CHANNELS][256] = {{
{lut}
}};

#ifdef __cplusplus
}}
#endif
"""


# ----------------------------------------------------------------------------- the stage


def convert_tflite_micro(keras_model, dest: Path, quant: str, info, **options) -> dict[str, Any]:
    """The ``FORMATS`` converter: int8 ``dest`` (``model.tflite``) with LiteRT's converter, then
    ``model.h``/``model.c`` beside it. Refuses (``ExportError``) a result with float tensors."""
    from edgexfer.export._tflite import convert_tflite

    # TFLite Micro's kernels take int8 in and out (the input LUT below maps pixels to int8), unlike
    # the phone runtimes' uint8 default of a .tflite export.
    options["io_type"] = options.get("io_type") or "int8"
    result = convert_tflite(keras_model, dest, quant, info, **options)
    micro = write_c_sources(
        dest.read_bytes(),
        dest.parent,
        label_names=info.label_names,
        preprocessing=info.preprocessing,
        where="the converted int8 model",
    )
    result["quantization"]["tflite_micro"] = micro
    # the converter's own "keeps float32 tensors" warning cannot apply: write_c_sources refused those
    result["warnings"] = [w for w in result.get("warnings", []) if "float32 tensors" not in w]
    return result


def export_tflite_artifact(source, out: str | os.PathLike[str]):
    """``export --format tflite-micro`` of a TFLite export artifact: the same flatbuffer, as C.

    Needs no TensorFlow (the runtime-only install can do it). ``source`` is an ``Artifact``
    holding ``model.tflite``; refused, naming the float operators, unless it is fully int8.
    """
    import shutil

    from edgexfer.artifact import refuse_input_as_out, writing_artifact
    from edgexfer.evaluate.macs import model_file_macs

    refuse_input_as_out(out, source, error=ExportError)
    manifest = source.manifest
    content = source.model_path.read_bytes()
    with writing_artifact(out) as writer:
        micro = write_c_sources(
            content,
            writer.tmp,
            label_names=manifest.label_names,
            preprocessing=manifest.preprocessing,
            where=str(source.model_path),
        )
        shutil.copyfile(source.model_path, writer.tmp / TFLITE_NAME)
        quantization = {**(manifest.quantization or {}), "mode": "int8", "tflite_micro": micro}
        exported = source.child_manifest(
            "export",
            {"format": "tflite-micro", "quant": "int8", "from_tflite": str(source.model_path.resolve())},
            TFLITE_NAME,
            quantization=quantization,
        )
        import gzip

        metrics = {
            "format": "tflite-micro",
            "quant": "int8",
            "size_bytes": len(content),
            "gzip_bytes": len(gzip.compress(content, compresslevel=9)),
            "source_size_bytes": None,
            "size_ratio": None,
            "conversion_seconds": 0.0,
            "fp32_tensor_count": 0,
            "tensor_arena_bytes": micro["arena"]["arena_bytes"],
            "macs": model_file_macs(source.model_path),
        }
        return writer.commit(exported, metrics)
