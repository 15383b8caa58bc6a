"""The numpy-only reader of legacy PyTorch .pth files: round trips, and refusal of foreign pickles."""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from edgexfer.backbones.torch_pickle import load_state_dict
from edgexfer.errors import BackboneError

# ---------------------------------------------------------------- a tiny legacy-format writer
# Mirrors torch.save(..., _use_new_zipfile_serialization=False) without torch: fake `torch`
# modules exist only while pickling so the globals are written as torch.FloatStorage etc.

_DTYPES = {"FloatStorage": "<f4", "LongStorage": "<i8", "DoubleStorage": "<f8", "IntStorage": "<i4"}


class _Storage:
    def __init__(self, key: str, kind: str, data: np.ndarray):
        self.key, self.kind, self.data = key, kind, np.ascontiguousarray(data, dtype=_DTYPES[kind]).ravel()


class _Tensor:
    """A view into a storage, pickled the way torch pickles a tensor."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


def _tensor(key: str, array: np.ndarray) -> _Tensor:
    kind = "LongStorage" if array.dtype.kind == "i" else "FloatStorage"
    strides = tuple(s // array.itemsize for s in np.require(array, requirements="C").strides)
    return _Tensor(_Storage(key, kind, array), 0, array.shape, strides)


def write_legacy_pth(path, state: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for kind in _DTYPES:
        setattr(torch, kind, type(kind, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    storages: dict[str, _Storage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                storages[obj.key] = obj
                return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.data.size, None)
            return None

    buf = io.BytesIO()
    for header in (
        0x1950A86A20F9469CFC6C,
        1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ):
        pickle.dump(header, buf, protocol=2)
    Pickler(buf, protocol=2).dump(state)
    keys = sorted(storages)
    pickle.dump(keys, buf, protocol=2)
    for key in keys:
        buf.write(struct.pack("<q", storages[key].data.size))
        buf.write(storages[key].data.tobytes())
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    with open(path, "wb") as f:
        f.write(buf.getvalue())


# ---------------------------------------------------------------- tests


def test_round_trip_float_and_int(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    count = np.array(1234567890123, dtype=np.int64)
    state = OrderedDict(
        [
            ("conv.weight", _tensor("0", conv)),
            ("conv.bias", _tensor("1", bias)),
            ("bn.num_batches_tracked", _tensor("2", count)),
        ]
    )
    path = tmp_path / "tiny.pth"
    write_legacy_pth(path, state, monkeypatch)

    out = load_state_dict(path)
    assert list(out) == ["conv.weight", "conv.bias", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(out["conv.weight"], conv)
    np.testing.assert_array_equal(out["conv.bias"], bias)
    assert out["conv.weight"].dtype == np.float32 and out["conv.weight"].shape == (8, 3, 3, 3)
    assert out["bn.num_batches_tracked"].dtype == np.int64
    assert out["bn.num_batches_tracked"].shape == () and int(out["bn.num_batches_tracked"]) == 1234567890123


def test_offset_and_non_contiguous_views_share_a_storage(tmp_path, monkeypatch):
    base = np.arange(24, dtype=np.float32)
    shared = _Storage("s", "FloatStorage", base)
    state = OrderedDict(
        [
            ("whole", _Tensor(shared, 0, (4, 6), (6, 1))),
            ("transposed", _Tensor(shared, 0, (6, 4), (1, 6))),  # a .t() view: non-contiguous
            ("row_slice", _Tensor(shared, 7, (2, 3), (6, 2))),  # offset and step
        ]
    )
    path = tmp_path / "views.pth"
    write_legacy_pth(path, state, monkeypatch)

    out = load_state_dict(path)
    grid = base.reshape(4, 6)
    np.testing.assert_array_equal(out["whole"], grid)
    np.testing.assert_array_equal(out["transposed"], grid.T)
    np.testing.assert_array_equal(out["row_slice"], grid[1:3, 1::2])
    out["whole"][0, 0] = -1  # each array is an independent, writable copy
    assert out["transposed"][0, 0] == 0


def test_view_reaching_past_its_storage_is_refused(tmp_path, monkeypatch):
    storage = _Storage("s", "FloatStorage", np.zeros(4, np.float32))
    path = tmp_path / "bad.pth"
    write_legacy_pth(path, {"w": _Tensor(storage, 2, (4,), (1,))}, monkeypatch)
    with pytest.raises(BackboneError, match="corrupt"):
        load_state_dict(path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_foreign_global_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = OrderedDict([("w", _tensor("0", np.ones(3, np.float32))), ("x", _Evil(marker))])
    write_legacy_pth(path, state, monkeypatch)
    with pytest.raises(BackboneError, match="disallowed global .*system.* refused"):
        load_state_dict(path)
    assert not marker.exists()

    # A bare malicious pickle, without the legacy header, is refused too.
    bare = tmp_path / "bare.pth"
    bare.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(BackboneError, match="disallowed global"):
        load_state_dict(bare)
    assert not marker.exists()


def test_garbage_truncated_zip_and_missing_files(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(BackboneError, match="garbage.pth"):
        load_state_dict(garbage)

    good = tmp_path / "good.pth"
    write_legacy_pth(good, {"w": _tensor("0", np.ones(100, np.float32))}, monkeypatch)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(BackboneError, match="ends early"):
        load_state_dict(truncated)

    new_format = tmp_path / "new.pth"
    with zipfile.ZipFile(new_format, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(BackboneError, match="zip-format"):
        load_state_dict(new_format)

    with pytest.raises(BackboneError, match="cannot read"):
        load_state_dict(tmp_path / "absent.pth")


def test_non_dict_payload_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "list.pth"
    write_legacy_pth(path, [_tensor("0", np.ones(2, np.float32))], monkeypatch)
    with pytest.raises(BackboneError, match="not a state dict"):
        load_state_dict(path)


@pytest.mark.parametrize("size,stride,elements", [((30000, 30000), (0, 0), 1), ((10, 10), (1, 1), 20)])
def test_stride_zero_or_overlapping_views_cannot_expand_a_small_file(tmp_path, monkeypatch, size, stride, elements):
    """A 1-element storage with stride 0 would otherwise become a 3.6 GB array."""
    storage = _Storage("s", "FloatStorage", np.ones(elements, np.float32))
    path = tmp_path / "expand.pth"
    write_legacy_pth(path, {"w": _Tensor(storage, 0, size, stride)}, monkeypatch)
    assert path.stat().st_size < 1000
    with pytest.raises(BackboneError, match="elements but its storage only"):
        load_state_dict(path)
