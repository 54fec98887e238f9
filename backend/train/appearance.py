"""Appearance: per-Gaussian colours, or a colour field on a multiresolution hash grid.

The field maps a Gaussian's rest-space position to linear RGB: an Instant-NGP hash encoding
(`hashgrid.py`, over the body's padded bounding box) followed by a small MLP and a sigmoid. It
uses tiny-cuda-nn's fused network when that is importable and the tensors are on CUDA, and the
pure-PyTorch encoding + MLP otherwise; their parameters are laid out differently, so a
checkpoint records which one it holds. Avatars store per-Gaussian colours either way:
the field is baked when the avatar is saved.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .hashgrid import HashGridEncoding, per_level_scale, tcnn_available, tcnn_encoding_config

__all__ = ["ColorField", "HashGridConfig", "HashGridEncoding", "tcnn_available"]


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
        return per_level_scale(self)


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
                encoding_config=tcnn_encoding_config(config),
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
