"""The uint8 pixel-input quantization and the packed-file archive, without TensorFlow."""

from __future__ import annotations

import pytest

from edgexfer.artifact import Preprocessing
from edgexfer.errors import ArtifactError, ConfigError
from edgexfer.export.tflite_io import check_io_type, pixel_quantization
from edgexfer.runtime.tflite_metadata import pack_files, split_packed_files


def test_pixel_quantization_is_the_preprocessing():
    assert pixel_quantization(Preprocessing(input_size=8, mean=(127.0,) * 3, std=(128.0,) * 3)) == (1 / 128, 127, 0.0)
    scale, zero_point, bias = pixel_quantization(Preprocessing(input_size=8, mean=(127.5,) * 3, std=(127.5,) * 3))
    assert (scale, zero_point) == (1 / 127.5, 128) and bias == pytest.approx(0.5 / 127.5)


def test_per_channel_normalisation_cannot_be_a_uint8_input():
    imagenet = Preprocessing(input_size=8, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    with pytest.raises(ConfigError, match="one mean/std for all channels.*--io-type float32 or int8"):
        pixel_quantization(imagenet)


def test_io_type_names_the_allowed_values():
    check_io_type(None)
    with pytest.raises(ConfigError, match="allowed: uint8, int8, float32"):
        check_io_type("int4")


def test_packed_files_round_trip_and_damage_is_named():
    flat = b"\x1c\x00\x00\x00TFL3" + bytes(200)
    packed = pack_files(flat, {"labels.txt": b"a\nb\n"})
    assert split_packed_files(packed, "m.tflite") == (flat, {"labels.txt": b"a\nb\n"})
    assert split_packed_files(flat, "m.tflite") == (flat, {})
    damaged = bytearray(packed)
    damaged[len(flat)] ^= 0xFF  # the local file header's signature
    with pytest.raises(ArtifactError, match="m.tflite: the files packed after the model .* cannot be read"):
        split_packed_files(bytes(damaged), "m.tflite")
