"""The allow-list of ``edgexfer.model_safety`` covers every model edgexfer builds: each
registered backbone with the head, and its pruned and QAT forms, pass the stored-model check;
saved and loaded through ``load_keras_model`` they come back whole."""

from __future__ import annotations

import json

import pytest

from edgexfer.model_safety import check_model_config

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

# Plain models of the families with the most layer kinds (MobileNetV3: TFOpLambda hard-swish,
# Multiply, Reshape); the QAT and pruned wrappers on the small CNN. Every backbone in every form
# is the slow test.
FAST_PLAIN = ["efficientnet_lite0", "mobilenet_v3_small"]


def _classifier(name: str):
    from edgexfer.backbones.registry import create_backbone, get_backbone
    from edgexfer.keras_io import build_classifier, build_head_layers

    spec = get_backbone(name)
    width = spec.widths[0] if spec.widths else None
    backbone = create_backbone(name, input_size=max(32, spec.min_input_size), weights="none", width=width)
    return build_classifier(backbone, build_head_layers(3, 0.2, 8))


def _forms(model):
    """The model, its QAT form and its pruned form (what quantize and prune save)."""
    import tensorflow_model_optimization as tfmot

    from edgexfer.compress.prune import apply_pruning, plan_pruning
    from edgexfer.compress.qat import build_qat_model

    yield "plain", model
    try:
        yield "qat", build_qat_model(model)[0]
    except Exception as exc:  # noqa: BLE001 - a backbone tfmot cannot quantize is not saved as QAT
        if "QAT is not possible" not in str(exc) and "cannot apply QAT" not in str(exc):
            raise
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0)
    yield "pruned", apply_pruning(model, plan_pruning(model), schedule, "unstructured")


def _check_all(name: str) -> None:
    for form, model in _forms(_classifier(name)):
        check_model_config(json.loads(model.to_json()), f"{name} ({form})")


@pytest.mark.parametrize("name", FAST_PLAIN)
def test_backbones_with_the_head_pass_the_check(name):
    check_model_config(json.loads(_classifier(name).to_json()), name)


def test_qat_and_pruned_wrappers_pass_the_check():
    _check_all("cnn_tiny")


@pytest.mark.slow
def test_every_registered_backbone_passes_the_check():
    from edgexfer.backbones.registry import list_backbones

    for spec in list_backbones():
        _check_all(spec.name)


def test_a_qat_model_round_trips_through_the_checked_loader(tmp_path):
    from edgexfer.compress.qat import build_qat_model
    from edgexfer.keras_io import load_keras_model, save_keras_model

    qat = build_qat_model(_classifier("cnn_tiny"))[0]
    loaded = load_keras_model(save_keras_model(qat, tmp_path / "model.h5"))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in qat.layers]
