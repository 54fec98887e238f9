"""Restricted unpickling: numpy arrays and plain containers only, never code, within bounds.

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

Allowed is not enough: a small pickle can still take a process down through what the
unpickler builds. So before anything is built, a scan of the opcodes (``pickletools``)
refuses nesting deeper than ``PICKLE_MAX_DEPTH`` (hashing a 300,000-deep tuple overflows
the C stack), more than ``PICKLE_MAX_OPS`` objects, memo indices beyond the opcodes seen
(the C unpickler sizes its memo by the index: 9 bytes asked for 2.3 GB) and length prefixes
beyond the data; the file is read whole first (at most ``MAX_FILE_BYTES``), so no prefix is
allocated before it is checked. While building, BUILD (``__setstate__``) is done only on
numpy arrays and dtypes, whose states are checked (size against the data, no arrays
inside object arrays); every stand-in is fresh per lookup, so one file cannot change how
another decodes; numpy constructors that allocate by argument are reachable only in the
form numpy's own pickles use. The limits live in ``backend.limits``.

Anything else raises MotionError naming the file and what was refused.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import pickletools
import struct

import numpy as np

from ..limits import (DECODE_BUDGET_BASE, DECODE_BUDGET_FACTOR, MAX_ARRAY_BYTES, MAX_FILE_BYTES, PICKLE_MAX_DEPTH,
                      PICKLE_MAX_LONG_BYTES, PICKLE_MAX_OPS)
from ..safe_numpy import ArrayFileError, read_npy, read_npy_header
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


class _Budget:
    """Bytes the torch stand-ins of one file may still materialise (strides can repeat data)."""

    def __init__(self, file_bytes: int) -> None:
        self.left = DECODE_BUDGET_FACTOR * file_bytes + DECODE_BUDGET_BASE

    def take(self, nbytes: int) -> bool:
        if nbytes > self.left or nbytes > MAX_ARRAY_BYTES:
            return False
        self.left -= nbytes
        return True


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None, *, budget: _Budget | None = None):
    """Stand-in for torch._utils._rebuild_tensor_v2: a strided view of the storage bytes,
    bounds-checked so a crafted size/stride cannot read outside the storage or repeat it
    beyond the file's decode budget."""
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    data = getattr(storage, "data", None)
    device = getattr(storage, "device", None)
    dtype = getattr(storage, "dtype", None)
    arr = None
    if data is not None and len(size) == len(stride) and len(size) <= 32:
        offset = int(storage_offset)
        count = 1
        for s in size:
            count *= max(s, 0)
        affordable = budget is None or budget.take(count * data.itemsize)
        if affordable and offset >= 0 and all(s >= 0 for s in stride) and all(s >= 0 for s in size):
            if count == 0:
                arr = np.zeros(size, dtype=data.dtype)
            else:
                last = offset + sum((n - 1) * st for n, st in zip(size, stride))
                if last < data.size:
                    item = data.itemsize
                    arr = np.lib.stride_tricks.as_strided(
                        data[offset:], shape=size, strides=[st * item for st in stride]).copy()
    return TorchTensorStub(size, dtype, device, arr)


def _rebuild_tensor(storage, storage_offset, size, stride, *, budget: _Budget | None = None):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride, budget=budget)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _codecs_encode(text, encoding="latin1", errors="strict"):
    """Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'); allow only that."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") not in ("latin1", "latin_1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1", errors)


# ----------------------------------------------------------------------------- numpy, as numpy pickles use it
class _NdarrayClass:
    """What ``numpy.ndarray`` resolves to: only an argument of ``_reconstruct`` (calling the class
    itself would allocate whatever shape the file names)."""


def _numpy_attr(*names):
    import numpy.core.multiarray as ma
    for name in names:
        obj = getattr(ma, name, None)
        if obj is not None:
            return obj
    raise AttributeError(names)


def _reconstruct(subtype, shape, dtype):
    """numpy's pickles start every array as ``_reconstruct(ndarray, (0,), b'b')`` and BUILD it."""
    if not isinstance(subtype, _NdarrayClass):
        raise pickle.UnpicklingError("numpy _reconstruct is admitted only for plain ndarrays")
    if not isinstance(shape, tuple) or len(shape) > 1 or any(not isinstance(s, int) or not 0 <= s <= 1 for s in shape):
        raise pickle.UnpicklingError(f"numpy _reconstruct with shape {shape!r} (numpy's pickles use (0,))")
    if not isinstance(dtype, (bytes, str)) or len(dtype) > 4:
        raise pickle.UnpicklingError("numpy _reconstruct with an unexpected dtype argument")
    return _numpy_attr("_reconstruct")(np.ndarray, shape, dtype)


