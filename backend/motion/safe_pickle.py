"""Restricted unpickling: numpy arrays and plain containers only, never code.

AIST++ and TalkSHOW ship motions as pickles, TRAM as ``np.save``d dicts (pickles inside a
.npy). A pickle names globals that the loader calls, so a naive ``pickle.load`` runs
whatever the file says (``os.system`` included). This unpickler admits a fixed allow-list:

* numpy arrays, dtypes and scalars (``numpy.core`` and numpy 2 ``numpy._core`` spellings);
* plain containers (``collections.OrderedDict``, set, frozenset, ...) and ``_codecs.encode``
  restricted to latin-1 (how protocol-2 pickles spell bytes);
* torch tensors, WITHOUT importing torch: the torch globals are replaced by inert
  stand-ins that rebuild the raw tensor bytes (a legacy ``torch.save`` blob inside
  ``torch.storage._load_from_bytes``) as a numpy array when it can, and otherwise keep
  only shape/dtype. TalkSHOW files hold CUDA tensors under ``losses_to_log``; TRAM's
  results are CPU tensors. Nothing is ever executed and no GPU is needed.

Anything else raises MotionError naming the file and the refused global.
"""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np

from .errors import MotionError

__all__ = ["safe_load", "safe_loads", "load_npy_object", "TorchTensorStub", "to_numpy"]


# ----------------------------------------------------------------------------- torch stand-ins
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_ITEMSIZE = {"bfloat16": 2}


