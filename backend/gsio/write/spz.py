"""Niantic ``.spz`` version 3 (one gzip stream; layout in backend.gsio.spz), which every spz
reader opens without zstd; SH kept at 8 bits (Niantic's packer rounds degree 1 to 5 bits and
higher degrees to 4 to help gzip). The data must be in the format's frame, Y up."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ...files import atomic_path
from ...render.sh import C0
from ..errors import GaussianFileError
from ..spz import COLOR_SCALE, MAGIC, SQRT1_2
from ..splats import Splats

VERSION, FRACTIONAL_BITS = 3, 12


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _smallest_three(xyzw: np.ndarray) -> np.ndarray:
    n = len(xyzw)
    largest = np.argmax(np.abs(xyzw), 1)
    negate = xyzw[np.arange(n), largest] < 0
    word = largest.astype(np.uint32)
    for i in range(4):
        sel = largest != i
        neg = ((xyzw[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.floor(511.0 * np.abs(xyzw[:, i]) / SQRT1_2 + 0.5).astype(np.uint32)
        word = np.where(sel, (word << np.uint32(10)) | (neg << np.uint32(9)) | np.minimum(mag, 511), word)
    return word.astype("<u4").view(np.uint8).reshape(n, 4)


def write(path: Path, splats: Splats) -> Path:
    if splats.up != "y":
        raise GaussianFileError(path, "up", f".spz stores Y-up data (RUB); these Gaussians are {splats.up!r} up")
    n = len(splats)
    fixed = np.round(splats.means * (1 << FRACTIONAL_BITS)).astype(np.int64)
    if n and np.abs(fixed).max() >= 1 << 23:
        raise GaussianFileError(path, "means", f"lie beyond ±{(1 << 23) / (1 << FRACTIONAL_BITS):g} m, more "
                                "than .spz's 24-bit positions hold")
    pos = np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], -1).astype(np.uint8)  # (N, 3, 3)
    with np.errstate(divide="ignore"):
        log_scales = np.log(np.maximum(splats.scales, 1e-30))
    f_dc = (splats.colors - 0.5) / C0
    planes = [pos.tobytes(), _u8(splats.opacities * 255.0).tobytes(),
              _u8(f_dc * (COLOR_SCALE * 255.0) + 127.5).tobytes(), _u8((log_scales + 10.0) * 16.0).tobytes(),
              _smallest_three(splats.unit_quats()[:, [1, 2, 3, 0]]).tobytes()]
    if splats.sh is not None:
        planes.append(_u8(splats.sh * 128.0 + 128.0).tobytes())  # (N, K, 3): coefficient outer
    header = struct.pack("<IIIBBBB", MAGIC, VERSION, n, splats.sh_degree, FRACTIONAL_BITS, 0, 0)
    with atomic_path(path, suffix=".spz") as tmp:
        tmp.write_bytes(gzip.compress(header + b"".join(planes), compresslevel=6, mtime=0))
    return path
