"""``adapt --method auto``: choose an adaptation method from unlabelled target statistics only.

Every candidate method (adabn, coral, dann, pseudo-label and the source-free shot) runs with its
own defaults; each adapted model predicts the target images; the written artifact is the
candidate whose predictions agree most with the CONSENSUS of all candidates (the class with the
highest mean probability over them), ties broken by the information-maximisation score (the
entropy of the mean prediction minus the mean per-sample entropy: confident yet diverse). No
target label is read. Agreement with a consensus is the ensemble's rule: a method that failed on
this pair (collapsed to a few classes, or kept the source model's errors) disagrees with the
others, while methods that found the same structure agree. Entropy alone would favour a
collapsed, over-confident model, and the information-maximisation score alone is what shot
optimises, so it would always pick shot.

The cost is the sum of the candidates' (five adaptations). Metrics record every candidate's
scores and label-free target statistics, the pick and why.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.artifact import Artifact, writing_artifact
from edgexfer.data.subset import random_subset
from edgexfer.keras_io import MODEL_FILE, load_keras_model
from edgexfer.train.shot import prediction_summary

CANDIDATES = ("adabn", "coral", "dann", "pseudo-label", "shot")
CRITERION = "agreement with the consensus (mean probability) of all candidates; ties: information maximisation"


def choose_method(predictions: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The candidate to keep from each candidate's target probabilities (N×K, same images and
    order): ``{"picked", "criterion", "reason", "scores": {name: {...}}}``. Labels are not needed."""
    names = list(predictions)
    if not names:
        raise ValueError("no candidate predictions to choose from")
    consensus = np.mean([predictions[name] for name in names], axis=0).argmax(1)
    scores = {}
    for name in names:
        probs = predictions[name]
        scores[name] = {
            "agreement_with_consensus": round(float((probs.argmax(1) == consensus).mean()), 4),
            **prediction_summary(probs),
        }
    picked = max(
        names,
        key=lambda n: (scores[n]["agreement_with_consensus"], scores[n]["target_information_maximisation"]),
    )
    ranked = sorted(names, key=lambda n: -scores[n]["agreement_with_consensus"])
    runner_up = next((n for n in ranked if n != picked), None)
    reason = (
        f"{picked}: its target predictions agree with the consensus of the {len(names)} candidates on "
        f"{scores[picked]['agreement_with_consensus']:.1%} of the images"
        + (f" (next: {runner_up} {scores[runner_up]['agreement_with_consensus']:.1%})" if runner_up is not None else "")
    )
    return {"picked": picked, "criterion": CRITERION, "reason": reason, "scores": scores}


def target_probabilities(artifact: Artifact, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The artifact's Keras model's probabilities on preprocessed-size uint8 ``images``."""
    from edgexfer.tf_env import import_tf

    tf, _ = import_tf()
    preprocessing = artifact.manifest.preprocessing
    mean = np.asarray(preprocessing.mean, np.float32)
    std = np.asarray(preprocessing.std, np.float32)
    model = load_keras_model(artifact.model_path)
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    chunks = [
        infer((images[start : start + batch_size].astype(np.float32) - mean) / std).numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def run_auto(
    model_dir: str | Path,
    source: str | Path,
    target: str | Path,
    out: str | Path,
    config,
    *,
    progress: bool = False,
    log: Callable[..., Any] = print,
) -> Artifact:
    """Run every candidate, keep the one :func:`choose_method` picks (see the module docstring)."""
    from edgexfer.data import Sample, data_errors, load_arrays
    from edgexfer.data.class_map import scan_unlabelled
    from edgexfer.tempfiles import sweep_stale, tmp_prefix
    from edgexfer.train.adapt import run_adapt
    from edgexfer.train.config import AdaptConfig
    from edgexfer.train.resume import checkpoint_dir

    parent = Artifact(model_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent)
    work = Path(tempfile.mkdtemp(prefix=tmp_prefix(out.name + "-candidates"), dir=out.parent))
    try:
        artifacts: dict[str, Artifact] = {}
        for method in CANDIDATES:
            log(f"auto: candidate {method}")
            values = {**config.model_dump(), "method": method, "after": None, "bn": None, "epochs": None}
            artifacts[method] = run_adapt(
                model_dir,
                None if method == "shot" else source,
                target,
                work / method,
                AdaptConfig.build(**values),
                progress=progress,
                log=log,
            )
        data = scan_unlabelled(target, parent.manifest.label_names, config.class_map, strict=config.strict)
        paths = random_subset(data.paths, config.max_target_images, config.seed)  # the images the candidates read
        with data_errors():
            images, _ = load_arrays([Sample(p, -1) for p in paths], parent.manifest.preprocessing)
        predictions = {name: target_probabilities(artifact, images) for name, artifact in artifacts.items()}
        choice = choose_method(predictions)
        log(f"auto picked {choice['reason']}")
        chosen = artifacts[choice["picked"]]
        with writing_artifact(out) as writer:
            shutil.copyfile(chosen.model_path, writer.file(MODEL_FILE))
            picked_manifest = chosen.manifest
            candidates = {
                name: {
                    "bn": artifact.metrics.get("bn"),
                    "after": artifact.metrics.get("after"),
                    "seconds": artifact.metrics.get("timings_seconds", {}).get("total_seconds"),
                }
                for name, artifact in artifacts.items()
            }
            auto = {**choice, "candidates": candidates}
            metrics = {
                **chosen.metrics,
                "method": "auto",
                "picked": choice["picked"],
                "auto": auto,
                "source_free": False,
                "source_images_used": artifacts["coral"].metrics["images"]["source_train"],
                "target_labels_used": False,
            }
            # the candidates keep the parent's classes, preprocessing, backbone and weights
            manifest = parent.child_manifest(
                "adapt",
                config.model_dump(),
                MODEL_FILE,
                seed=config.seed,
                # every candidate but shot read the source: the record names it even when shot won
                dataset={
                    **(picked_manifest.dataset or {}),
                    "source": artifacts["coral"].manifest.dataset.get("source"),
                },
                extra={
                    **picked_manifest.extra,
                    "adapt": {
                        **picked_manifest.extra.get("adapt", {}),
                        "method": "auto",
                        "picked": choice["picked"],
                        "reason": choice["reason"],
                    },
                },
            )
            return writer.commit(manifest, metrics)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        # The candidates run under a temporary name, so an interrupted auto cannot resume them:
        # their checkpoints would only be left behind (tens of MB each for Lite0).
        for method in CANDIDATES:
            shutil.rmtree(checkpoint_dir(work / method), ignore_errors=True)
