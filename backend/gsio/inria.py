"""What the INRIA layout (the 3DGS paper's ``save_ply``) stores, shared by its reader and
writer: property names and the stored encodings (logit opacity, log scales, SH DC)."""

from __future__ import annotations

from ..render.sh import C0

BASE = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
TAIL = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
REQUIRED = tuple(p for p in BASE + TAIL if p not in ("nx", "ny", "nz"))
UP_COMMENT = "dreamwaltz up_axis="
NATIVE_UP = "-y"  # COLMAP's frame (y down), which captures trained on COLMAP poses keep

# opacities are clipped into [OPACITY_EPS, 1 - OPACITY_EPS] before the logit, and scales below
# SCALE_MIN raised to it before the log, so that the file holds finite numbers
OPACITY_EPS = 1e-6
SCALE_MIN = 1e-10


def properties(sh_degree: int) -> tuple[str, ...]:
    """The INRIA order: x y z nx ny nz f_dc_0..2 f_rest_0.. opacity scale_0..2 rot_0..3."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return BASE + tuple(f"f_rest_{i}" for i in range(rest)) + TAIL


def up_from_comments(comments: list[str], default: str = NATIVE_UP) -> str:
    for c in comments:
        if c.startswith(UP_COMMENT) and c[len(UP_COMMENT):] in ("y", "-y", "z"):
            return c[len(UP_COMMENT):]
    return default


__all__ = ["C0", "BASE", "TAIL", "REQUIRED", "properties", "up_from_comments"]
