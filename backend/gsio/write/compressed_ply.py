"""SuperSplat / PlayCanvas compressed PLY (layout in backend.gsio.compressed), about a quarter
of the INRIA file at SH degree 0; kept in the input order (no spatial sort)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...files import atomic_path
from ..compressed import CHUNK, CHUNK_PROPS, COLOR_PROPS, SQRT1_2, VERTEX_PROPS
from ..inria import UP_COMMENT
from ..splats import Splats


def _pack(t: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(t * top + 0.5), 0, top).astype(np.uint32)


def _chunked(a: np.ndarray, chunks: int) -> np.ndarray:
    """(chunks, CHUNK, ...) with the last Gaussian repeated to fill the last chunk."""
    pad = chunks * CHUNK - len(a)
    if pad:
        a = np.concatenate([a, np.repeat(a[-1:], pad, 0)])
    return a.reshape((chunks, CHUNK) + a.shape[1:])


def _normalise(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    t = np.where(span < 1e-5, 0.0, (x - lo) / np.where(span < 1e-5, 1.0, span))
    return np.clip(t, 0.0, 1.0)


def _bounded(values: np.ndarray, chunks: int, clamp: float | None = None):
    c = _chunked(values, chunks)
    lo, hi = c.min(1), c.max(1)
    if clamp is not None:
        lo, hi = np.clip(lo, -clamp, clamp), np.clip(hi, -clamp, clamp)
    t = _normalise(c, lo[:, None], hi[:, None]).reshape(-1, values.shape[1])[: len(values)]
    return lo, hi, t


def _11_10_11(t: np.ndarray) -> np.ndarray:
    return (_pack(t[:, 0], 11) << np.uint32(21)) | (_pack(t[:, 1], 10) << np.uint32(11)) | _pack(t[:, 2], 11)


def _rotation(q: np.ndarray) -> np.ndarray:
    largest = np.argmax(np.abs(q), 1)
    q = q * np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None]
    word = largest.astype(np.uint32)
    for pos in range(3):
        idx = np.array([[i for i in range(4) if i != which][pos] for which in range(4)])[largest]
        word = (word << np.uint32(10)) | _pack(q[np.arange(len(q)), idx] * SQRT1_2 + 0.5, 10)
    return word


def write(path: Path, splats: Splats) -> Path:
    n = len(splats)
    chunks = -(-n // CHUNK)
    with np.errstate(divide="ignore"):
        log_scales = np.log(np.maximum(splats.scales, 1e-10))
    if n:
        plo, phi, pt = _bounded(splats.means, chunks)
        slo, shi, st = _bounded(log_scales, chunks, clamp=20.0)
        clo, chi, ct = _bounded(splats.colors, chunks)
        chunk_rows = np.concatenate([plo, phi, slo, shi, clo, chi], 1).astype("<f4")
        color = ((_pack(ct[:, 0], 8) << np.uint32(24)) | (_pack(ct[:, 1], 8) << np.uint32(16))
                 | (_pack(ct[:, 2], 8) << np.uint32(8)) | _pack(splats.opacities, 8))
        words = np.stack([_11_10_11(pt), _rotation(splats.unit_quats()), _11_10_11(st), color], 1).astype("<u4")
    else:
        chunk_rows, words = np.zeros((0, 18), "<f4"), np.zeros((0, 4), "<u4")
    header = ["ply", "format binary_little_endian 1.0", f"comment {UP_COMMENT}{splats.up}", f"element chunk {chunks}"]
    header += [f"property float {p}" for p in CHUNK_PROPS + COLOR_PROPS]
    header += [f"element vertex {n}"] + [f"property uint {p}" for p in VERTEX_PROPS]
    sh_bytes = b""
    if splats.sh is not None:
        k = splats.sh.shape[1]
        header += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(3 * k)]
        rest = splats.sh.transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major like f_rest
        sh_bytes = np.clip(np.trunc((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8).tobytes()
    header.append("end_header\n")
    with atomic_path(path, suffix=".ply") as tmp, open(tmp, "wb") as f:
        f.write("\n".join(header).encode("ascii"))
        f.write(chunk_rows.tobytes())
        f.write(words.tobytes())
        f.write(sh_bytes)
    return path

