"""SuperSplat / PlayCanvas compressed PLY (layout in backend.gsio.compressed); "-y" up, the PLY
convention those tools keep."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...render.sh import MAX_DEGREE, degree_of
from ..compressed import CHUNK, CHUNK_PROPS, COLOR_PROPS, SQRT1_2, VERTEX_PROPS
from ..errors import GaussianFileError
from ..inria import up_from_comments
from ..ply_container import PlyContents
from ..splats import Splats


def is_compressed(contents: PlyContents) -> bool:
    chunk, vertex = contents.elements.get("chunk"), contents.elements.get("vertex")
    return chunk is not None and vertex is not None and all(p in [n for n, _ in vertex.props] for p in VERTEX_PROPS)


def _unorm(v: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return ((v >> np.uint32(shift)) & np.uint32((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)


def _11_10_11(v: np.ndarray) -> np.ndarray:
    return np.stack([_unorm(v, 21, 11), _unorm(v, 11, 10), _unorm(v, 0, 11)], 1)


def read(path: Path, contents: PlyContents) -> Splats:
    chunk, vertex = contents.element(path, "chunk"), contents.element(path, "vertex")
    cd, vd = chunk.data or {}, vertex.data or {}
    n = vertex.count
    for name in CHUNK_PROPS:
        if name not in cd:
            raise GaussianFileError(path, name, "is missing from the compressed PLY 'chunk' element")
    for name, t in vertex.props:
        if name in VERTEX_PROPS and t != "u4":
            raise GaussianFileError(path, name, f"must be a uint property, found type {t}")
    if chunk.count != -(-n // CHUNK):
        raise GaussianFileError(path, "chunk", f"count {chunk.count} is inconsistent with {n} Gaussians "
                                f"({-(-n // CHUNK)} chunks of {CHUNK} expected)")
    bounds = {k: np.asarray(v, np.float64) for k, v in cd.items()}
    for k, v in bounds.items():
        if not np.isfinite(v).all():
            raise GaussianFileError(path, k, f"holds NaN or infinite values (first at chunk {int(np.argmax(~np.isfinite(v)))})")
    ci = np.arange(n) // CHUNK

    def lerp(prefix: str, axes: tuple[str, ...], t: np.ndarray) -> np.ndarray:
        lo = np.stack([bounds[f"min_{prefix}{a}"][ci] for a in axes], 1)
        hi = np.stack([bounds[f"max_{prefix}{a}"][ci] for a in axes], 1)
        return lo * (1 - t) + hi * t

    pos, rot = np.asarray(vd["packed_position"], np.uint32), np.asarray(vd["packed_rotation"], np.uint32)
    scl, col = np.asarray(vd["packed_scale"], np.uint32), np.asarray(vd["packed_color"], np.uint32)
    means = lerp("", ("x", "y", "z"), _11_10_11(pos))
    with np.errstate(over="ignore"):
        scales = np.exp(lerp("scale_", ("x", "y", "z"), _11_10_11(scl)))
    rgba = np.stack([_unorm(col, s, 8) for s in (24, 16, 8, 0)], 1)
    colors = lerp("", ("r", "g", "b"), rgba[:, :3]) if all(p in bounds for p in COLOR_PROPS) else rgba[:, :3]
    abc = (np.stack([_unorm(rot, 20, 10), _unorm(rot, 10, 10), _unorm(rot, 0, 10)], 1) - 0.5) / SQRT1_2
    largest = (rot >> np.uint32(30)).astype(np.int64)
    m = np.sqrt(np.maximum(0.0, 1.0 - (abc ** 2).sum(1)))
    quats = np.empty((n, 4))
    for which in range(4):
        sel = largest == which
        others = [i for i in range(4) if i != which]
        quats[np.ix_(sel, others)] = abc[sel]
        quats[sel, which] = m[sel]
    return Splats(means=means, quats=quats, scales=scales, opacities=rgba[:, 3], colors=colors,
                  sh=_sh(path, contents, n), up=up_from_comments(contents.comments))


def _sh(path: Path, contents: PlyContents, n: int) -> np.ndarray | None:
    e = contents.elements.get("sh")
    if e is None:
        return None
    if e.data is None or e.count != n:
        raise GaussianFileError(path, "sh", f"element has {e.count} rows for {n} Gaussians")
    names = [p for p, _ in e.props]
    k = len(names) // 3
    if len(names) % 3 or degree_of(k) is None or names != [f"f_rest_{i}" for i in range(len(names))]:
        raise GaussianFileError(path, "sh", f"element must hold f_rest_0..f_rest_{{8|23|44}} (SH degree 1 to "
                                f"{MAX_DEGREE}); found {len(names)} properties")
    u = np.stack([np.asarray(e.data[p], np.float64) for p in names], 1)
    norm = np.where(u == 0, 0.0, np.where(u == 255, 1.0, (u + 0.5) / 256.0))
    return ((norm - 0.5) * 8.0).reshape(n, 3, k).transpose(0, 2, 1)
