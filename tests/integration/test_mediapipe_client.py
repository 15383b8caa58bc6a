"""A real client: MediaPipe Tasks' ImageClassifier runs edgexfer's exported .tflite files.

mediapipe cannot be installed next to edgexfer's dependencies (mediapipe needs absl-py~=2.3,
tensorflow-model-optimization 0.8 needs absl-py~=1.2: pip reports ResolutionImpossible), so
it is not in the test extra: it lives in its own environment (``./run setup-mediapipe``
creates ``.venv-mediapipe``; or point ``EDGEXFER_MEDIAPIPE_PYTHON`` at a Python that has it)
and ``tools/mediapipe_classify.py`` runs there as a subprocess. Without it these tests skip
and say how to enable them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgexfer.export import export_artifact
from edgexfer.runtime import load_model
from edgexfer.runtime.images import list_image_files, load_images
from edgexfer.runtime.metadata import TFLITE_METADATA_NAME
from edgexfer.runtime.tflite_metadata import remove_metadata_entry
from kit import TINY_FINETUNE

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tools" / "mediapipe_classify.py"
COLORS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 210)}


def mediapipe_python() -> str | None:
    candidate = os.environ.get("EDGEXFER_MEDIAPIPE_PYTHON") or str(ROOT / ".venv-mediapipe" / "bin" / "python")
    if not Path(candidate).is_file():
        return None
    done = subprocess.run([candidate, "-c", "import mediapipe.tasks.python.vision"], capture_output=True, timeout=120)
    return candidate if done.returncode == 0 else None


PYTHON = mediapipe_python()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.mediapipe,
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
    pytest.mark.skipif(
        PYTHON is None, reason="no Python with mediapipe: run ./run setup-mediapipe or set EDGEXFER_MEDIAPIPE_PYTHON"
    ),
]


def classify(model: Path, *args: str) -> dict:
    done = subprocess.run([PYTHON, str(CLIENT), str(model), *args], capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from edgexfer import api

    root = tmp_path_factory.mktemp("mediapipe")
    rng = np.random.default_rng(0)
    for name, color in COLORS.items():
        (root / "data" / name).mkdir(parents=True)
        for index in range(16):
            pixels = np.clip(np.array(color) + rng.normal(0, 60, (20, 20, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / "data" / name / f"{index}.png")
    artifact = api.finetune(
        root / "data",
        root / "ft",
        **TINY_FINETUNE,
    )
    exports = {
        quant: export_artifact(
            artifact.path, root / quant, "tflite", quant, calibration_images=root / "data" if quant == "int8" else None
        )
        for quant in ("none", "int8")
    }
    files = list_image_files(root / "data")
    pixels = load_images(files, artifact.manifest.preprocessing)
    np.save(root / "pixels.npy", pixels)
    return SimpleNamespace(root=root, artifact=artifact, exports=exports, files=files, pixels=pixels)


def agreement(model_path: Path, mediapipe: dict, probs: np.ndarray) -> tuple[float, float]:
    labels = load_model(model_path).label_names
    top = [labels[i] for i in probs.argmax(1)]
    same = np.mean([r["label"] == t for r, t in zip(mediapipe["results"], top)])
    delta = max(
        abs(r["scores"][name] - float(p)) for r, row in zip(mediapipe["results"], probs) for name, p in zip(labels, row)
    )
    return float(same), float(delta)


@pytest.mark.parametrize("quant,max_delta", [("none", 1e-5), ("int8", 1 / 256 + 1e-6)])
def test_mediapipe_agrees_with_edgexfer_predict_on_the_same_pixels(tiny, quant, max_delta, record_property):
    path = tiny.exports[quant].model_path
    result = classify(path, "--pixels", str(tiny.root / "pixels.npy"))
    probs = load_model(path).predict_proba(tiny.pixels)
    same, delta = agreement(path, result, probs)
    record_property("top1_agreement", same)
    record_property("max_abs_score_delta", delta)
    assert same == 1.0 and delta <= max_delta, (same, delta)


@pytest.mark.parametrize("quant", ["none", "int8"])
def test_mediapipe_on_image_files_agrees_with_edgexfer_predict(tiny, quant, record_property):
    """MediaPipe decodes and resizes the files itself (20 px → 16 px, its own filter)."""
    path = tiny.exports[quant].model_path
    result = classify(path, "--files", *map(str, tiny.files))
    predictions = load_model(path).predict_files(tiny.files)
    same = np.mean([r["label"] == p.label for r, p in zip(result["results"], predictions)])
    record_property("top1_agreement", float(same))
    assert same >= 0.9


def test_mediapipe_reads_a_file_whose_only_metadata_is_the_standard_one(tiny, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(remove_metadata_entry(tiny.exports["int8"].model_path.read_bytes(), TFLITE_METADATA_NAME))
    result = classify(path, "--pixels", str(tiny.root / "pixels.npy"))
    same, delta = agreement(path, result, load_model(path).predict_proba(tiny.pixels))
    assert same == 1.0 and delta <= 1 / 256 + 1e-6


def test_int8_io_is_what_mediapipe_rejects(tiny):
    """Why uint8 is the default I/O type of int8 exports."""
    artifact = export_artifact(
        tiny.artifact.path,
        tiny.root / "int8-io",
        "tflite",
        "int8",
        calibration_images=tiny.root / "data",
        io_type="int8",
    )
    with pytest.raises(RuntimeError, match="uint8/float32, got INT8"):
        classify(artifact.model_path, "--pixels", str(tiny.root / "pixels.npy"))
