"""INRIA 3DGS PLY: binary little-endian, float32, exactly ``save_ply``'s property order with
f_rest zero-padded to the declared SH degree (default 3, what the reference loader asserts and
SIBR's fixed record layout expects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...files import atomic_path
from ...render.sh import MAX_DEGREE
from ..errors import GaussianFileError
from ..inria import C0, OPACITY_EPS, SCALE_MIN, UP_COMMENT, properties
from ..splats import Splats


def write(path: Path, splats: Splats, sh_degree: int | None = None, normals: np.ndarray | None = None) -> Path:
    degree = max(MAX_DEGREE, splats.sh_degree) if sh_degree is None else sh_degree
    if not splats.sh_degree <= degree <= MAX_DEGREE:
        raise GaussianFileError(path, "sh_degree", f"must lie between the data's SH degree ({splats.sh_degree}) "
                                f"and {MAX_DEGREE}; got {degree}")
    n = len(splats)
    k = (degree + 1) ** 2 - 1
    rest = np.zeros((n, k, 3))
    if splats.sh is not None:
        rest[:, : splats.sh.shape[1]] = splats.sh
    o = np.clip(splats.opacities, OPACITY_EPS, 1.0 - OPACITY_EPS)
    quats = splats.unit_quats()
    nrm = np.zeros((n, 3)) if normals is None else np.asarray(normals, np.float64).reshape(n, 3)
    cols = {"x": splats.means[:, 0], "y": splats.means[:, 1], "z": splats.means[:, 2],
            "nx": nrm[:, 0], "ny": nrm[:, 1], "nz": nrm[:, 2], "opacity": np.log(o) - np.log1p(-o)}
    for i in range(3):
        cols[f"f_dc_{i}"] = (splats.colors[:, i] - 0.5) / C0
        cols[f"scale_{i}"] = np.log(np.maximum(splats.scales[:, i], SCALE_MIN))
    for i in range(4):
        cols[f"rot_{i}"] = quats[:, i]
    for c in range(3):  # channel-major, as INRIA flattens features_rest.transpose(1, 2)
        for j in range(k):
            cols[f"f_rest_{c * k + j}"] = rest[:, j, c]
    names = properties(degree)
    data = np.empty(n, dtype=[(p, "<f4") for p in names])
    for p in names:
        data[p] = cols[p]
    header = (f"ply\nformat binary_little_endian 1.0\ncomment {UP_COMMENT}{splats.up}\nelement vertex {n}\n"
              + "".join(f"property float {p}\n" for p in names) + "end_header\n")
    with atomic_path(path, suffix=".ply") as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())
    return path
