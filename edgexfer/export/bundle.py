"""A deploy bundle: what an app developer needs next to an exported model, in one folder.

``write_bundle(export_artifact, dest)`` writes:

- the model file (``model.tflite`` / ``model.onnx``; for ``tflite-micro`` also ``model.c`` and
  ``model.h``),
- ``labels.txt`` (one class a line, output index order) and ``preprocessing.json`` (the numbers),
- ``README.md``: input and output, the preprocessing in words and numbers, the quantisation,
  how to run it (and for tflite-micro, how to drop the C files into a TFLite Micro project),
- ``predict.py``: a minimal example that needs only numpy, Pillow and the model's runtime
  (ai-edge-litert or onnxruntime) — not even edgexfer — so it shows every step an app has to do.

The bundle is written to a temporary sibling folder and renamed into place; an existing
``dest`` is never overwritten. Imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgexfer.artifact import Artifact
from edgexfer.errors import ArtifactError, ConfigError

EXAMPLE = "predict.py"
RUNTIME_PACKAGE = {".tflite": ("ai-edge-litert", "LiteRT"), ".onnx": ("onnxruntime", "onnxruntime")}
_RESIZE_WORDS = {
    "bilinear": "bilinear",
    "nearest": "nearest-neighbour",
    "bicubic": "bicubic",
    "area": "box (pixel-area average)",
    "lanczos": "Lanczos",
}


def write_bundle(artifact: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Write the deploy bundle of the export artifact ``artifact`` to the new folder ``dest``."""
    source = Artifact(artifact)
    model_path = source.model_path
    suffix = model_path.suffix.lower()
    if suffix not in RUNTIME_PACKAGE:
        raise ArtifactError(
            f"{str(source.path)!r} holds {model_path.name}; a deploy bundle is made from a .tflite "
            "or .onnx export (edgexfer export ARTIFACT --format tflite|onnx|tflite-micro)"
        )
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigError(
            f"bundle folder {str(dest)!r} already exists and is not empty; choose a new folder (nothing was written)"
        )
    manifest = source.manifest
    config = manifest.config or {}
    fmt = config.get("format", suffix.lstrip("."))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        shutil.copyfile(model_path, tmp / model_path.name)
        extra_files = [name for name in ("model.c", "model.h") if (source.path / name).is_file()]
        for name in extra_files:
            shutil.copyfile(source.path / name, tmp / name)
        (tmp / "labels.txt").write_text("".join(f"{name}\n" for name in manifest.label_names))
        io = _io_details(tmp / model_path.name)
        (tmp / "preprocessing.json").write_text(
            json.dumps({**manifest.preprocessing.to_dict(), "input": io["input"], "output": io["output"]}, indent=2)
            + "\n"
        )
        (tmp / EXAMPLE).write_text(_EXAMPLE.replace("__MODEL__", model_path.name))
        (tmp / "README.md").write_text(
            _readme(manifest, fmt, config.get("quant", "none"), model_path, io, extra_files, source)
        )
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _io_details(model_file: Path) -> dict[str, Any]:
    """Input/output shape, dtype and quantisation as the runtime sees them."""
    from edgexfer.runtime import load_model

    model = load_model(model_file)
    backend = model._backend  # noqa: SLF001 - the runtime's own view of the tensors
    detail = {}
    for key, dtype, quant in (
        ("input", backend.input_dtype, backend.input_quant),
        ("output", backend.output_dtype, backend.output_quant),
    ):
        detail[key] = {
            "dtype": str(dtype),
            "scale": quant[0] if quant else None,
            "zero_point": quant[1] if quant else None,
        }
    p = model.preprocessing
    detail["input"]["shape"] = [1, p.input_size, p.input_size, p.channels]
    detail["output"]["shape"] = [1, len(model.label_names)]
    return detail


def _readme(
    manifest, fmt: str, quant: str, model_path: Path, io: dict[str, Any], extra_files: list[str], source: Artifact
) -> str:
    p = manifest.preprocessing
    package, runtime = RUNTIME_PACKAGE[model_path.suffix.lower()]
    size = p.input_size
    channels = "".join(p.color)  # "RGB" / "BGR"
    inp, out = io["input"], io["output"]
    lines = [
        f"# {manifest.backbone or 'edgexfer'} classifier — {fmt} {quant}",
        "",
        f"Exported by edgexfer from `{source.path}` ({manifest.stage}; parent "
        f"`{(manifest.parent or {}).get('path', '?')}`). {len(manifest.label_names)} classes.",
        "",
        "| file | what |",
        "|---|---|",
        f"| `{model_path.name}` | the model ({model_path.stat().st_size:,} bytes); labels and preprocessing "
        "are also embedded in it |",
        "| `labels.txt` | class names, one a line, in output order |",
        "| `preprocessing.json` | the numbers below, machine-readable |",
        f"| `{EXAMPLE}` | a minimal example: numpy, Pillow and {package} only |",
    ]
    if extra_files:
        lines.append("| `model.c`, `model.h` | the same model as C source for TensorFlow Lite Micro |")
    lines += [
        "",
        "## Run the example",
        "",
        "```bash",
        f"pip install numpy pillow {package}",
        f"python {EXAMPLE} image.jpg [more images ...]",
        "```",
        "",
        "It prints the top classes and their probabilities for each image. `pip install edgexfer` "
        "(the runtime-only install) also runs it: `edgexfer predict "
        f"{model_path.name} image.jpg`.",
        "",
        "## Input",
        "",
        f"One tensor `{inp['dtype']}` of shape `{inp['shape']}` (batch, height, width, channels: NHWC). "
        "From an image file:",
        "",
        "1. Decode it, apply the EXIF orientation, and convert to 3-channel RGB (grayscale is repeated "
        "over the channels; transparent pixels are composited on black).",
        f"2. Resize to {size}×{size} pixels, ignoring the aspect ratio, with the "
        f"{_RESIZE_WORDS.get(p.resize, p.resize)} filter (Pillow's `{p.resize}`; it antialiases "
        "when shrinking).",
        f"3. Channel order {channels}" + (" (reverse RGB)." if p.color == "BGR" else "."),
        "4. Per channel, as float32: `x = (pixel - mean) / std` with "
        f"mean = {list(p.mean)} and std = {list(p.std)} (pixel in 0…255).",
    ]
    if inp["scale"] is not None:
        lines.append(
            f"5. Quantise to {inp['dtype']}: `q = clip(round(x / {inp['scale']!r}) + {inp['zero_point']}, "
            "-128, 127)` (input scale and zero point)."
        )
    lines += [
        "",
        "## Output",
        "",
        f"One tensor `{out['dtype']}` of shape `{out['shape']}`: a probability per class (softmax), in the "
        "order of `labels.txt`.",
    ]
    if out["scale"] is not None:
        lines.append(f"Dequantise: `p = (q - ({out['zero_point']})) * {out['scale']!r}`.")
    lines += [
        "",
        "## Runtimes",
        "",
        f"- Python: `{package}` (as in `{EXAMPLE}`), or `pip install edgexfer` and `edgexfer predict`.",
        "- Android / iOS: LiteRT (TensorFlow Lite) with the `.tflite` file; do steps 1–5 in the app."
        if model_path.suffix == ".tflite"
        else "- C, C++, C#, Java, JavaScript: onnxruntime's bindings with the `.onnx` file; do steps 1–4 in the app.",
    ]
    if extra_files:
        lines += ["", "## Microcontroller (TensorFlow Lite Micro)", "", _MICRO_HOWTO]
    return "\n".join(lines) + "\n"


