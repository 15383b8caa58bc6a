"""Read legacy (pre-zip) PyTorch ``.pth`` state dicts with numpy alone.

The only library that reads these files is torch itself, which edgexfer must not depend on
(it is large and not needed anywhere else), so this reader is hand-written. It is a
*restricted* unpickler: a pickle can run arbitrary code, so only the handful of globals a
state dict needs are allowed and every other one is refused before anything runs.

Legacy layout (``torch.save(..., _use_new_zipfile_serialization=False)``): five pickles in a
row -- magic number, protocol version, sys-info dict, the object (tensors appear as
``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storages are persistent ids),
the list of storage keys -- then, for each key in that order, the storage as an int64
element count followed by its raw little-endian bytes.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from edgexfer.errors import BackboneError

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch storage type name -> little-endian numpy dtype of one element.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stands in for ``torch.<X>Storage`` during unpickling; only its dtype is used."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage whose bytes come after the pickles; ``data`` is filled in later."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None
        # Ancient files may reference a slice ("view") of another storage.
        self.view_of: tuple[_Storage, int, int] | None = None

    def array(self) -> np.ndarray:
        if self.view_of is not None:
            root, offset, size = self.view_of
            return root.array()[offset : offset + size]
        if self.data is None:
            raise BackboneError(f"storage {self.key!r} has no data in the file (truncated or corrupt)")
        return self.data


class _PendingTensor:
    """A tensor whose storage bytes have not been read yet."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def resolve(self) -> np.ndarray:
        flat = self.storage.array()
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise BackboneError("a tensor in the file has a negative size, stride or offset (corrupt file)")
        if 0 in self.size:
            return np.empty(self.size, dtype=flat.dtype.newbyteorder("="))
        # A state dict's tensors are at most as large as their storage; stride 0 or overlapping
        # strides could expand a few bytes into gigabytes (np.array copies the expanded view).
        import math

        numel = math.prod(self.size)
        if numel > flat.size:
            raise BackboneError(
                f"a tensor in the file has {numel} elements but its storage only {flat.size} "
                "(stride 0 or overlapping strides; corrupt or crafted file)"
            )
        # as_strided does no bounds checking, so check the furthest element is in the storage.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise BackboneError(
                f"a tensor in the file reaches element {last} of a storage of {flat.size} (corrupt file)"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise BackboneError("a tensor in the file is not backed by a storage (corrupt file)")
    return _PendingTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage] | None = None):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise BackboneError(
            f"the file contains a disallowed global {module}.{name} and was refused "
            "(only plain tensor state dicts are read; a pickle can run arbitrary code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise BackboneError("unexpected persistent id in the file header (corrupt file)")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise BackboneError(f"unsupported persistent id {pid!r:.80} in the file")
        _, storage_type, key, _location, numel, view_metadata = pid
        key = str(key)
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
        if view_metadata is None:
            return root
        view_key, offset, view_size = view_metadata
        view = _Storage(str(view_key), storage_type.dtype, int(view_size))
        view.view_of = (root, int(offset), int(view_size))
        return view


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _PendingTensor):
        return obj.resolve()
    if isinstance(obj, dict):
        return OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def load_state_dict(path: str | os.PathLike[str]) -> OrderedDict[str, np.ndarray]:
    """Read a legacy PyTorch ``.pth`` state dict into an ordered ``{name: ndarray}``.

    Raises ``BackboneError`` for a missing, zip-format, foreign or corrupt file, and for any
    pickle that references a global other than those a plain state dict needs.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackboneError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    if raw[:4] == b"PK\x03\x04":
        raise BackboneError(
            f"{path} is a zip-format (PyTorch >= 1.6) checkpoint; only the legacy pre-zip format "
            "is supported (re-save it with torch.save(..., _use_new_zipfile_serialization=False))"
        )
    try:
        return _parse(io.BytesIO(raw))
    except BackboneError as exc:
        raise BackboneError(f"{path}: {exc}") from None
    except Exception as exc:  # any pickle/struct error means the file is not what we expect
        raise BackboneError(
            f"{path} is not a readable legacy PyTorch state dict ({type(exc).__name__}: {exc})"
        ) from None


def _parse(stream: io.BytesIO) -> OrderedDict[str, np.ndarray]:
    header = _RestrictedUnpickler(stream)
    if header.load() != _MAGIC_NUMBER:
        raise BackboneError("not a legacy PyTorch file (wrong magic number)")
    protocol = _RestrictedUnpickler(stream).load()
    if protocol != _PROTOCOL_VERSION:
        raise BackboneError(f"unsupported PyTorch file protocol version {protocol!r}")
    sys_info = _RestrictedUnpickler(stream).load()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise BackboneError("big-endian PyTorch files are not supported")

    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(stream, storages).load()
    keys = _RestrictedUnpickler(stream).load()
    if not isinstance(keys, list):
        raise BackboneError("the storage key list is missing (corrupt file)")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise BackboneError(f"storage {key!r} is listed but never used (corrupt file)")
        count = np.frombuffer(_read_exact(stream, 8), dtype="<i8")[0]
        if count < 0:
            raise BackboneError("negative storage size (corrupt file)")
        nbytes = int(count) * storage.dtype.itemsize
        storage.data = np.frombuffer(_read_exact(stream, nbytes), dtype=storage.dtype)

    if not isinstance(obj, dict):
        raise BackboneError(f"the file holds a {type(obj).__name__}, not a state dict")
    state = _resolve(obj)
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise BackboneError(f"entry {name!r} of the state dict is not a tensor")
    return state


def _read_exact(stream: io.BytesIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise BackboneError("the file ends early (truncated download?)")
    return data