class _StorageType:
    """Stands in for a torch ``*Storage`` class: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _TORCH_STORAGE_DTYPES.get(name)

    @property
    def itemsize(self) -> int | None:
        if self.dtype is None:
            return None
        return _TORCH_ITEMSIZE.get(self.dtype) if isinstance(self.dtype, str) else np.dtype(self.dtype).itemsize

    def decode(self, raw: bytes) -> np.ndarray | None:
        if self.dtype is None:
            return None
        if self.dtype == "bfloat16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            return u.view(np.float32)
        return np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<")).astype(self.dtype)


class _Storage:
    """A torch storage seen from numpy: a flat array (or None when unknown) and a device."""

    def __init__(self, data: np.ndarray | None, device: str | None, dtype=None):
        self.data = data
        self.device = device
        self.dtype = dtype


class TorchTensorStub:
    """Inert placeholder for a torch tensor found in a pickle.

    ``array`` is the tensor's values as numpy when its bytes were in the file (legacy
    ``torch.save`` blobs and ``pickle.dumps(tensor)``), else None. ``device`` is where it
    lived when saved (e.g. 'cuda:0'); no device is touched to read it.
    """

    def __init__(self, shape, dtype, device, array: np.ndarray | None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.device = device
        self.array = array

    def __setstate__(self, state):   # BUILD on a stub must not do anything
        pass

    def __repr__(self):
        return f"TorchTensorStub(shape={self.shape}, device={self.device!r}, data={'yes' if self.array is not None else 'no'})"


def to_numpy(value):
    """ndarray / TorchTensorStub with data / scalar / list -> ndarray (else None)."""
    if isinstance(value, TorchTensorStub):
        return value.array
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (int, float, np.generic, list, tuple)):
        try:
            return np.asarray(value)
        except Exception:
            return None
    return None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2: a strided view of the storage bytes,
    bounds-checked so a crafted size/stride cannot read outside the storage."""
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    data = getattr(storage, "data", None)
    device = getattr(storage, "device", None)
    dtype = getattr(storage, "dtype", None)
    arr = None
    if data is not None and len(size) == len(stride):
        offset = int(storage_offset)
        if offset >= 0 and all(s >= 0 for s in stride) and all(s >= 0 for s in size):
            if any(s == 0 for s in size):
                arr = np.zeros(size, dtype=data.dtype)
            else:
                last = offset + sum((n - 1) * st for n, st in zip(size, stride))
                if last < data.size:
                    item = data.itemsize
                    arr = np.lib.stride_tricks.as_strided(
                        data[offset:], shape=size, strides=[st * item for st in stride]).copy()
    return TorchTensorStub(size, dtype, device, arr)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _codecs_encode(text, encoding="latin1", errors="strict"):
    """Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'); allow only that."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") not in ("latin1", "latin_1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1", errors)


# ----------------------------------------------------------------------------- allow-list
def _numpy_attr(*names):
    import numpy.core.multiarray as ma
    for name in names:
        obj = getattr(ma, name, None)
        if obj is not None:
            return obj
    raise AttributeError(names)


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _allowed():
    reconstruct = _numpy_attr("_reconstruct")
    scalar = _numpy_attr("scalar")
    table = {}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(core, "_reconstruct")] = reconstruct
        table[(core, "scalar")] = scalar
    for core in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(core, "_frombuffer")] = _frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    table[("collections", "OrderedDict")] = __import__("collections").OrderedDict
    table[("builtins", "set")] = set
    table[("builtins", "frozenset")] = frozenset
    table[("builtins", "complex")] = complex
    table[("builtins", "bytearray")] = bytearray
    table[("builtins", "slice")] = slice
    table[("_codecs", "encode")] = _codecs_encode
    # torch, without torch
    table[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor_v2
    table[("torch._utils", "_rebuild_tensor")] = _rebuild_tensor
    table[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
    table[("torch", "Size")] = tuple
    for name in _TORCH_STORAGE_DTYPES:
        table[("torch", name)] = _StorageType(name)
    table[("torch", "UntypedStorage")] = _StorageType("ByteStorage")
    return table


_ALLOWED = None
_MAX_LEGACY_NESTING = 2


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path, storages=None, depth=0):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._storages = storages    # for legacy torch blobs: key -> _Storage (filled later)
        self._depth = depth

    def find_class(self, module, name):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._load_from_bytes
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise MotionError(self._path, None, message=(
                f"refused to unpickle global '{module}.{name}': motion pickles may only hold "
                "numpy arrays, numpy scalars and plain containers (the file may be malicious "
                "or not a motion file); nothing in it was executed"))
        return obj

    def persistent_load(self, pid):
        # torch's storage references: ('storage', storage_type, key, location, numel[, view])
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            stype = pid[1] if isinstance(pid[1], _StorageType) else _StorageType("?")
            key, location = str(pid[2]), str(pid[3])
            st = _Storage(None, location, stype.dtype)
            st.stype = stype
            if self._storages is not None:
                self._storages.setdefault(key, []).append(st)
            return st
        raise MotionError(self._path, None, message=f"refused persistent id {type(pid).__name__} in pickle")

    def _load_from_bytes(self, blob):
        """torch.storage._load_from_bytes: a legacy torch.save blob, parsed without torch."""
        if not isinstance(blob, (bytes, bytearray)):
            return _Storage(None, None)
        if self._depth >= _MAX_LEGACY_NESTING:
            raise MotionError(self._path, None, message="torch storage blobs nested too deep")
        return _parse_legacy_torch(bytes(blob), self._path, self._depth + 1)


def _parse_legacy_torch(blob: bytes, path, depth: int):
    """Parse torch's legacy (non-zip) save format holding one storage.

    Layout: pickle(magic) pickle(protocol) pickle(sys_info) pickle(obj, storages as
    persistent ids) pickle(sorted storage keys) then per key: int64 count + raw bytes.
    Returns the object with storages filled in (a _Storage for a pickled storage); on
    anything unexpected returns a data-less _Storage rather than guessing.
    """
    f = io.BytesIO(blob)
    storages: dict[str, list] = {}
    try:
        magic = _SafeUnpickler(f, path, depth=depth).load()
        if magic != 0x1950A86A20F9469CFC6C:
            return _Storage(None, None)
        _SafeUnpickler(f, path, depth=depth).load()          # protocol version
        sys_info = _SafeUnpickler(f, path, depth=depth).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            return _Storage(None, None)
        obj = _SafeUnpickler(f, path, storages, depth).load()
        keys = _SafeUnpickler(f, path, depth=depth).load()
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            refs = storages.get(str(key), [])
            stype = refs[0].stype if refs else _StorageType("?")
            item = stype.itemsize
            if item is None or count < 0:
                break
            raw = f.read(count * item)
            if len(raw) != count * item:
                break
            data = stype.decode(raw)
            for ref in refs:
                ref.data = data
        return obj
    except MotionError:
        raise
    except Exception:
        return _Storage(None, None)


# ----------------------------------------------------------------------------- entry points
def safe_load(fileobj, path=None):
    """Unpickle from a binary file object with the allow-list above."""
    try:
        return _SafeUnpickler(fileobj, path).load()
    except MotionError:
        raise
    except Exception as exc:  # truncated / corrupt pickles
        raise MotionError(path, None, message=f"not a readable pickle ({type(exc).__name__}: {exc})") from None


def safe_loads(data: bytes, path=None):
    return safe_load(io.BytesIO(data), path)


def load_npy_object(path):
    """Read a .npy file; an object array (np.save of a dict) goes through safe_load.

    np.load(allow_pickle=True) would call pickle.load on the payload; here the header is
    parsed with numpy's format reader and only the payload is unpickled, restricted.
    """
    from numpy.lib import format as npformat
    with open(path, "rb") as f:
        try:
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
        except Exception as exc:
            raise MotionError(path, None, message=f"not a readable .npy file ({exc})") from None
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        arr = safe_load(f, os.fspath(path))
    if isinstance(arr, np.ndarray) and arr.shape == () and arr.dtype == object:
        return arr.item()
    return arr
