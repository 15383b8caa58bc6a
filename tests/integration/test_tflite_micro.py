"""``export --format tflite-micro`` on a small trained CNN: the generated C compiles with the
system compiler (``-Wall -Werror``, as C11 and C++11), a program linked against it sees the
exact model bytes 16-byte aligned, the labels and the input lookup table; float models are
refused with their layers named; the export runs on LiteRT like any int8 TFLite file and
bundles with its C files."""

from __future__ import annotations

import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
from edgexfer.errors import ConfigError, ExportError
from edgexfer.export.stage import export_stage

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

LABELS = ["left", "middle", 'right "quoted"']  # a quote in a label: the C string must escape it
PRE = Preprocessing(input_size=12, mean=(120.0, 110.0, 100.0), std=(64.0, 60.0, 56.0))
CC = shutil.which("cc") or shutil.which("gcc")
CXX = shutil.which("c++") or shutil.which("g++")


def make_images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    x = rng.normal(110, 40, (n, 12, 12, 3))
    for i, c in enumerate(y):
        x[i, :, 4 * c : 4 * c + 4] += 60  # a bright vertical band: left, middle or right
    return np.clip(x, 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from edgexfer.runtime import normalize
    from edgexfer.tf_env import import_tf

    tf, keras = import_tf()
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("micro")
    x, y = make_images(300, seed=0)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inputs)
    h = keras.layers.DepthwiseConv2D(3, strides=2, activation="relu", name="dw_b")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax", name="head")(h))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(normalize(x, PRE), y, epochs=12, batch_size=32, verbose=0)
    data = root / "data"
    for index, (image, label) in enumerate(zip(x[:90], y[:90])):
        (data / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / f"c{label}" / f"{index:03d}.png")
    manifest = Manifest(
        stage="finetune",
        label_names=LABELS,
        preprocessing=PRE,
        backbone="tiny",
        weights="none",
        model_file="model.h5",
        seed=0,
    )
    with writing_artifact(root / "ft") as writer:
        model.save(writer.file("model.h5"), include_optimizer=False, save_format="h5")
        writer.commit(manifest)
    calibration = root / "calibration"  # loose images: unlabelled target-domain images
    calibration.mkdir()
    for index, image in enumerate(x[100:160]):
        Image.fromarray(image).save(calibration / f"{index:03d}.png")
    exported = export_stage(
        root / "ft", root / "micro", "tflite-micro", calibration_data=calibration, calibration_images=60
    )
    return SimpleNamespace(root=root, exported=exported, calibration=calibration, x=x)


