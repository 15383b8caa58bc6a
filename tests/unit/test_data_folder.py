"""Scanning image folders and decoding images (no TensorFlow)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgexfer.data import folder as folder_mod
from edgexfer.data import load_image, scan_image_folder
from edgexfer.errors import ConfigError, DataError


def write_image(path: Path, value: int = 128, size: int = 8, mode: str = "RGB", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "1", "P") else (value,) * len(mode)
    Image.new(mode, (size, size), color).save(path, format=fmt)
    return path


def make_flat(root: Path, classes: dict[str, int], ext: str = "png") -> Path:
    for index, (name, n) in enumerate(classes.items()):
        for i in range(n):
            write_image(root / name / f"{i:03d}.{ext}", value=10 * index + i % 5)
    return root


def labels_of(samples) -> list[int]:
    return [s.label for s in samples]


# --- layouts and splits -----------------------------------------------------------------


def test_flat_layout_is_split_stratified_and_labelled_by_sorted_folder(tmp_path):
    root = make_flat(tmp_path / "data", {"dog": 20, "cat": 20, "bird": 20})
    ds = scan_image_folder(root, val_fraction=0.1, test_fraction=0.1, seed=0)
    assert ds.class_names == ["bird", "cat", "dog"]
    assert ds.layout == "flat" and ds.carved == ("val", "test")
    assert ds.counts() == {"train": 48, "val": 6, "test": 6}
    for split in ("val", "test"):
        assert np.bincount(labels_of(ds.split(split)), minlength=3).tolist() == [2, 2, 2]
    assert all(s.path.parent.name == ds.class_names[s.label] for s in ds.all_samples())
    every = [s.path for s in ds.all_samples()]
    assert len(every) == len(set(every)) == 60
    assert ds.counts(by_class=True)["train"] == {"bird": 16, "cat": 16, "dog": 16}


def test_carving_is_deterministic_for_a_seed(tmp_path):
    root = make_flat(tmp_path / "data", {"a": 30, "b": 30})
    first = scan_image_folder(root, seed=1, verify=False)
    again = scan_image_folder(root, seed=1, verify=False)
    other = scan_image_folder(root, seed=2, verify=False)
    assert first.splits == again.splits
    assert first.split("val") != other.split("val")
    assert first.fingerprint() == other.fingerprint()  # the fingerprint ignores how splits were carved


def test_split_layout_uses_given_splits_and_carves_missing_val(tmp_path):
    root = tmp_path / "data"
    make_flat(root / "train", {"a": 10, "b": 10})
    make_flat(root / "test", {"a": 3, "b": 2})
    ds = scan_image_folder(root, val_fraction=0.2)
    assert ds.layout == "splits" and ds.carved == ("val",)
    assert ds.counts() == {"train": 16, "val": 4, "test": 5}
    assert all(s.path.parts[-3] == "train" for s in ds.split("train") + ds.split("val"))
    full = tmp_path / "full"
    for split in ("train", "val", "test"):
        make_flat(full / split, {"x": 2, "y": 2})
    assert scan_image_folder(full).counts() == {"train": 4, "val": 4, "test": 4}


def test_extensions_case_insensitive_hidden_and_other_files_ignored(tmp_path):
    root = tmp_path / "data"
    for i, (ext, fmt) in enumerate(
        [("jpg", "JPEG"), ("JPEG", "JPEG"), ("Png", "PNG"), ("bmp", "BMP"), ("GIF", "GIF"), ("webp", "WEBP")]
    ):
        write_image(root / "a" / f"{i}.{ext}", fmt=fmt)
        write_image(root / "b" / f"{i}.{ext}", fmt=fmt)
    (root / "a" / "notes.txt").write_text("not an image")
    write_image(root / "a" / ".hidden.png")
    write_image(root / "a" / ".thumbs" / "x.png")
    write_image(root / ".cache" / "x.png")  # a hidden folder is not a class
    write_image(root / "a" / "nested" / "deep.png")  # images in sub-folders belong to the class
    ds = scan_image_folder(root, val_fraction=0, test_fraction=0)
    assert ds.class_names == ["a", "b"]
    assert ds.counts() == {"train": 13, "val": 0, "test": 0}
    assert ds.ignored == 1 and not ds.skipped


def test_few_images_per_class_still_splits_and_keeps_every_class_in_train(tmp_path):
    root = make_flat(tmp_path / "data", {str(i): 2 for i in range(10)} | {"solo": 1})
    ds = scan_image_folder(root, val_fraction=0.1, test_fraction=0.1, seed=3)
    assert sum(ds.counts().values()) == 21
    assert set(labels_of(ds.split("train"))) == set(range(11))
    assert 0 < len(ds.split("test")) <= 2 and 0 < len(ds.split("val")) <= 2
    assert ds.splits == scan_image_folder(root, seed=3).splits


def test_class_names_fix_the_label_order(tmp_path):
    root = make_flat(tmp_path / "data", {"a": 3, "b": 3})
    ds = scan_image_folder(root, class_names=["b", "a"], val_fraction=0, test_fraction=0)
    assert ds.class_names == ["b", "a"]
    assert all(s.path.parent.name == ["b", "a"][s.label] for s in ds.split("train"))


def test_fingerprint_changes_with_files(tmp_path):
    root = make_flat(tmp_path / "data", {"a": 3, "b": 3})
    before = scan_image_folder(root).fingerprint()
    assert before["files"] == 6 and len(before["sha256"]) == 64
    (root / "a" / "000.png").rename(root / "a" / "renamed.png")
    assert scan_image_folder(root).fingerprint()["sha256"] != before["sha256"]


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup, fact",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("x"), "not a folder"),
        (lambda root: root.mkdir(), "empty"),
        (lambda root: make_flat(root, {"lonely": 3}), "only one class \\(lonely\\)"),
        (lambda root: (make_flat(root, {"a": 2}), (root / "empty_class").mkdir()), "empty_class"),
        (
            lambda root: (
                make_flat(root, {"a": 2, "txt_only": 0}),
                (root / "txt_only").mkdir(),
                (root / "txt_only" / "x.txt").write_text(""),
            ),
            "txt_only",
        ),
        (
            lambda root: (make_flat(root / "train", {"a": 2, "b": 2}), make_flat(root / "val", {"a": 2, "c": 2})),
            "missing b; extra c",
        ),
        (lambda root: (make_flat(root / "train", {"a": 2, "b": 2}), make_flat(root / "cats", {"a": 1})), "mixes"),
        (lambda root: make_flat(root / "val", {"a": 2, "b": 2}), "no train"),
        (lambda root: write_image(root / "loose.png"), "no class folders"),
    ],
)
def test_bad_folders_raise_data_error_naming_the_problem(tmp_path, setup, fact):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=fact) as info:
        scan_image_folder(root)
    assert "\n" not in str(info.value)


def test_class_names_mismatch_lists_missing_and_extra(tmp_path):
    root = make_flat(tmp_path / "data", {"a": 2, "b": 2, "zebra": 2})
    with pytest.raises(DataError, match="missing c; extra zebra"):
        scan_image_folder(root, class_names=["a", "b", "c"])


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 1.0}, {"test_fraction": -0.1}, {"val_fraction": 0.5, "test_fraction": 0.5}]
)
def test_bad_fractions_are_config_errors(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        scan_image_folder(make_flat(tmp_path / "d", {"a": 2, "b": 2}), **kwargs)


def test_unknown_split_name(tmp_path):
    with pytest.raises(ConfigError, match="valid"):
        scan_image_folder(make_flat(tmp_path / "d", {"a": 2, "b": 2})).split("valid")


def corrupt_files(root: Path) -> list[Path]:
    junk = root / "a" / "junk.png"
    junk.write_bytes(b"this is text, not a png")
    truncated_png = root / "b" / "cut.png"
    write_image(truncated_png, size=32)
    truncated_png.write_bytes(truncated_png.read_bytes()[:60])
    truncated_jpg = root / "b" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated_jpg)
    truncated_jpg.write_bytes(truncated_jpg.read_bytes()[:400])
    return [junk, truncated_png, truncated_jpg]


def test_corrupt_files_are_skipped_with_a_warning(tmp_path, caplog):
    root = make_flat(tmp_path / "data", {"a": 5, "b": 5})
    bad = corrupt_files(root)
    with caplog.at_level(logging.WARNING, logger="edgexfer"):
        ds = scan_image_folder(root, val_fraction=0, test_fraction=0)
    assert sorted(p for p, _ in ds.skipped) == sorted(bad)
    assert ds.counts()["train"] == 10
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 3 of 13" in message and "junk.png" in message and "cut.jpg" in message
    assert len(scan_image_folder(root, verify=False).all_samples()) == 13


def test_strict_makes_corrupt_files_an_error(tmp_path):
    root = make_flat(tmp_path / "data", {"a": 5, "b": 5})
    corrupt_files(root)
    with pytest.raises(DataError, match="junk.png"):
        scan_image_folder(root, strict=True)


def test_a_class_whose_images_are_all_corrupt_is_an_error(tmp_path):
    root = make_flat(tmp_path / "data", {"a": 3})
    (root / "broken").mkdir()
    for i in range(2):
        (root / "broken" / f"{i}.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match="broken"):
        scan_image_folder(root)


def test_unreadable_file_is_skipped_with_reason(tmp_path, monkeypatch):
    # Tests run as root, where chmod 000 does not stop reads: simulate the permission error.
    root = make_flat(tmp_path / "data", {"a": 3, "b": 3})
    locked = root / "a" / "001.png"
    real_open = Image.open

    def fake_open(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(folder_mod.Image, "open", fake_open)
    ds = scan_image_folder(root)
    assert ds.skipped == [(locked, "permission denied")]
    with pytest.raises(DataError, match="001.png"):
        scan_image_folder(root, strict=True)


# --- load_image -------------------------------------------------------------------------


def test_load_image_converts_every_mode_to_rgb(tmp_path):
    gray = write_image(tmp_path / "gray.png", 77, mode="L")
    assert load_image(gray, 8).tolist() == np.full((8, 8, 3), 77).tolist()

    rgba = tmp_path / "rgba.png"
    pixels = np.zeros((8, 8, 4), np.uint8)
    pixels[..., :3] = (200, 100, 50)
    pixels[:4, ..., 3] = 255  # top half opaque, bottom half transparent
    pixels[4:, ..., 3] = 0
    Image.fromarray(pixels, "RGBA").save(rgba)
    out = load_image(rgba, 8)
    assert out[0, 0].tolist() == [200, 100, 50] and out[7, 7].tolist() == [0, 0, 0]  # on black

    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.full((8, 8), 90, np.uint8), np.full((8, 8), 128, np.uint8)]), "LA").save(la)
    assert load_image(la, 8)[0, 0].tolist() == [45, 45, 45]

    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png", 8)[3, 3].tolist() == [10, 20, 30]
    palette.save(tmp_path / "pt.png", transparency=1)
    assert load_image(tmp_path / "pt.png", 8)[3, 3].tolist() == [0, 0, 0]
    palette.save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif", 8)[3, 3].tolist() == [10, 20, 30]

    sixteen = tmp_path / "16bit.png"
    Image.fromarray(np.array([[65535, 32896], [0, 257]], np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    assert load_image(sixteen, 2, resize="nearest")[..., 0].tolist() == [[255, 128], [0, 1]]

    write_image(tmp_path / "bw.png", 1, mode="1")
    assert load_image(tmp_path / "bw.png", 8)[0, 0].tolist() == [255, 255, 255]

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red = load_image(tmp_path / "cmyk.jpg", 8)[4, 4]
    assert red[0] > 200 and red[1] < 50 and red[2] < 50


def test_load_image_formats_resize_and_bgr(tmp_path):
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[..., 0] = 250
    pixels[..., 2] = 10
    for fmt in ("png", "bmp", "webp", "gif", "jpg"):
        path = tmp_path / f"x.{fmt}"
        Image.fromarray(pixels).save(path, **({"lossless": True} if fmt == "webp" else {}))
        out = load_image(path, 12)
        assert out.shape == (12, 12, 3) and out.dtype == np.uint8
        assert abs(int(out[6, 6, 0]) - 250) < 8 and abs(int(out[6, 6, 2]) - 10) < 8, fmt
    bgr = load_image(tmp_path / "x.png", 12, color="BGR")
    assert np.array_equal(bgr, load_image(tmp_path / "x.png", 12)[..., ::-1])
    assert load_image(tmp_path / "x.png", (4, 6), resize="area").shape == (4, 6, 3)
    with pytest.raises(ConfigError, match="resize"):
        load_image(tmp_path / "x.png", 8, resize="cubic-spline")
    with pytest.raises(ConfigError, match="color"):
        load_image(tmp_path / "x.png", 8, color="HSV")


def test_load_image_area_resize_averages(tmp_path):
    pixels = np.zeros((4, 4), np.uint8)
    pixels[:, :2] = 200
    Image.fromarray(pixels).save(tmp_path / "half.png")
    assert load_image(tmp_path / "half.png", 1, resize="area")[0, 0].tolist() == [100, 100, 100]


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_load_image_unreadable_file_is_data_error_with_its_name(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken.png"):
        load_image(path, 8)
    with pytest.raises(DataError, match="missing.png"):
        load_image(tmp_path / "missing.png", 8)


def test_importing_edgexfer_data_imports_neither_tensorflow_nor_sklearn():
    code = (
        "import sys, edgexfer.data, edgexfer.data.preprocess; "
        "print('tensorflow' in sys.modules, 'sklearn' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.split() == ["False", "False"]
