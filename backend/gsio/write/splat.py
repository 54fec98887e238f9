"""antimatter15 ``.splat`` (see the reader for the layout): the DC colour clipped to [0, 1] and
quantised to 8 bits, SH dropped (the format has none). Records are sorted largest and most
opaque first, as antimatter15's converter does, so progressive viewers show the bulk early."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...files import atomic_path
from ..read.splat import RECORD
from ..splats import Splats


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def write(path: Path, splats: Splats) -> Path:
    order = np.argsort(-(np.prod(splats.scales, axis=1) * splats.opacities), kind="stable")
    rec = np.empty(len(splats), dtype=RECORD)
    rec["position"] = splats.means[order]
    rec["scale"] = splats.scales[order]
    rec["rgba"] = _u8(np.c_[np.clip(splats.colors[order], 0.0, 1.0), splats.opacities[order]] * 255.0)
    rec["rot"] = _u8(splats.unit_quats()[order] * 128.0 + 128.0)
    with atomic_path(path, suffix=".splat") as tmp:
        tmp.write_bytes(rec.tobytes())
    return path
