"""View-dependent colour: real spherical harmonics up to degree 3, as 3DGS scenes store them.

The basis is the one of the 3DGS paper's code (INRIA), gsplat and the glTF
``KHR_gaussian_splatting`` extension: real SH with the Condon–Shortley phase, coefficients
ordered by degree l and, within a degree, by order m = -l..l. A Gaussian's colour seen along the
unit direction d (from the camera centre to the Gaussian) is::

    rgb(d) = max(0, colors + sum_{k >= 1} Y_k(d) * sh[k - 1])

where ``colors = 0.5 + C0 * f_dc`` is the degree-0 term (unclipped) and ``sh`` holds the higher
coefficients (INRIA's ``f_rest``), shape (N, K, 3) with K = 3, 8 or 15. Only the sum is clamped,
at 0 and not at 1, as the INRIA rasterizer does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

C0 = 0.28209479177387814
MAX_DEGREE = 3
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def rest_count(degree: int) -> int:
    """Coefficients per channel beyond degree 0: 0, 3, 8, 15."""
    return (degree + 1) ** 2 - 1


def degree_of(count: int) -> int | None:
    """The SH degree whose rest coefficients per channel number `count`, or None."""
    for d in range(MAX_DEGREE + 1):
        if rest_count(d) == count:
            return d
    return None


def basis(dirs, degree: int):
    """(..., rest_count(degree)) values of the degree-1..`degree` basis at unit `dirs` (..., 3);
    torch in, torch out, else numpy."""
    lib = torch if isinstance(dirs, Tensor) else np
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = []
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z, _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [_C3[0] * y * (3 * xx - yy), _C3[1] * x * y * z, _C3[2] * y * (4 * zz - xx - yy),
                _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
    if not out:
        return lib.zeros(dirs.shape[:-1] + (0,), dtype=dirs.dtype) if lib is np else dirs.new_zeros(dirs.shape[:-1] + (0,))
    return lib.stack(out, -1)


def view_colors(means: Tensor, colors: Tensor, sh: Tensor, camera_position) -> Tensor:
    """(N, 3) colours of Gaussians at `means` seen from `camera_position` (world space)."""
    cam = torch.as_tensor(np.asarray(camera_position, dtype=np.float64), dtype=means.dtype, device=means.device)
    dirs = torch.nn.functional.normalize(means - cam, dim=-1)
    degree = degree_of(int(sh.shape[1]))
    if degree is None:
        raise ValueError(f"SH coefficients must have 3, 8 or 15 per channel, got {sh.shape[1]}")
    rgb = colors + torch.einsum("nk,nkc->nc", basis(dirs, degree), sh)
    return rgb.clamp_min(0.0)


def _band_rotation(R: np.ndarray, degree: int) -> list[np.ndarray]:
    """Per degree l = 1..degree, the (2l+1)² matrix D with c' = D c for a function rotated by R
    (orthogonal, reflections allowed): f'(d) = f(Rᵀ d). Fitted exactly by least squares on
    directions spread over the sphere (each band is closed under O(3))."""
    n = 64
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azim = math.pi * (1 + 5 ** 0.5) * i
    d = np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)], -1)
    b, b_rot = basis(d, degree), basis(d @ R, degree)
    out = []
    for l in range(1, degree + 1):
        cols = slice(l * l - 1, (l + 1) ** 2 - 1)
        D, *_ = np.linalg.lstsq(b[:, cols], b_rot[:, cols], rcond=None)
        out.append(D)
    return out


def rotate_sh(sh: Tensor, R: np.ndarray) -> Tensor:
    """SH rest coefficients (N, K, 3) of Gaussians turned by the orthogonal 3×3 `R`."""
    degree = degree_of(int(sh.shape[1]))
    if degree is None:
        raise ValueError(f"SH coefficients must have 3, 8 or 15 per channel, got {sh.shape[1]}")
    parts = []
    for l, D in enumerate(_band_rotation(np.asarray(R, dtype=np.float64), degree), start=1):
        cols = slice(l * l - 1, (l + 1) ** 2 - 1)
        parts.append(torch.einsum("ij,njc->nic", torch.as_tensor(D, dtype=sh.dtype, device=sh.device), sh[:, cols]))
    return torch.cat(parts, 1) if parts else sh


def rotation_part(A: np.ndarray) -> np.ndarray:
    """The orthogonal factor of a 3×3 matrix (polar decomposition): what turns view directions
    when an object is placed by `A`; exact for rotations, mirrors and uniform scales."""
    U, _, Vt = np.linalg.svd(np.asarray(A, dtype=np.float64))
    return U @ Vt
