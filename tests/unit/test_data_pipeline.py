"""The tf.data pipeline: decode → cache → shuffle → augment → batch → normalise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgexfer.artifact import Preprocessing
from edgexfer.config import AugmentOptions
from edgexfer.data import Sample, data_errors, load_arrays, make_dataset, preprocess_array
from edgexfer.errors import ConfigError, DataError

SIZE = 16
PRE = Preprocessing(input_size=SIZE, mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0))


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    """20 distinct 20×20 RGB images (different sizes from the model input), 2 classes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i in range(20):
        path = root / f"{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
        out.append(Sample(path, i % 2))
    return out


def collect(ds) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def test_batches_are_normalised_like_the_numpy_preprocessing(samples):
    ds = make_dataset(samples, PRE, batch_size=8)
    images, labels = collect(ds)
    assert images.shape == (20, SIZE, SIZE, 3) and images.dtype == np.float32
    assert labels.dtype == np.int32 and labels.tolist() == [s.label for s in samples]
    raw, raw_labels = load_arrays(samples, PRE)
    assert raw.dtype == np.uint8 and raw.shape == (20, SIZE, SIZE, 3)
    assert raw_labels.tolist() == labels.tolist()
    expected = preprocess_array(raw, PRE)
    assert np.array_equal(images, expected)
    assert np.allclose(expected, (raw.astype(np.float64) - PRE.mean) / np.array(PRE.std), atol=1e-5)
    assert ds.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]


def test_streaming_equals_cached_and_file_cache_works(samples, tmp_path):
    cached, _ = collect(make_dataset(samples, PRE, batch_size=6))
    streamed, _ = collect(make_dataset(samples, PRE, batch_size=6, cache=False))
    on_disk, _ = collect(make_dataset(samples, PRE, batch_size=6, cache=str(tmp_path / "cache")))
    assert np.array_equal(cached, streamed) and np.array_equal(cached, on_disk)
    assert any(p.name.startswith("cache-") for p in tmp_path.iterdir())


def test_batching_options_and_images_only(samples):
    sizes = [x.shape[0] for x, _ in make_dataset(samples, PRE, batch_size=8)]
    assert sizes == [8, 8, 4]
    dropped = make_dataset(samples, PRE, batch_size=8, drop_remainder=True)
    assert [x.shape[0] for x, _ in dropped] == [8, 8]
    assert dropped.element_spec[0].shape.as_list() == [8, SIZE, SIZE, 3]
    only = make_dataset(samples, PRE, batch_size=20, return_labels=False)
    assert next(iter(only)).shape == (20, SIZE, SIZE, 3)


def test_bgr_preprocessing_flips_channels(samples):
    bgr = Preprocessing(input_size=SIZE, mean=(0.0,) * 3, std=(1.0,) * 3, color="BGR")
    rgb = Preprocessing(input_size=SIZE, mean=(0.0,) * 3, std=(1.0,) * 3)
    a, _ = collect(make_dataset(samples[:4], bgr, batch_size=4))
    b, _ = collect(make_dataset(samples[:4], rgb, batch_size=4))
    assert np.array_equal(a, b[..., ::-1])


@pytest.mark.parametrize("cache", [True, False])
def test_shuffle_is_seeded_and_reshuffles_each_epoch(samples, cache):
    def epochs(seed):
        ds = make_dataset(samples, PRE, batch_size=20, shuffle=True, seed=seed, cache=cache)
        return [collect(ds)[1].tolist() for _ in range(2)] + [collect(ds)[0]]

    first, second, images = epochs(seed=1)
    again = epochs(seed=1)
    assert first == again[0] and second == again[1] and np.array_equal(images, again[2])
    assert sorted(first) == sorted(s.label for s in samples)
    assert first != [s.label for s in samples] or second != [s.label for s in samples]
    assert epochs(seed=2)[0] != first or epochs(seed=2)[1] != second


def test_augmentation_changes_images_reproducibly(samples):
    config = AugmentOptions(flip=True, crop_zoom=0.2, brightness=0.1, contrast=0.2)
    plain, _ = collect(make_dataset(samples, PRE, batch_size=5))
    ds = make_dataset(samples, PRE, batch_size=5, augment=config, seed=7)
    epoch1, labels = collect(ds)
    epoch2, _ = collect(ds)
    assert epoch1.shape == plain.shape and epoch1.dtype == np.float32
    assert labels.tolist() == [s.label for s in samples]
    assert not np.allclose(epoch1, plain) and not np.allclose(epoch1, epoch2)
    lo = (0.0 - np.array(PRE.mean)) / np.array(PRE.std)
    hi = (255.0 - np.array(PRE.mean)) / np.array(PRE.std)
    assert np.all(epoch1 >= lo - 1e-5) and np.all(epoch1 <= hi + 1e-5)  # clipped to 0..255
    rerun = make_dataset(samples, PRE, batch_size=5, augment=config, seed=7)
    assert np.array_equal(collect(rerun)[0], epoch1) and np.array_equal(collect(rerun)[0], epoch2)
    other = make_dataset(samples, PRE, batch_size=5, augment=config, seed=8)
    assert not np.array_equal(collect(other)[0], epoch1)


