"""The NeRF's field: canonical position -> density and colour.

A multiresolution hash encoding of the position over a cube around the canonical body (centre
`centre`, half-side `bound` metres) feeds one MLP (3 layers of 64 by default) whose 4 outputs
are the raw density and the colour logits, as in the original's shared-MLP NeRF. Density is
`trunc_exp(raw)` (exp, with its gradient clamped at exp(15)); colour is `sigmoid(logits)`,
linear RGB.

Querying (the API the NeRF stage, the conversion to Gaussians and a hybrid avatar use):

    field = NeRFField(config, centre, bound, device)
    sigma, rgb = field.query(points)      # points (N, 3) in canonical world space, metres
    raw = field.raw(points)               # (N, 4): raw density, colour logits (the sigma-prior's input)
    features = field.encode(points)       # (N, L*F) hash features (a hybrid avatar's MLP input)

Points outside the cube read the cube's faces (clamped). `state_dict()` holds the grid, the MLP
and the cube; it is the same for both encoding backends (pure PyTorch, or tiny-cuda-nn's
`HashGrid` on CUDA, or the same maths as fused kernels, `fields/fused_hashgrid.py`), so a
field made on one machine loads on another.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...fields.fused_hashgrid import fused_available
from ...fields.hashgrid import HashGridEncoding, tcnn_available, tcnn_encoding_config
from ...fields.mlp import relu_mlp
from .config import NeRFConfig


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) whose gradient is that of exp(min(x, 15)): densities may grow, updates stay sane."""
    return _TruncExp.apply(x)


class _GridShape:
    def __init__(self, config: NeRFConfig, bound: float) -> None:
        self.levels, self.features, self.log2_table = config.levels, config.features, config.log2_table
        self.base_resolution = config.base_resolution
        self.finest_resolution = max(config.base_resolution, int(round(config.finest_per_bound * bound)))


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn's HashGrid on the same flat `embeddings` table as `HashGridEncoding`."""

    def __init__(self, shape: _GridShape, interpolation: str, embeddings: torch.Tensor) -> None:
        super().__init__()
        import tinycudann as tcnn

        # kept out of the module tree: its own parameters are replaced by `embeddings`
        self.__dict__["_tcnn"] = tcnn.Encoding(3, tcnn_encoding_config(shape, interpolation), dtype=torch.float32)
        if self._tcnn.params.numel() != embeddings.numel():
            raise RuntimeError(f"tiny-cuda-nn lays out {self._tcnn.params.numel()} grid parameters, the PyTorch "
                               f"encoding {embeddings.numel()}; this tiny-cuda-nn version is not supported")
        self.embeddings = nn.Parameter(embeddings.detach().clone())
        self.out_dim = shape.levels * shape.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from tinycudann.modules import _module_function

        enc = self._tcnn
        params = self.embeddings.reshape(-1).contiguous()
        return _module_function.apply(enc.native_tcnn_module, x.clamp(0.0, 1.0).contiguous(), params,
                                      enc.loss_scale).float()


def resolve_backend(name: str, device: torch.device) -> str:
    """auto: tiny-cuda-nn's encoding, else the fused kernel (both CUDA only), else pure PyTorch."""
    if name == "auto":
        if device.type == "cuda" and tcnn_available():
            return "tcnn"
        return "fused" if device.type == "cuda" and fused_available(device)[0] else "torch"
    if name == "tcnn" and not (device.type == "cuda" and tcnn_available()):
        raise RuntimeError("the NeRF backend 'tcnn' was asked for, but tinycudann is not importable "
                           "(or the field is not on a CUDA GPU)")
    if name == "fused":
        ok, reason = fused_available(device)
        if not ok:
            raise RuntimeError(f"the NeRF backend 'fused' was asked for, but its kernel is not available: {reason}")
    return name


class NeRFField(nn.Module):
    """Hash-grid density + colour field over a cube (see the module docstring)."""

    def __init__(self, config: NeRFConfig, centre: Any, bound: float, device: torch.device | str = "cpu",
                 seed: int = 0) -> None:
        super().__init__()
        self.config = config
        device = torch.device(device)
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).reshape(3).clone())
        self.register_buffer("bound", torch.tensor(float(bound), dtype=torch.float32))
        shape = _GridShape(config, float(bound))
        gen = torch.Generator().manual_seed(int(seed))
        self.backend = resolve_backend(config.backend, device)
        grid = HashGridEncoding(shape, gen, config.interpolation, kernel="fused" if self.backend == "fused" else "torch")
        self.encoding: nn.Module = grid if self.backend in ("torch", "fused") else \
            TcnnHashGrid(shape, config.interpolation, grid.embeddings.data.to(device))
        self.mlp = relu_mlp(grid.out_dim, config.hidden, config.layers, 4, gen)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.centre.device

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """Canonical positions -> the unit cube of the encoding."""
        return (points - self.centre) / (2.0 * self.bound) + 0.5

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoding(self.normalise(points))

    def raw(self, points: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(points))

    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (N,) per metre and linear RGB (N, 3) at canonical positions (N, 3)."""
        out = self.raw(points)
        return trunc_exp(out[:, 0]), torch.sigmoid(out[:, 1:])

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return trunc_exp(self.raw(points)[:, 0])

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.encoding.embeddings]

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.mlp.parameters())
