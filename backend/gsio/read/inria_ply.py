"""INRIA 3DGS PLY (also Brush, Mip-Splatting, SuperSplat's uncompressed export): the vertex
element with x y z f_dc_* f_rest_* opacity scale_* rot_* in any order, extra properties and
elements ignored. Frame: whatever the capture's was, usually COLMAP's (y down, so "-y" up)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...render.sh import MAX_DEGREE, degree_of
from ..errors import GaussianFileError
from ..inria import C0, REQUIRED, up_from_comments
from ..ply_container import PlyContents
from ..splats import Splats

_REST = re.compile(r"f_rest_(\d+)$")


def sh_rest(path: Path, cols: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """f_rest_0.. (channel-major: all of red, then green, then blue) as (N, K, 3)."""
    idx = sorted(int(m.group(1)) for m in map(_REST.match, cols) if m)
    if not idx:
        return None
    if idx != list(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        raise GaussianFileError(path, "f_rest", f"properties are not numbered 0..{max(idx)} (missing f_rest_{missing[0]})")
    if len(idx) % 3:
        raise GaussianFileError(path, "f_rest", f"has {len(idx)} properties, not 3 colour channels' worth")
    k = len(idx) // 3
    degree = degree_of(k)
    if degree is None:
        exact = ((k + 1) ** 0.5).is_integer()
        found = f"SH degree {int((k + 1) ** 0.5) - 1}" if exact else f"{k} coefficients per channel"
        raise GaussianFileError(path, "f_rest", f"has {len(idx)} properties ({found}); at most SH degree "
                                f"{MAX_DEGREE} (45 f_rest properties) is supported")
    rest = np.stack([finite(path, cols, f"f_rest_{i}") for i in idx], 1)  # (N, 3K)
    return rest.reshape(n, 3, k).transpose(0, 2, 1)


def finite(path: Path, cols: dict[str, np.ndarray], name: str) -> np.ndarray:
    a = np.asarray(cols[name], dtype=np.float64)
    if not np.isfinite(a).all():
        raise GaussianFileError(path, name, f"holds NaN or infinite values (first at vertex {int(np.argmax(~np.isfinite(a)))})")
    return a


def read(path: Path, contents: PlyContents) -> Splats:
    v = contents.element(path, "vertex")
    cols = v.data or {}
    missing = [p for p in REQUIRED if p not in cols]
    if missing:
        raise GaussianFileError(path, None, f"PLY vertex element lacks the 3DGS properties {', '.join(missing)}")
    n = v.count
    col = lambda name: finite(path, cols, name)  # noqa: E731
    with np.errstate(over="ignore"):
        scales = np.stack([np.exp(col(f"scale_{i}")) for i in range(3)], 1)
    for i in range(3):
        if not np.isfinite(scales[:, i]).all():
            raise GaussianFileError(path, f"scale_{i}", "holds log scales too large to be a Gaussian's size")
    with np.errstate(over="ignore"):
        opacities = 1.0 / (1.0 + np.exp(-col("opacity")))
    return Splats(
        means=np.stack([col(p) for p in ("x", "y", "z")], 1),
        quats=np.stack([col(f"rot_{i}") for i in range(4)], 1),
        scales=scales, opacities=opacities,
        colors=0.5 + C0 * np.stack([col(f"f_dc_{i}") for i in range(3)], 1),
        sh=sh_rest(path, cols, n), up=up_from_comments(contents.comments),
    )