_MICRO_HOWTO = """\
`model.c` holds the same flatbuffer as a 16-byte-aligned `const` array (it stays in flash),
the labels and `edgexfer_input_lut`, a table from raw pixel to int8 input with steps 4–5
folded in (no float on the device). `model.h` has the sizes, the quantisation, the operators
the resolver needs and `EDGEXFER_TENSOR_ARENA_SIZE`, an estimate of the tensor arena.

1. Copy `model.c` and `model.h` into your TFLite Micro project (for example next to
   `main_functions.cc` of TFLM's `hello_world`); compile `model.c` as C11, or rename it
   `model.cc` for a C++-only build.
2. Include `model.h`; register the operators listed in it with a
   `tflite::MicroMutableOpResolver<N>`; give `tflite::MicroInterpreter` a
   `alignas(16) uint8_t arena[EDGEXFER_TENSOR_ARENA_SIZE]`.
3. Fill `interpreter.input(0)->data.int8[i] = edgexfer_input_lut[i % EDGEXFER_INPUT_CHANNELS][pixel[i]]`
   over the resized H×W×C image, `Invoke()`, and take the arg-max of `output(0)->data.int8`;
   its name is `edgexfer_labels[k]`.
4. After `AllocateTensors()`, `interpreter.arena_used_bytes()` gives the arena really used:
   shrink or grow `EDGEXFER_TENSOR_ARENA_SIZE` to it."""


# The example is a template (not an f-string) so its own braces stay as they are.
_EXAMPLE = '''"""Classify images with __MODEL__: a minimal example that needs only numpy, Pillow and the
model's runtime (ai-edge-litert for .tflite, onnxruntime for .onnx).

    python predict.py image.jpg [more images ...]

Every step an app must do is here: decode, resize, normalise, quantise, run, dequantise.
The numbers come from preprocessing.json and labels.txt next to this file.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
MODEL = HERE / "__MODEL__"
PRE = json.loads((HERE / "preprocessing.json").read_text())
LABELS = (HERE / "labels.txt").read_text().splitlines()
FILTERS = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC,
           "area": Image.BOX, "lanczos": Image.LANCZOS}


def load_pixels(path):
    """Image file -> uint8 H x W x 3 at the model's input size (RGB, or BGR if the model wants it)."""
    size = PRE["input_size"]
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size, size))  # decode at a reduced DCT scale first, as edgexfer does
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")  # transparent pixels on black, as in training
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), FILTERS[PRE["resize"]])
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., ::-1] if PRE["color"] == "BGR" else pixels


def to_input(pixels):
    """uint8 pixels -> the model's input tensor: (x - mean) / std, then int8 if the model is quantised."""
    x = (pixels.astype(np.float32) - np.float32(PRE["mean"])) / np.float32(PRE["std"])
    x = x[None]  # batch of one, NHWC
    if PRE["input"]["scale"] is not None:
        x = np.clip(np.round(x / PRE["input"]["scale"]) + PRE["input"]["zero_point"], -128, 127)
    return x.astype(PRE["input"]["dtype"])


def make_runner():
    """A function input tensor -> output tensor, on LiteRT or onnxruntime."""
    if MODEL.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(MODEL))
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def run(x):
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])
        return run
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def main(paths):
    if not paths:
        sys.exit("usage: python predict.py IMAGE [IMAGE ...]")
    run = make_runner()
    for path in paths:
        y = run(to_input(load_pixels(path)))[0]
        if PRE["output"]["scale"] is not None:  # int8 output -> probabilities
            y = (y.astype(np.float32) - PRE["output"]["zero_point"]) * PRE["output"]["scale"]
        top = np.argsort(-y, kind="stable")[:3]
        print(path, " ".join(f"{LABELS[k]}={float(y[k]):.4f}" for k in top))


if __name__ == "__main__":
    main(sys.argv[1:])
'''
