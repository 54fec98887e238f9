"""Niantic ``.spz`` versions 1-4 (layout in backend.gsio.spz): our own decoder (the PyPI ``spz``
package is an unbuildable Rust sdist); version 4's zstd streams need the ``zstandard`` package."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ...render.sh import C0, MAX_DEGREE
from ..errors import GaussianFileError
from ..spz import COLOR_SCALE, MAGIC, MAX_FILE_DEGREE, NATIVE_UP, SQRT1_2, rest_dim
from ..splats import Splats


def is_spz(head: bytes) -> bool:
    return head[:2] == b"\x1f\x8b" or head[:4] == struct.pack("<I", MAGIC)


def read(path: Path, data: bytes) -> Splats:
    if data[:4] == struct.pack("<I", MAGIC):
        version, n, degree, frac, planes = _v4(path, data)
    else:
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise GaussianFileError(path, None, f"truncated or corrupt .spz (gzip: {e})") from None
        if len(raw) < 16:
            raise GaussianFileError(path, None, "truncated .spz: no 16-byte header")
        magic, version, n, degree, frac, _flags, _ = struct.unpack("<IIIBBBB", raw[:16])
        if magic != MAGIC:
            raise GaussianFileError(path, None, "not an .spz file (no NGSP magic after gunzip)")
        if not 1 <= version <= 3:
            raise GaussianFileError(path, "version", f"{version} is not a gzip .spz version (1-3)")
        _check_degree(path, degree)
        sizes = _plane_sizes(version, n, degree)
        need = 16 + sum(sizes)
        if len(raw) < need:
            raise GaussianFileError(path, None, f"truncated .spz: {n} Gaussians need {need} bytes, it holds {len(raw)}")
        planes, at = [], 16
        for size in sizes:
            planes.append(raw[at: at + size])
            at += size
    return _decode(path, version, n, degree, frac, planes)


def _check_degree(path: Path, degree: int) -> None:
    if degree > MAX_DEGREE:
        what = "is not a valid SH degree" if degree > MAX_FILE_DEGREE else "is more than this reader renders"
        raise GaussianFileError(path, "shDegree", f"{degree} {what}; at most SH degree {MAX_DEGREE} is supported")


def _plane_sizes(version: int, n: int, degree: int) -> list[int]:
    """positions, alphas, colors, scales, rotations, sh."""
    return [n * (6 if version == 1 else 9), n, 3 * n, 3 * n, n * (4 if version >= 3 else 3), n * rest_dim(degree) * 3]


def _v4(path: Path, data: bytes):
    if len(data) < 32:
        raise GaussianFileError(path, None, "truncated .spz: no 32-byte header")
    _, version, n, degree, frac, _flags, streams, toc = struct.unpack("<IIIBBBBI", data[:20])
    if version != 4:
        raise GaussianFileError(path, "version", f"{version} with a plain NGSP header (only version 4 has one)")
    _check_degree(path, degree)
    sizes = [s for s in _plane_sizes(4, n, degree)]
    want = [s for s in sizes if s]
    if streams != len(want) or toc < 32 or toc + 16 * streams > len(data):
        raise GaussianFileError(path, "numStreams", f"{streams} streams (TOC at byte {toc}) do not fit a file of "
                                f"{len(data)} bytes holding {n} Gaussians of SH degree {degree}")
    try:
        import zstandard
    except ImportError:
        raise GaussianFileError(path, None, "is an .spz version 4 (zstd) file; reading it needs the 'zstandard' "
                                "package (pip install zstandard)") from None
    at, planes = toc + 16 * streams, []
    for i, expected in enumerate(want):
        csize, usize = struct.unpack("<QQ", data[toc + 16 * i: toc + 16 * i + 16])
        if usize != expected or at + csize > len(data):
            raise GaussianFileError(path, None, f"truncated or inconsistent .spz: stream {i} claims {csize} "
                                    f"compressed / {usize} bytes, {expected} expected")
        try:
            planes.append(zstandard.ZstdDecompressor().decompress(data[at: at + csize], max_output_size=usize))
        except zstandard.ZstdError as e:
            raise GaussianFileError(path, None, f"corrupt .spz stream {i}: {e}") from None
        at += csize
    if not sizes[-1]:
        planes.append(b"")
    return 4, n, degree, frac, planes


def _decode(path: Path, version: int, n: int, degree: int, frac: int, planes: list[bytes]) -> Splats:
    pos, alpha, color, scale, rot, sh = (np.frombuffer(p, np.uint8) for p in planes)
    if version == 1:
        means = np.frombuffer(planes[0], "<f2").astype(np.float64).reshape(n, 3)
    else:
        b = pos.reshape(n, 3, 3).astype(np.int32)
        fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = fixed.astype(np.float64) / (1 << frac)
    if not np.isfinite(means).all():
        raise GaussianFileError(path, "positions", "hold NaN or infinite values")
    if version >= 3:
        word = rot.reshape(n, 4).astype(np.uint32)
        word = word[:, 0] | (word[:, 1] << 8) | (word[:, 2] << 16) | (word[:, 3] << 24)
        largest = (word >> np.uint32(30)).astype(np.int64)
        xyzw = np.zeros((n, 4))
        comp = word
        for i in range(3, -1, -1):  # the last stored component sits in the lowest bits
            sel = largest != i
            value = SQRT1_2 * (comp & np.uint32(511)).astype(np.float64) / 511.0
            value = np.where((comp >> np.uint32(9)) & np.uint32(1), -value, value)
            xyzw[sel, i] = value[sel]
            comp = np.where(sel, comp >> np.uint32(10), comp)
        xyzw[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - (xyzw ** 2).sum(1)))
    else:
        xyz = rot.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        xyzw = np.c_[xyz, np.sqrt(np.maximum(0.0, 1.0 - (xyz ** 2).sum(1)))]
    f_dc = (color.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
    k = rest_dim(degree)
    return Splats(means=means, quats=xyzw[:, [3, 0, 1, 2]],
                  scales=np.exp(scale.reshape(n, 3).astype(np.float64) / 16.0 - 10.0),
                  opacities=alpha.astype(np.float64) / 255.0, colors=0.5 + C0 * f_dc,
                  sh=(sh.reshape(n, k, 3).astype(np.float64) - 128.0) / 128.0 if k else None, up=NATIVE_UP)