def _dtype(obj, align=False, copy=True):
    """np.dtype, always a private copy: BUILD on it must not touch numpy's shared dtypes."""
    return np.dtype(obj, bool(align), True)


def _plain_dtype(dtype, path=None) -> np.dtype:
    """A dtype as numpy itself would make it from its name: numeric, text or object, no fields.

    A dtype's pickled state carries its flags; an object dtype whose flags say "no objects" makes
    numpy read file bytes as object pointers (a crash, or worse). So a state must change nothing
    that the name does not say."""
    ok = isinstance(dtype, np.dtype) and dtype.fields is None and dtype.subdtype is None and dtype.kind in "biufcSUO"
    if ok:
        ref = np.dtype(dtype.str)
        ok = dtype == ref and dtype.flags == ref.flags and dtype.itemsize == ref.itemsize \
            and dtype.hasobject == ref.hasobject and dtype.alignment == ref.alignment
    if not ok:
        raise MotionError(path, None, message=(
            f"refused the numpy dtype {str(dtype)[:60]!r}: motion pickles may hold plain numeric, text or "
            "object arrays; nothing in the file was executed"))
    return dtype


def _scalar(dtype, obj=None):
    return _numpy_attr("scalar")(_plain_dtype(dtype), obj) if obj is not None else \
        _numpy_attr("scalar")(_plain_dtype(dtype))


def _frombuffer(buf, dtype, shape, order):
    dtype = _plain_dtype(np.dtype(dtype))
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays cannot come from a buffer")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _bytearray(source=b"", encoding=None, errors="strict"):
    """bytearray from bytes (or latin-1 text), never from a size."""
    if isinstance(source, (bytes, bytearray)):
        return bytearray(source)
    if isinstance(source, str) and encoding is not None:
        return bytearray(_codecs_encode(source, encoding, errors))
    raise pickle.UnpicklingError("bytearray is admitted only from bytes")


