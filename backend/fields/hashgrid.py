"""The multiresolution hash encoding (Instant-NGP), in pure PyTorch, laid out as tiny-cuda-nn's.

Points in [0, 1]^3 -> (N, L*F) features: L levels, level l a grid whose vertex count per axis
grows geometrically from `base_resolution` to `finest_resolution`; each point reads the 8
vertices of its cell, by dense index on levels whose grid fits the level's table and by the
coherent prime hash on finer ones, and interpolates them trilinearly (or with smoothstep
weights). The indexing, the per-level table sizes and the flat parameter order are those of
tiny-cuda-nn's `HashGrid` (scale = 2^(l log2 b) base - 1, resolution = ceil(scale) + 1,
position = x scale + 0.5, tables of min(2^T, resolution^3 rounded up to 8) entries), so the
same parameters give the same features with either implementation (tested on CUDA where
tiny-cuda-nn is installed). Used by the colour field (`train/appearance.py`), the NeRF
(`train/nerf/field.py`) and the hybrid avatar's field (`avatar/hybrid.py`).

The same maths runs as fused kernels (`fused_hashgrid.py`) where they build: by default
(`kernel="auto"`) on CUDA tensors, the PyTorch code here on the others and where the kernel
cannot be built.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .fused_hashgrid import Layout, fused_available, fused_encode

PRIMES = (1, 2654435761, 805459861)
INTERPOLATIONS = ("linear", "smoothstep")
KERNELS = ("auto", "torch", "fused")


class GridShape(Protocol):
    """What the encoding needs from a config (HashGridConfig, NeRFFieldConfig)."""

    levels: int
    features: int
    log2_table: int
    base_resolution: int
    finest_resolution: int


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return torch.cuda.is_available()


def per_level_scale(shape: GridShape) -> float:
    if shape.levels == 1:
        return 1.0
    return math.exp(math.log(shape.finest_resolution / shape.base_resolution) / (shape.levels - 1))


def tcnn_encoding_config(shape: GridShape, interpolation: str = "linear") -> dict:
    """The tiny-cuda-nn encoding config of the same grid."""
    return {"otype": "HashGrid", "n_levels": shape.levels, "n_features_per_level": shape.features,
            "log2_hashmap_size": shape.log2_table, "base_resolution": shape.base_resolution,
            "per_level_scale": per_level_scale(shape),
            "interpolation": "Smoothstep" if interpolation == "smoothstep" else "Linear"}


def _level_layout(shape: GridShape) -> tuple[list[float], list[int], list[int]]:
    """Per level: scale, vertices per axis and table entries (tiny-cuda-nn's formulas, in float32
    where it computes in float32)."""
    log2_scale = torch.tensor(math.log2(per_level_scale(shape)), dtype=torch.float32)
    table = 2 ** shape.log2_table
    scales, res, sizes = [], [], []
    for level in range(shape.levels):
        s = float(torch.exp2(torch.tensor(float(level), dtype=torch.float32) * log2_scale) * shape.base_resolution - 1.0)
        r = int(math.ceil(s)) + 1
        scales.append(s)
        res.append(r)
        sizes.append(min(table, -(-(r ** 3) // 8) * 8))
    return scales, res, sizes


def table_entries(shape: GridShape) -> int:
    """Rows of the flat table of all levels (what `HashGridEncoding.embeddings` holds)."""
    return sum(_level_layout(shape)[2])


class HashGridEncoding(nn.Module):
    """Pure-PyTorch multiresolution hash encoding of points in [0, 1]^3 -> (N, L*F).

    `embeddings` is one flat (entries, F) table, the levels one after another (tiny-cuda-nn's
    parameter order), initialised uniformly in +-1e-4 as there."""

    def __init__(self, shape: GridShape, generator: torch.Generator | None = None,
                 interpolation: str = "linear", kernel: str = "auto") -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
        if kernel not in KERNELS:
            raise ValueError(f"hash-grid kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
        self.kernel = kernel
        self.levels, self.features = int(shape.levels), int(shape.features)
        self.interpolation = interpolation
        scales, res, sizes = _level_layout(shape)
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        self.layout = Layout(self.features, int(shape.log2_table), interpolation == "smoothstep", tuple(scales),
                             tuple(res), tuple(sizes), tuple(offsets[:-1]), tuple(r ** 3 <= n for r, n in zip(res, sizes)))
        self.table = 1 << self.layout.log2_table
        lay = self.layout   # the PyTorch path's copies, on the module's device
        self.register_buffer("scale", torch.tensor(lay.scale, dtype=torch.float32), persistent=False)
        self.register_buffer("resolution", torch.tensor(lay.resolution, dtype=torch.long), persistent=False)
        self.register_buffer("size", torch.tensor(lay.size, dtype=torch.long), persistent=False)
        self.register_buffer("offset", torch.tensor(lay.offset, dtype=torch.long), persistent=False)
        self.register_buffer("dense", torch.tensor(lay.dense), persistent=False)
        init = torch.rand(offsets[-1], self.features, generator=generator) * 2e-4 - 1e-4
        self.embeddings = nn.Parameter(init)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def indices_and_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat table rows (N, L, 8) and interpolation weights (N, L, 8) of points (N, 3); corner
        i is (i & 1, i >> 1 & 1, i >> 2 & 1) along (x, y, z)."""
        n = x.shape[0]
        pos = x.float().clamp(0.0, 1.0)[:, None, :] * self.scale[None, :, None] + 0.5   # (N,L,3)
        base = pos.floor()
        frac = pos - base
        if self.interpolation == "smoothstep":
            frac = frac * frac * (3.0 - 2.0 * frac)
        lo = base.long()
        ax = torch.stack([lo, lo + 1], -1)                                            # (N,L,3,2)
        res = self.resolution[None, :, None]
        dx, dy, dz = ax[:, :, 0], ax[:, :, 1] * res, ax[:, :, 2] * (res * res)
        dense = dx[..., None, None, :] + dy[..., None, :, None] + dz[..., :, None, None]   # (N,L,2,2,2) z,y,x
        dense = dense % self.size[None, :, None, None, None]   # the +1 corner of the last cell wraps, as there
        hx, hy, hz = ax[:, :, 0], ax[:, :, 1] * PRIMES[1], ax[:, :, 2] * PRIMES[2]
        hashed = torch.bitwise_xor(torch.bitwise_xor(hx[..., None, None, :], hy[..., None, :, None]),
                                   hz[..., :, None, None]) & (self.table - 1)
        idx = torch.where(self.dense[None, :, None, None, None], dense, hashed).reshape(n, self.levels, 8)
        wt = torch.stack([1.0 - frac, frac], -1)                                      # (N,L,3,2)
        w = (wt[:, :, 0, None, None, :] * wt[:, :, 1, None, :, None] * wt[:, :, 2, :, None, None])
        return idx + self.offset[None, :, None], w.reshape(n, self.levels, 8)

    def uses_fused(self, device: torch.device) -> bool:
        """Whether points on `device` go through the fused kernel."""
        if self.kernel == "auto":
            return device.type == "cuda" and fused_available(device)[0]
        return self.kernel == "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_fused(x.device):
            return fused_encode(x, self.embeddings, self.layout)
        n = x.shape[0]
        idx, w = self.indices_and_weights(x)
        feats = F.embedding(idx, self.embeddings)                                     # (N,L,8,F)
        return (w[..., None] * feats).sum(2).reshape(n, self.out_dim)