@pytest.mark.skipif(CC is None, reason="no system C compiler")
def test_generated_c_compiles_and_holds_the_exact_model(micro, tmp_path):
    from edgexfer.export.tflite_micro import input_lut

    out = micro.exported.path
    for name in ("model.c", "model.h", "model.tflite"):
        assert (out / name).is_file()
    content = (out / "model.tflite").read_bytes()
    assert micro.exported.metrics["size_bytes"] == len(content)
    header = (out / "model.h").read_text()
    assert f"#define EDGEXFER_MODEL_LEN {len(content)}u" in header
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        assert f" *   {op}\n" in header
    arena = int(re.search(r"EDGEXFER_TENSOR_ARENA_SIZE (\d+)u", header).group(1))
    recorded = micro.exported.manifest.quantization["tflite_micro"]
    assert arena == recorded["arena"]["arena_bytes"] == micro.exported.metrics["tensor_arena_bytes"]
    assert arena % 1024 == 0
    # the biggest activation (12x12x8 int8 after conv_a, with the input 12x12x3 still live) must fit
    assert recorded["arena"]["activation_peak_bytes"] >= 10 * 10 * 8 + 12 * 12 * 3

    subprocess.run(
        [
            CC,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-c",
            str(out / "model.c"),
            "-o",
            str(tmp_path / "model.o"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    if CXX:  # TFLite Micro projects are C++: the same file must compile as C++ too
        subprocess.run(
            [
                CXX,
                "-x",
                "c++",
                "-std=c++11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-c",
                str(out / "model.c"),
                "-o",
                str(tmp_path / "model_cxx.o"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    probe = tmp_path / "probe.c"
    probe.write_text(_PROBE)
    subprocess.run(
        [
            CC,
            "-std=c11",
            "-Wall",
            "-Werror",
            f"-I{out}",
            str(probe),
            str(tmp_path / "model.o"),
            "-o",
            str(tmp_path / "probe"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (tmp_path / "model_bytes.bin").write_bytes(b"")
    done = subprocess.run(
        [str(tmp_path / "probe"), str(tmp_path / "model_bytes.bin")], capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == f"len {len(content)} aligned 1"
    assert (tmp_path / "model_bytes.bin").read_bytes() == content  # byte for byte what LiteRT runs
    assert lines[1 : 1 + len(LABELS)] == [f"label {name}" for name in LABELS]
    scale, zero_point = recorded["input"]["scale"], recorded["input"]["zero_point"]
    lut = input_lut(PRE, scale, zero_point)
    assert lines[1 + len(LABELS)] == "lut " + " ".join(str(int(v)) for v in lut[:, [0, 77, 255]].ravel())
    # the LUT is what the runtime feeds the model: same int8 input for the same pixels
    from edgexfer.runtime import normalize

    pixels = micro.x[:4]
    runtime_q = np.clip(np.round(normalize(pixels, PRE) / np.float32(scale)) + zero_point, -128, 127)
    assert np.array_equal(lut[np.arange(3), pixels].astype(int), runtime_q.astype(int))


def test_micro_export_runs_on_litert_and_matches_int8_tflite(micro, tmp_path):
    from edgexfer.runtime import load_model

    model = load_model(micro.exported.path)
    assert model.input_dtype == np.int8 and model.label_names == LABELS
    probs = model.predict_proba(micro.x[200:260])
    x, y = micro.x[200:260], make_images(300, seed=0)[1][200:260]
    assert (probs.argmax(1) == y).mean() > 0.7  # a model that learned the bands survives int8
    plain = export_stage(
        micro.root / "ft",
        tmp_path / "tflite",
        "tflite",
        "int8",
        calibration_data=micro.calibration,
        calibration_images=60,
    )
    assert np.allclose(load_model(plain.path).predict_proba(x), probs, atol=1e-6)


def test_from_a_tflite_export_and_refusal_of_float_layers(micro, tmp_path):
    int8 = export_stage(
        micro.root / "ft",
        tmp_path / "int8",
        "tflite",
        "int8",
        calibration_data=micro.calibration,
        calibration_images=60,
        io_type="int8",
    )
    again = export_stage(int8.path, tmp_path / "micro2", "tflite-micro")
    assert (again.path / "model.tflite").read_bytes() == int8.model_path.read_bytes()
    assert (again.path / "model.c").is_file() and again.manifest.config["format"] == "tflite-micro"
    # MACs per image: conv_a 10·10 × 3·3·3·8, dw_b 4·4 × 3·3·8, head 8·3; counted on each file
    assert again.metrics["macs"] == int8.metrics["macs"] == micro.exported.metrics["macs"] == 21_600 + 1_152 + 24

    # int8 inside, float32 in and out (uint8 would need one mean/std for all channels): not for TFLite Micro
    float_io = export_stage(
        micro.root / "ft",
        tmp_path / "float-io",
        "tflite",
        "int8",
        calibration_data=micro.calibration,
        calibration_images=60,
        io_type="float32",
    )
    with pytest.raises(ExportError, match="not fully int8: .* float tensors, in model input"):
        export_stage(float_io.path, tmp_path / "refused-float-io", "tflite-micro")
    float_export = export_stage(micro.root / "ft", tmp_path / "float", "tflite", "none")
    with pytest.raises(ExportError) as error:
        export_stage(float_export.path, tmp_path / "refused", "tflite-micro")
    message = str(error.value)
    assert "is not fully int8" in message and "CONV_2D 'conv_a'" in message
    assert "DEPTHWISE_CONV_2D 'dw_b'" in message and "FULLY_CONNECTED 'head'" in message
    assert "--quant int8" in message
    assert not (tmp_path / "refused").exists()  # nothing half-written
    with pytest.raises(ConfigError, match="tflite-micro allows: int8"):
        export_stage(micro.root / "ft", tmp_path / "none", "tflite-micro", "none")


def test_bundle_of_a_micro_export_carries_the_c_files(micro, tmp_path):
    from edgexfer.export.bundle import write_bundle

    bundle = write_bundle(micro.exported.path, tmp_path / "bundle")
    assert {"model.c", "model.h", "model.tflite", "predict.py", "README.md"} <= {p.name for p in bundle.iterdir()}
    readme = (bundle / "README.md").read_text()
    assert "TensorFlow Lite Micro" in readme and "EDGEXFER_TENSOR_ARENA_SIZE" in readme
    assert "Quantise to int8" in readme


_PROBE = r"""
#include <stdint.h>
#include <stdio.h>
#include "model.h"

int main(int argc, char** argv) {
  FILE* out;
  int k;
  if (argc < 2) return 2;
  printf("len %u aligned %d\n", edgexfer_model_len, (int)(((uintptr_t)edgexfer_model % 16u) == 0u));
  out = fopen(argv[1], "wb");
  if (!out || fwrite(edgexfer_model, 1, edgexfer_model_len, out) != edgexfer_model_len) return 3;
  fclose(out);
  for (k = 0; k < EDGEXFER_NUM_CLASSES; ++k) printf("label %s\n", edgexfer_labels[k]);
  printf("lut");
  for (k = 0; k < EDGEXFER_INPUT_CHANNELS; ++k)
    printf(" %d %d %d", edgexfer_input_lut[k][0], edgexfer_input_lut[k][77], edgexfer_input_lut[k][255]);
  printf("\n");
  return 0;
}
"""