def test_flip_alone_mirrors_some_images(samples):
    plain, _ = collect(make_dataset(samples, PRE, batch_size=20))
    flipped, _ = collect(make_dataset(samples, PRE, batch_size=20, augment=AugmentOptions(flip=True)))
    mirrored = [np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain)]
    same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_disabled_augmentation_is_a_no_op(samples):
    plain, _ = collect(make_dataset(samples, PRE, batch_size=20))
    off, _ = collect(make_dataset(samples, PRE, batch_size=20, augment=AugmentOptions()))
    assert np.array_equal(plain, off)


def _square_on_ground(root, size: int) -> list[Sample]:
    """Images of a bright centred square on a plain coloured ground, at the model's input size."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = (30, 60, 90)
    start = (SIZE - size) // 2
    image[start : start + size, start : start + size] = 250
    path = root / "0" / "square.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return [Sample(path, 0)] * 40


def _raw(images: np.ndarray) -> np.ndarray:
    return images * np.array(PRE.std, np.float32) + np.array(PRE.mean, np.float32)


def test_scale_zooms_about_the_centre_and_fills_with_the_ground(tmp_path):
    samples = _square_on_ground(tmp_path, 6)
    zoomed = _raw(collect(make_dataset(samples, PRE, batch_size=40, augment=AugmentOptions(scale=1.0), seed=3))[0])
    bright = zoomed[..., 0] > 140
    sides = bright.any(axis=1).sum(axis=1)
    assert sides.min() <= 4 and sides.max() >= 9  # factors drawn from 1/2 to 2: smaller and larger squares
    rows, cols = np.nonzero(bright[0])
    assert abs(rows.mean() - (SIZE - 1) / 2) < 1 and abs(cols.mean() - (SIZE - 1) / 2) < 1  # about the centre
    corners = zoomed[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.allclose(corners, (30, 60, 90), atol=2)  # zooming out pads with the ground, not black


def test_low_res_coarsens_the_image_but_keeps_its_colour(samples):
    plain = _raw(collect(make_dataset(samples, PRE, batch_size=20))[0])
    coarse = _raw(collect(make_dataset(samples, PRE, batch_size=20, augment=AugmentOptions(low_res=0.25)))[0])

    def roughness(x):
        return np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3))

    assert np.all(roughness(coarse) <= roughness(plain) + 1e-3)  # a draw near 1 can leave an image as it was
    assert roughness(coarse).mean() < 0.6 * roughness(plain).mean()
    assert np.allclose(coarse.mean(axis=(1, 2)), plain.mean(axis=(1, 2)), atol=12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 1.5},
        {"scale": -0.2},
        {"low_res": 1.0},
        {"low_res": -0.1},
        {"crop_zoom": 1.0},
        {"crop_zoom": -0.1},
        {"brightness": 1.5},
        {"contrast": 1.0},
        {"flip": "yes"},
        {"brightness": "0.1"},
    ],
)
def test_augment_config_validates(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        AugmentOptions.build(**kwargs)


def test_bad_arguments(samples):
    with pytest.raises(DataError, match="no images"):
        make_dataset([], PRE, batch_size=4)
    with pytest.raises(ConfigError, match="batch_size"):
        make_dataset(samples, PRE, batch_size=0)
    with pytest.raises(ConfigError, match="resize"):
        make_dataset(samples, Preprocessing(input_size=8, resize="fancy"), batch_size=4)
    with pytest.raises(ConfigError, match="std"):
        make_dataset(samples, Preprocessing(input_size=8, std=(0.0, 1.0, 1.0)), batch_size=4)


def test_preprocess_array_keeps_shape_and_is_float32():
    x = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    out = preprocess_array(x, PRE)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert out[1, 1].tolist() == pytest.approx([(9 - 120) / 60, (10 - 110) / 50, (11 - 100) / 40])


def test_load_arrays_of_nothing():
    images, labels = load_arrays([], PRE)
    assert images.shape == (0, SIZE, SIZE, 3) and labels.shape == (0,)


def test_a_corrupt_file_fails_iteration_with_its_name(tmp_path, samples):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    ds = make_dataset([Sample(bad, 0)], PRE, batch_size=1)
    with pytest.raises(DataError, match=r"^cannot read image '.*bad.png': not an image") as info:
        with data_errors():
            list(ds)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unrelated"), data_errors():
        raise ValueError("unrelated")
