"""Appearance: per-Gaussian colours, or a colour field on a multiresolution hash grid.

The field maps a Gaussian's rest-space position to linear RGB: an Instant-NGP hash encoding
(L levels of 2^T-entry tables of F features, resolutions growing geometrically from `base` to
`finest` over the body's padded bounding box, trilinear interpolation, levels coarse enough
to fit their table indexed densely) followed by a small MLP and a sigmoid. It uses
tiny-cuda-nn when that is importable and the tensors are on CUDA, and the pure-PyTorch
implementation below otherwise; both give the same kind of field, not bit-identical values,
so a checkpoint records which one it holds. Avatars store per-Gaussian colours either way:
the field is baked when the avatar is saved.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)


@dataclasses.dataclass
class HashGridConfig:
    levels: int = 16
    features: int = 2
    log2_table: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    hidden: int = 64
    hidden_layers: int = 1
    padding: float = 0.3          # metres around the rest body's bounding box
    backend: str = "auto"         # auto | torch | tcnn

    def per_level_scale(self) -> float:
        if self.levels == 1:
            return 1.0
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.levels - 1))


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return torch.cuda.is_available()


class HashGridEncoding(nn.Module):
    """Pure-PyTorch multiresolution hash encoding of points in [0, 1]^3 -> (N, L*F)."""

    def __init__(self, config: HashGridConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        c = config
        self.levels, self.features = c.levels, c.features
        self.table = 2 ** c.log2_table
        scale = c.per_level_scale()
        res = [int(math.floor(c.base_resolution * scale ** level)) for level in range(c.levels)]
        self.register_buffer("resolution", torch.tensor(res, dtype=torch.long), persistent=False)
        dense = [(r + 1) ** 3 <= self.table for r in res]
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        init = torch.rand(c.levels, self.table, c.features, generator=generator) * 2e-4 - 1e-4
        self.embeddings = nn.Parameter(init)
        corners = torch.tensor([[(i >> 0) & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=torch.long)
        self.register_buffer("corners", corners, persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES, dtype=torch.long), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        res = self.resolution.to(x.dtype)                                     # (L,)
        pos = x.clamp(0.0, 1.0)[:, None, :] * res[None, :, None]             # (N,L,3)
        base = pos.floor().long()
        frac = pos - base.to(x.dtype)
        corner = base[:, :, None, :] + self.corners[None, None]               # (N,L,8,3)
        stride = (self.resolution + 1)[None, :, None]
        dense_idx = corner[..., 0] + corner[..., 1] * stride + corner[..., 2] * stride * stride
        h = corner * self.primes
        hashed = torch.bitwise_xor(torch.bitwise_xor(h[..., 0], h[..., 1]), h[..., 2])
        idx = torch.where(self.dense[None, :, None], dense_idx, hashed) % self.table    # (N,L,8)
        level = torch.arange(self.levels, device=x.device)[None, :, None]
        feats = self.embeddings[level, idx]                                   # (N,L,8,F)
        c = self.corners.to(x.dtype)[None, None]                              # (1,1,8,3)
        f = frac[:, :, None, :]
        w = (c * f + (1 - c) * (1 - f)).prod(-1)                              # (N,L,8)
        return (w[..., None] * feats).sum(2).reshape(n, -1)


class ColorField(nn.Module):
    """Rest-space position -> linear RGB in (0, 1)."""

    def __init__(self, config: HashGridConfig, bbox_min: torch.Tensor, bbox_max: torch.Tensor,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__()
        self.config = config
        pad = config.padding
        self.register_buffer("lo", bbox_min.detach().float().cpu() - pad)
        self.register_buffer("hi", bbox_max.detach().float().cpu() + pad)
        backend = config.backend
        if backend == "auto":
            backend = "tcnn" if (tcnn_available() and torch.device(device).type == "cuda") else "torch"
        if backend == "tcnn" and not tcnn_available():
            raise RuntimeError("the hash-grid backend 'tcnn' was asked for, but tinycudann is not importable "
                               "(or there is no CUDA GPU)")
        self.backend = backend
        gen = torch.Generator().manual_seed(seed)
        if backend == "tcnn":
            import tinycudann as tcnn

            self.net = tcnn.NetworkWithInputEncoding(
                n_input_dims=3, n_output_dims=3,
                encoding_config={"otype": "HashGrid", "n_levels": config.levels,
                                 "n_features_per_level": config.features,
                                 "log2_hashmap_size": config.log2_table,
                                 "base_resolution": config.base_resolution,
                                 "per_level_scale": config.per_level_scale()},
                network_config={"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                                 "n_neurons": config.hidden, "n_hidden_layers": config.hidden_layers},
                seed=seed)
        else:
            self.encoding = HashGridEncoding(config, gen)
            layers: list[nn.Module] = []
            width = self.encoding.out_dim
            for _ in range(config.hidden_layers):
                lin = nn.Linear(width, config.hidden)
                _init_linear(lin, gen)
                layers += [lin, nn.ReLU()]
                width = config.hidden
            out = nn.Linear(width, 3)
            _init_linear(out, gen)
            layers.append(out)
            self.mlp = nn.Sequential(*layers)
        self.to(device)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = (positions - self.lo) / (self.hi - self.lo)
        if self.backend == "tcnn":
            out = self.net(x.clamp(0, 1)).float()
        else:
            out = self.mlp(self.encoding(x))
        return torch.sigmoid(out)


def _init_linear(layer: nn.Linear, gen: torch.Generator) -> None:
    bound = 1.0 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(layer.bias.shape, generator=gen) * 2 * bound - bound)