def _check_array_state(state, path) -> None:
    """An ndarray's BUILD state: (version, shape, dtype, fortran, data), consistent and bounded."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise MotionError(path, None, message="a numpy array in the pickle has a malformed state")
    shape, dtype, raw = state[-4], state[-3], state[-1]
    if not isinstance(shape, tuple) or len(shape) > 32 or any(not isinstance(s, int) or s < 0 for s in shape):
        raise MotionError(path, None, message=f"a numpy array in the pickle has an invalid shape {str(shape)[:80]}")
    if not isinstance(dtype, np.dtype):
        raise MotionError(path, None, message="a numpy array in the pickle has no dtype")
    _plain_dtype(dtype, path)
    count = 1
    for s in shape:
        count *= s
    if dtype.hasobject:
        if not isinstance(raw, list) or len(raw) != count:
            raise MotionError(path, None, message="an object array in the pickle does not hold its items")
        if any(isinstance(item, (np.ndarray, TorchTensorStub)) for item in raw):
            raise MotionError(path, None, message=(
                "refused an object array whose items are arrays (motion files hold numeric arrays; nested "
                "object arrays can crash a reader)"))
        return
    nbytes = count * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise MotionError(path, None, message=f"a numpy array of shape {shape} would take {nbytes:,} bytes, more "
                          f"than the {MAX_ARRAY_BYTES:,}-byte limit for one array")
    if not isinstance(raw, (bytes, bytearray, str)) or len(raw) != nbytes:
        raise MotionError(path, None, message=f"a numpy array of shape {shape} ({nbytes:,} bytes) comes with "
                          f"{len(raw) if isinstance(raw, (bytes, bytearray, str)) else 'no'} bytes of data")


# ----------------------------------------------------------------------------- allow-list
def _allowed() -> dict:
    """(module, name) -> a factory giving what the global resolves to (fresh where it has state)."""
    table = {}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(core, "_reconstruct")] = lambda: _reconstruct
        table[(core, "scalar")] = lambda: _scalar
    for core in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(core, "_frombuffer")] = lambda: _frombuffer
    table[("numpy", "ndarray")] = _NdarrayClass
    table[("numpy", "dtype")] = lambda: _dtype
    table[("collections", "OrderedDict")] = lambda: __import__("collections").OrderedDict
    table[("builtins", "set")] = lambda: set
    table[("builtins", "frozenset")] = lambda: frozenset
    table[("builtins", "complex")] = lambda: complex
    table[("builtins", "bytearray")] = lambda: _bytearray
    table[("builtins", "slice")] = lambda: slice
    table[("_codecs", "encode")] = lambda: _codecs_encode
    # torch, without torch
    table[("torch._utils", "_rebuild_parameter")] = lambda: _rebuild_parameter
    table[("torch", "Size")] = lambda: tuple
    for name in _TORCH_STORAGE_DTYPES:
        table[("torch", name)] = functools.partial(_StorageType, name)
    table[("torch", "UntypedStorage")] = functools.partial(_StorageType, "ByteStorage")
    return table


_ALLOWED: dict | None = None
_MAX_LEGACY_NESTING = 2
_TENSOR_REBUILDERS = {"_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor": _rebuild_tensor}


# ----------------------------------------------------------------------------- the scan before building
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_EMPTY = frozenset({"EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"})


def _prescan(f: io.BytesIO, path) -> None:
    """Walk one pickle's opcodes (f's position is restored) tracking how deep each stack value
    nests, and refuse what would blow up when built; see the module docstring."""
    start = f.tell()
    total = len(f.getbuffer())
    stack: list[int] = []      # nesting depth of each value on the unpickler's stack
    marks: list[int] = []      # stack positions of MARKs
    memo: dict[int, int] = {}
    ops = 0

    def refuse(what: str) -> MotionError:
        return MotionError(path, None, message=f"refused the pickle: {what}; nothing in it was built or executed")

    def take(n: int, name: str) -> list[int]:
        if len(stack) - (marks[-1] if marks else 0) < n:
            raise refuse(f"{name} on an empty stack")
        out = stack[len(stack) - n:] if n else []
        del stack[len(stack) - n:]
        return out

    try:
        for op, arg, pos in pickletools.genops(f):
            ops += 1
            if ops > PICKLE_MAX_OPS:
                raise refuse(f"more than {PICKLE_MAX_OPS:,} objects")
            name = op.name
            if name == "FRAME" and arg > total - f.tell():
                raise refuse(f"a frame of {arg:,} bytes where {total - f.tell():,} remain")
            if name in ("LONG1", "LONG4") and abs(arg).bit_length() > 8 * PICKLE_MAX_LONG_BYTES:
                raise refuse(f"an integer of more than {PICKLE_MAX_LONG_BYTES} bytes")
            if name in ("NEXT_BUFFER", "READONLY_BUFFER"):
                raise refuse("out-of-band buffers")
            if name in _PUT_OPS or name == "MEMOIZE":
                index = len(memo) if name == "MEMOIZE" else int(arg)
                if index < 0 or index > ops:
                    raise refuse(f"memo index {index:,} after {ops:,} opcodes")
                if not stack or (marks and marks[-1] == len(stack)):
                    raise refuse("a memo entry of nothing")
                memo[index] = stack[-1]
                continue
            if name in _GET_OPS:
                stack.append(memo.get(int(arg), 0))
                continue
            if name == "MARK":
                marks.append(len(stack))
                continue
            before, after = op.stack_before, op.stack_after
            if pickletools.markobject in before:
                if not marks:
                    raise refuse(f"{name} without a mark")
                at = marks.pop()
                popped = stack[at:]
                del stack[at:]
                parts = take(before.index(pickletools.markobject), name) + popped
            elif name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()
                continue
            else:
                parts = take(len(before), name)
            if name == "DUP":
                stack += parts * 2
            elif after:
                if name in _IN_PLACE:
                    depth = max([parts[0]] + [d + 1 for d in parts[1:]])
                elif name in _EMPTY:
                    depth = 1
                else:
                    depth = 1 + max(parts) if parts else 0
                if depth > PICKLE_MAX_DEPTH:
                    raise refuse(f"containers nested more than {PICKLE_MAX_DEPTH} deep")
                stack.extend([depth] * len(after))
    except MotionError:
        raise
    except Exception as exc:  # truncated data, unknown opcodes, prefixes beyond the data
        raise MotionError(path, None, message=f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    f.seek(start)


# ----------------------------------------------------------------------------- the unpickler
class _SafeUnpickler(pickle._Unpickler):  # the Python unpickler: BUILD can be checked
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path, storages=None, depth=0, budget: _Budget | None = None):
        super().__init__(file, encoding="latin1")
        self._stream = file
        self._path = path
        self._storages = storages    # for legacy torch blobs: key -> _Storage (filled later)
        self._depth = depth
        self._budget = budget or _Budget(len(file.getbuffer()))

    def load(self):
        _prescan(self._stream, self._path)
        return super().load()

    def find_class(self, module, name):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._load_from_bytes
        if module == "torch._utils" and name in _TENSOR_REBUILDERS:
            return functools.partial(_TENSOR_REBUILDERS[name], budget=self._budget)
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise MotionError(self._path, None, message=(
                f"refused to unpickle global '{module}.{name}': motion pickles may only hold "
                "numpy arrays, numpy scalars and plain containers (the file may be malicious "
                "or not a motion file); nothing in it was executed"))
        return factory()

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.ndarray):
            _check_array_state(state, self._path)
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            inst.__setstate__(state)
            _plain_dtype(inst, self._path)
        else:
            raise MotionError(self._path, None, message=(
                f"refused to set the state of a {type(inst).__name__} (only numpy arrays and dtypes take "
                "one); nothing in the file was executed"))

    dispatch[pickle.BUILD[0]] = _load_build

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
        return _parse_legacy_torch(bytes(blob), self._path, self._depth + 1, self._budget)


def _parse_legacy_torch(blob: bytes, path, depth: int, budget: _Budget):
    """Parse torch's legacy (non-zip) save format holding one storage.

    Layout: pickle(magic) pickle(protocol) pickle(sys_info) pickle(obj, storages as
    persistent ids) pickle(sorted storage keys) then per key: int64 count + raw bytes.
    Returns the object with storages filled in (a _Storage for a pickled storage); on
    anything unexpected returns a data-less _Storage rather than guessing.
    """
    f = io.BytesIO(blob)
    storages: dict[str, list] = {}

    def unpickler(into=None) -> _SafeUnpickler:
        return _SafeUnpickler(f, path, into, depth, budget)

    try:
        magic = unpickler().load()
        if magic != 0x1950A86A20F9469CFC6C:
            return _Storage(None, None)
        unpickler().load()          # protocol version
        sys_info = unpickler().load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            return _Storage(None, None)
        obj = unpickler(storages).load()
        keys = unpickler().load()
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            refs = storages.get(str(key), [])
            stype = refs[0].stype if refs else _StorageType("?")
            item = stype.itemsize
            if item is None or count < 0 or count * item > len(blob):
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
def _read_whole(fileobj, path) -> io.BytesIO:
    """The rest of the stream, in chunks (read(n) of a file allocates n bytes up front)."""
    out = io.BytesIO()
    while True:
        chunk = fileobj.read(1 << 24)
        if not chunk:
            break
        out.write(chunk)
        if out.tell() > MAX_FILE_BYTES:
            raise MotionError(path, None, message=f"a pickle larger than the {MAX_FILE_BYTES:,}-byte limit")
    out.seek(0)
    return out


def safe_load(fileobj, path=None):
    """Unpickle from a binary file object with the allow-list and bounds above."""
    stream = _read_whole(fileobj, path)
    try:
        return _SafeUnpickler(stream, path).load()
    except MotionError:
        raise
    except RecursionError:
        raise MotionError(path, None, message="refused the pickle: it nests too deep to build") from None
    except Exception as exc:  # truncated / corrupt pickles
        raise MotionError(path, None, message=f"not a readable pickle ({type(exc).__name__}: {exc})") from None


def safe_loads(data: bytes, path=None):
    return safe_load(io.BytesIO(data), path)


def load_npy_object(path):
    """Read a .npy file; an object array (np.save of a dict) goes through safe_load.

    np.load(allow_pickle=True) would call pickle.load on the payload; here the header is
    parsed with numpy's format reader and only the payload is unpickled, restricted. A plain
    array is read within bounds (``backend.safe_numpy``).
    """
    try:
        with open(path, "rb") as f:
            _, _, dtype = read_npy_header(f, path)
            if not dtype.hasobject:
                return read_npy(path)
            arr = safe_load(f, os.fspath(path))
    except ArrayFileError as exc:
        raise MotionError(exc.path, exc.key, message=exc.problem) from None
    if isinstance(arr, np.ndarray) and arr.shape == () and arr.dtype == object:
        return arr.item()
    return arr
