"""Standard 3DGS PLY files for the rest of the backend: `read_ply` / `write_ply` over
``backend.gsio`` (which reads every supported 3DGS format and writes the full INRIA layout).

``write_ply`` writes binary little-endian float32 vertex properties in the INRIA order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0..44 opacity scale_0..2 rot_0..3

(opacity a logit, scales natural logs, rot a wxyz quaternion, ``f_dc = (rgb - 0.5) / C0``,
f_rest zero where the Gaussians have no higher SH), which the 3DGS reference loader and SIBR
open. ``read_ply`` returns a GaussianSet whose SH (degree <= 3) is kept for the renderer.
"""

from __future__ import annotations

from pathlib import Path

from .gsio import GaussianFileError, Splats, read_gaussians, write_gaussians
from .gsio.inria import REQUIRED, properties
from .render.sh import C0 as SH_C0

PlyError = GaussianFileError
PROPERTIES = properties(3)

__all__ = ["PlyError", "PROPERTIES", "REQUIRED", "SH_C0", "read_ply", "write_ply"]


def write_ply(path, gaussians, normals=None, sh_degree: int | None = None, up: str = "y") -> Path:
    """Write a GaussianSet as an INRIA 3DGS PLY (SH degree 3 unless the data has none and
    `sh_degree` says less); returns the path."""
    return write_gaussians(Path(path), Splats.from_gaussian_set(gaussians, up=up), "ply",
                           normals=None if normals is None else normals.detach().cpu().numpy()
                           if hasattr(normals, "detach") else normals, sh_degree=sh_degree)


def read_ply(path, device=None, dtype=None):
    """Any supported 3DGS file (despite the name) as a GaussianSet, float32 unless `dtype`."""
    return read_gaussians(path).to_gaussian_set(device, dtype)
