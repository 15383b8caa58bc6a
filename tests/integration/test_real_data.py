"""The real path on small real data: EfficientNet-Lite0 with its ImageNet weights on MNIST."""

import pytest

from edgexfer import api

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return api.prepare_data("mnist-5k", root / "mnist5k")["path"], api.prepare_data("uci-digits", root / "uci")["path"]


@pytest.fixture(scope="module")
def mnist_artifact(digits, tmp_path_factory):
    mnist, _ = digits
    return api.finetune(
        mnist,
        tmp_path_factory.mktemp("runs") / "ft",
        backbone="efficientnet_lite0",
        weights="imagenet",
        img_size=64,
        max_train_images=2000,
        epochs=8,
        fine_tune_epochs=2,
        unfreeze_layers=20,
        learning_rate=3e-3,
        fine_tune_learning_rate=5e-4,
        seed=0,
    )


def test_imagenet_lite0_learns_mnist_from_2000_images(mnist_artifact):
    assert mnist_artifact.metrics["test_accuracy"] >= 0.93
    assert mnist_artifact.manifest.weights.startswith("imagenet")


def test_imagenet_weights_beat_random_init_on_the_same_budget(digits, mnist_artifact, tmp_path):
    """The point of transfer learning, measured: same data, same budget, no pretrained weights."""
    mnist, _ = digits
    scratch = api.finetune(
        mnist,
        tmp_path / "scratch",
        backbone="efficientnet_lite0",
        weights="none",
        img_size=64,
        max_train_images=2000,
        epochs=8,
        fine_tune_epochs=2,
        unfreeze_layers=20,
        learning_rate=3e-3,
        fine_tune_learning_rate=5e-4,
        seed=0,
    )
    assert (
        mnist_artifact.metrics["test_accuracy"] - scratch.metrics["test_accuracy"] >= 0.05
    )  # measured: 0.946 vs 0.862


def test_cross_domain_evaluation_on_uci_digits(digits, mnist_artifact, tmp_path):
    _, uci = digits
    result = api.evaluate(mnist_artifact.path, uci, confusion_png=tmp_path / "uci.png")
    assert result["n"] == 1797
    # Another domain: far better than chance (0.1), clearly below in-domain accuracy.
    assert 0.2 <= result["accuracy"] < mnist_artifact.metrics["test_accuracy"]
