"""Reading .npy and .npz files within bounds (``backend.limits``), never unpickling.

``np.load`` trusts a file's header: a 1.8 MB .npz whose member declares 3.6 GB is inflated
whole, and a .npy header promising more than the file holds allocates first and fails later.
Here each array's header is read first and checked against the limit and against the bytes
its member really has; object arrays (pickled Python objects) are refused with the file and
key named. numpy only: the motion package uses this in Blender's Python.
"""

from __future__ import annotations

import os
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npformat

from .limits import MAX_ARRAY_BYTES

__all__ = ["ArrayFileError", "NpzReader", "open_npz", "read_npy", "read_npy_header"]

NPZ_MAX_MEMBERS = 10_000
_READ_CHUNK = 1 << 24


class ArrayFileError(ValueError):
    """An array file refused; ``path``, ``key`` and ``problem`` say which and why."""

    def __init__(self, path: Any, key: str | None, problem: str) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        self.problem = problem
        where = f"{self.path}: key '{key}'" if key is not None else f"{self.path}"
        super().__init__(f"{where}: {problem}")


def read_npy_header(f: BinaryIO, path: Any, key: str | None = None) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream at f's position (f is left after the header)."""
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            return npformat.read_array_header_1_0(f)
        return npformat.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError, struct.error) as exc:
        raise ArrayFileError(path, key, f"not a readable .npy array ({exc})") from None


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    count = 1
    for s in shape:
        count *= int(s)
    return count * dtype.itemsize


def _check(shape: tuple[int, ...], dtype: np.dtype, available: int, path: Any, key: str | None) -> int:
    if dtype.hasobject:
        raise ArrayFileError(path, key, "holds an object array (pickled Python objects); only numeric and "
                             "text arrays are read, nothing in the file is unpickled")
    nbytes = _nbytes(shape, dtype)
    if nbytes > MAX_ARRAY_BYTES:
        raise ArrayFileError(path, key, f"declares an array of shape {shape} ({nbytes:,} bytes), more than the "
                             f"{MAX_ARRAY_BYTES:,}-byte limit for one array")
    if nbytes != available:
        raise ArrayFileError(path, key, f"declares an array of shape {shape} ({nbytes:,} bytes) but holds "
                             f"{available:,} bytes (truncated or crafted)")
    return nbytes


def _read_into(f: BinaryIO, shape: tuple[int, ...], fortran: bool, dtype: np.dtype, nbytes: int,
               path: Any, key: str | None) -> np.ndarray:
    out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    flat = out.reshape(-1, order="A").view(np.uint8) if out.size else np.empty(0, np.uint8)
    done = 0
    while done < nbytes:
        chunk = f.read(min(_READ_CHUNK, nbytes - done))
        if not chunk:
            raise ArrayFileError(path, key, f"ends after {done:,} of the array's {nbytes:,} bytes")
        flat[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
        done += len(chunk)
    return out


def read_npy(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A plain (non-object) .npy file, checked against its size before anything is allocated."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            shape, fortran, dtype = read_npy_header(f, path, key)
            nbytes = _check(shape, dtype, size - f.tell(), path, key)
            return _read_into(f, shape, fortran, dtype, nbytes, path, key)
    except OSError as exc:
        raise ArrayFileError(path, key, f"cannot be read ({exc.strerror or exc})") from None


def _zip_member_count(path: str | os.PathLike) -> int | None:
    """Entries the zip's end record declares (read before zipfile builds its directory)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        tail_len = min(size, 22 + 0xFFFF)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    return struct.unpack("<H", tail[at + 10:at + 12])[0]


class NpzReader:
    """The arrays of an .npz, like ``np.load(path)`` but bounded: ``files``, ``r[key]``, ``key in r``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            count = _zip_member_count(path)
            if count is not None and count >= min(NPZ_MAX_MEMBERS, 0xFFFF):
                raise ArrayFileError(path, None, f"an .npz with {count:,} members or more (limit {NPZ_MAX_MEMBERS:,})")
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            if isinstance(exc, ArrayFileError):
                raise
            raise ArrayFileError(path, None, f"not a readable .npz archive ({exc})") from None
        infos = self._zip.infolist()
        if len(infos) > NPZ_MAX_MEMBERS:
            self._zip.close()
            raise ArrayFileError(path, None, f"an .npz with {len(infos):,} members (limit {NPZ_MAX_MEMBERS:,})")
        self._members = {(i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i for i in infos}
        self.files = list(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __iter__(self):
        return iter(self.files)

    def keys(self) -> list[str]:
        return list(self.files)

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._members[key]
        if info.file_size > MAX_ARRAY_BYTES + 0x10000:
            raise ArrayFileError(self.path, key, f"the archive member declares {info.file_size:,} bytes, more than "
                                 f"the {MAX_ARRAY_BYTES:,}-byte limit for one array (a zip bomb?)")
        try:
            with self._zip.open(info) as f:
                shape, fortran, dtype = read_npy_header(f, self.path, key)  # type: ignore[arg-type]
                nbytes = _check(shape, dtype, info.file_size - f.tell(), self.path, key)
                return _read_into(f, shape, fortran, dtype, nbytes, self.path, key)  # type: ignore[arg-type]
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ArrayFileError(self.path, key, f"cannot be read from the archive ({exc})") from None

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_npz(path: str | os.PathLike) -> NpzReader:
    return NpzReader(path)
