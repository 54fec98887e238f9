"""antimatter15 ``.splat``: headerless 32-byte records (position 3×f32, linear scale 3×f32,
RGBA 4×u8 with A the opacity, rotation wxyz 4×u8 as q·128 + 128); no SH. Converted from INRIA
PLYs without a change of frame, so "-y" up like them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GaussianFileError
from ..splats import Splats

RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
NATIVE_UP = "-y"


def read(path: Path, data: bytes) -> Splats:
    if len(data) % RECORD.itemsize:
        raise GaussianFileError(path, None, f"truncated or not a .splat file: {len(data)} bytes is not a whole "
                                f"number of {RECORD.itemsize}-byte records")
    rec = np.frombuffer(data, dtype=RECORD)
    for name in ("position", "scale"):
        bad = ~np.isfinite(rec[name]).all(1)
        if bad.any():
            raise GaussianFileError(path, name, f"holds NaN or infinite values (first at record {int(np.argmax(bad))})")
    if (rec["scale"] < 0).any():
        raise GaussianFileError(path, "scale", f"holds negative values (first at record {int(np.argmax((rec['scale'] < 0).any(1)))})")
    rgba = rec["rgba"].astype(np.float64) / 255.0
    return Splats(means=rec["position"].astype(np.float64), quats=(rec["rot"].astype(np.float64) - 128.0) / 128.0,
                  scales=rec["scale"].astype(np.float64), opacities=rgba[:, 3], colors=rgba[:, :3], up=NATIVE_UP)
