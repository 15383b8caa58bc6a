"""``edgexfer.runtime`` predicts with exported models without ever importing TensorFlow.

Both halves run in fresh interpreters: the model is exported in one (which needs
TensorFlow), and predicted with in another that must never load it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPORT_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from edgexfer.tf_env import import_tf
    from edgexfer.artifact import Manifest, Preprocessing, writing_artifact
    from edgexfer.export import export_artifact

    tf, keras = import_tf()
    root = Path(sys.argv[1])
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    manifest = Manifest(stage="finetune", label_names=["cat", "dog"], backbone="tiny", weights="random",
                        preprocessing=Preprocessing(input_size=8), model_file="model.h5")
    with writing_artifact(root / "src") as writer:
        model.save(writer.file("model.h5"), include_optimizer=False, save_format="h5")
        writer.commit(manifest)
    calibration = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    export_artifact(root / "src", root / "tflite", "tflite", "int8", calibration_images=calibration)
    export_artifact(root / "src", root / "onnx", "onnx", "none")
""")

PREDICT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import edgexfer.runtime as runtime

    results = {}
    for path in sys.argv[1:]:
        model = runtime.load_model(path, num_threads=1)
        probs = model.predict_proba(np.full((3, 8, 8, 3), 100, np.uint8))
        results[path] = {"labels": model.label_names, "shape": list(probs.shape),
                         "dtype": model.input_dtype.name}
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras", "tf2onnx"))
    print(json.dumps({"results": results, "heavy": heavy}))
""")


def _run(code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def exported_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_tf")
    _run(EXPORT_SCRIPT, str(root))
    return [root / "tflite" / "model.tflite", root / "onnx" / "model.onnx", root / "tflite"]


def test_runtime_predicts_without_tensorflow(exported_models):
    out = json.loads(_run(PREDICT_SCRIPT, *map(str, exported_models)).strip().splitlines()[-1])
    assert out["heavy"] == []
    tflite_file, onnx_file, artifact_dir = map(str, exported_models)
    assert out["results"][tflite_file] == {
        "labels": ["cat", "dog"],
        "shape": [3, 2],
        "dtype": "uint8",
    }  # uint8 I/O default
    assert out["results"][onnx_file] == {"labels": ["cat", "dog"], "shape": [3, 2], "dtype": "float32"}
    assert out["results"][artifact_dir]["labels"] == ["cat", "dog"]
