"""What the compression stages share: reading the input artifact and its data split,
accuracy on the test split, weight sparsity, sizes, and converted-TFLite measurements.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import gzip
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, Manifest, Preprocessing
from edgexfer.errors import ArtifactError, ConfigError, DataError
from edgexfer.evaluate.splits import run_split

log = logging.getLogger("edgexfer.compress")

KERAS_SUFFIXES = (".h5", ".keras")
# Weight variables that hold a layer's kernel (what pruning zeroes and sparsity is measured on).
KERNEL_SUFFIXES = ("/kernel:0", "/depthwise_kernel:0", "/pointwise_kernel:0")
_EVAL_CHUNK = 1024


def keras_artifact(path, role: str = "MODEL") -> Artifact:
    """The input artifact, which must hold a Keras model (a training or compression stage's)."""
    artifact = Artifact(path)
    model_path = artifact.model_path
    if model_path.suffix not in KERAS_SUFFIXES:
        raise ArtifactError(
            f"{role} {str(artifact.path)!r} holds {model_path.name}, not a Keras model; pass "
            "the artifact of a training or compression stage (finetune, distill, prune, "
            "quantize), not an export"
        )
    return artifact


def check_out(out, *inputs: Artifact) -> None:
    for artifact in inputs:
        if Path(out).resolve() == artifact.path.resolve():
            raise ConfigError(
                f"--out {str(out)!r} is the input artifact; a stage never changes its input, choose another directory"
            )


def scan_data(artifact: Artifact, data, *, strict: bool, role: str = "model"):
    """Scan ``data`` with the artifact's labels and split settings; a class mismatch names both."""
    from edgexfer.data import scan_image_folder

    split = run_split(artifact)
    try:
        dataset = scan_image_folder(
            data,
            class_names=artifact.manifest.label_names,
            seed=split["seed"],
            val_fraction=split["val_fraction"],
            test_fraction=split["test_fraction"],
            strict=strict,
        )
    except DataError as exc:
        if "do not match the model's classes" in str(exc):
            raise DataError(f"the {role}'s classes ({str(artifact.path)!r}) and the data's differ: {exc}") from None
        raise
    return dataset, split


def stage_inputs(model_dir, data_dir, out, config) -> tuple:
    """What prune and quantize read first: the Keras artifact (``--out`` checked against it),
    its manifest and preprocessing, the scanned data and its train/val/evaluation samples.

    Returns ``(source, manifest, preprocessing, dataset, split, train, val, eval_split,
    eval_samples)``.
    """
    source = keras_artifact(model_dir, "MODEL")
    check_out(out, source)
    manifest = source.manifest
    dataset, split = scan_data(source, data_dir, strict=config.strict)
    train = limit_samples(dataset.split("train"), config.max_train_images, config.seed)
    eval_split, eval_samples = evaluation_samples(dataset)
    return (
        source,
        manifest,
        manifest.preprocessing,
        dataset,
        split,
        train,
        dataset.split("val"),
        eval_split,
        eval_samples,
    )


def limit_samples(samples: Sequence, limit: int | None, seed: int) -> list:
    """A stratified, seeded subset of at most ``limit`` samples (random when stratifying is impossible)."""
    samples = list(samples)
    if not limit or len(samples) <= limit:
        return samples
    from sklearn.model_selection import train_test_split

    try:
        kept, _ = train_test_split(samples, train_size=limit, stratify=[s.label for s in samples], random_state=seed)
    except ValueError:  # fewer picks than classes
        order = np.random.default_rng(seed).permutation(len(samples))[:limit]
        kept = [samples[i] for i in sorted(order)]
    return sorted(kept, key=lambda s: str(s.path))


def evaluation_samples(dataset) -> tuple[str, list]:
    """The split accuracy is reported on: test, or val when the test split is empty."""
    for name in ("test", "val"):
        if dataset.split(name):
            return name, dataset.split(name)
    raise DataError(
        f"{str(dataset.root)!r} has no test or validation images to measure accuracy on; "
        "add images or raise the val/test fractions"
    )


def load_uint8(samples: Sequence, preprocessing: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    from edgexfer.data import load_arrays

    return load_arrays(list(samples), preprocessing)


def keras_probs(model, images_uint8: np.ndarray, preprocessing: Preprocessing, batch_size: int = 256) -> np.ndarray:
    """Probabilities of a Keras model on uint8 pixels, preprocessed in chunks (bounded memory)."""
    from edgexfer.runtime.images import normalize

    outputs = []
    for start in range(0, len(images_uint8), _EVAL_CHUNK):
        x = normalize(images_uint8[start : start + _EVAL_CHUNK], preprocessing)
        outputs.append(model.predict(x, batch_size=batch_size, verbose=0))
    return np.concatenate(outputs) if outputs else np.zeros((0, model.output_shape[-1]), np.float32)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean()) if len(labels) else float("nan")


def make_trainable(model) -> list[str]:
    """Unfreeze every layer but BatchNormalization for fine-tuning while compressing.

    BatchNorm keeps the regime the model was trained in: a frozen BN layer (finetune keeps
    ImageNet statistics) stays in inference mode, a trained one keeps training."""
    unfrozen = []
    for layer in model.layers:
        if type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization"):
            continue
        if layer.weights and not layer.trainable:
            unfrozen.append(layer.name)
        layer.trainable = True
    return unfrozen


def kernel_variables(model) -> list[tuple[str, Any]]:
    """``(layer name, variable)`` of every kernel (Conv/Dense/DepthwiseConv …), wrappers included."""
    found = []
    for variable in model.weights:
        name = variable.name
        if name.endswith(KERNEL_SUFFIXES):
            found.append((name.split("/")[0], variable))
    return found


def weight_stats(model) -> dict[str, Any]:
    """Parameter count, non-zero parameters and the zero fraction of every kernel."""
    from edgexfer.keras_io import count_params

    layers: dict[str, dict[str, Any]] = {}
    zeros = total = 0
    for layer, variable in kernel_variables(model):
        values = variable.numpy()
        n_zero = int(values.size - np.count_nonzero(values))
        entry = layers.setdefault(layer, {"params": 0, "zeros": 0})
        entry["params"] += int(values.size)
        entry["zeros"] += n_zero
        zeros += n_zero
        total += int(values.size)
    for entry in layers.values():
        entry["sparsity"] = round(entry["zeros"] / entry["params"], 4) if entry["params"] else 0.0
    params = count_params(model)
    all_zeros = 0
    for weight in model.weights:
        values = weight.numpy()
        all_zeros += int(values.size - np.count_nonzero(values))
    return {
        "params": params,
        "params_nonzero": params - all_zeros,
        "sparsity": round(zeros / total, 4) if total else 0.0,
        "kernel_params": total,
        "layers": layers,
    }


def file_sizes(path: Path) -> dict[str, int]:
    data = Path(path).read_bytes()
    return {"size_bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9))}


def bytes_sizes(content: bytes) -> dict[str, int]:
    return {"size_bytes": len(content), "gzip_bytes": len(gzip.compress(content, compresslevel=9))}


def pick_calibration(samples: Sequence, count: int, seed: int) -> list:
    """``count`` training images for int8 calibration, stratified by class and seeded."""
    from edgexfer.compress.config import MIN_CALIBRATION_IMAGES

    samples = list(samples)
    if len(samples) < MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"the training split has {len(samples)} images; a calibration set needs at least "
            f"{MIN_CALIBRATION_IMAGES} representative images: add training images"
        )
    if len(samples) < count:
        log.warning(
            "asked for %d calibration images, the training split has %d; using all of them", count, len(samples)
        )
    return limit_samples(samples, count, seed)


def quiet_native_logs():
    """Hide the converter's and LiteRT's C++ lines on fd 2 ("fully_quantize: 0 …") unless verbose."""
    from edgexfer.stdio import quiet_native_stderr

    return quiet_native_stderr()


def converted_tflite(
    keras_model,
    manifest: Manifest,
    quant: str,
    *,
    calibration: np.ndarray | None,
    is_qat: bool,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Convert ``keras_model`` to TFLite with edgexfer's exporter, run it with LiteRT on the
    evaluation images and describe it: accuracy, size, gzip size, float32 tensors, sparsity."""
    from edgexfer.compress.tflite_stats import tflite_weight_sparsity
    from edgexfer.export import export_model
    from edgexfer.runtime import load_model

    with tempfile.TemporaryDirectory(prefix="edgexfer-measure-") as tmp:
        with quiet_native_logs():
            info = export_model(
                keras_model,
                manifest,
                tmp,
                "tflite",
                quant,
                calibration=calibration if quant == "int8" else None,
                is_qat=is_qat,
            )
        path = Path(tmp) / info["model_file"]
        with quiet_native_logs():
            model = load_model(path, label_names=manifest.label_names, preprocessing=manifest.preprocessing)
            probs = model.predict_proba(images_uint8, batch_size=64)
        content = path.read_bytes()
        if keep is not None:
            keep.write_bytes(content)
    quantization = info["quantization"]
    sparsity = tflite_weight_sparsity(content)
    return {
        "quant": quant,
        "accuracy": accuracy(probs, labels),
        "size_bytes": info["size_bytes"],
        "gzip_bytes": info["gzip_bytes"],
        "fp32_tensor_count": quantization.get("fp32_tensor_count"),
        "input_dtype": quantization.get("input", {}).get("dtype"),
        "warnings": info["warnings"],
        "weight_sparsity": sparsity["sparsity"],
        "weight_layers": sparsity["layers"],
    }
