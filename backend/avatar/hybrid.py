"""The hybrid avatar's networks (DreamWaltz-G): an implicit field and a deformation network.

Free Gaussians read their colour and opacity from `ImplicitField` at their *canonical* position
(the rest position skinned into the canonical pose, where the NeRF of Stage I lives): a hash
grid over a cube and the NeRF's density-and-colour MLP, whose 4 raw outputs become opacity
(sigmoid of the raw density, as in the original) and colour (sigmoid). Its parameters have the
NeRF field's names (`NeRFField.state_dict()` loads unchanged), so the 3DGS stages continue the
NeRF's field.

`DeformationNetwork` moves and rescales free Gaussians with the body pose, on top of skinning:
the hash features of the canonical position and the 63 body-pose values (axis-angles of the 21
body joints, relative to the canonical pose) go through `depth` leaky-ReLU layers of `width`,
and a linear head gives position offsets (x `offset_scale` metres, in rest space) and scale
residuals (x `scale_scale` metres). Two properties hold exactly, not approximately:

* at initialisation the head is zero, so the network is the identity for every pose;
* its value at the canonical pose is subtracted, so the canonical pose is never deformed.

The pose enters the first layer linearly, so that layer's position part is computed once per
Gaussian (`prepare`) and a frame costs one broadcast add and the remaining layers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fields.hashgrid import HashGridEncoding
from ..fields.mlp import relu_mlp, uniform_linear

POSE_VALUES = 63
CANONICAL_SNAP = 1e-5
"""Body-pose values within this (radians) of the canonical pose count as canonical: poses that
went through forward kinematics and back differ from it by float rounding only."""
MIN_SCALE = 1e-6


class NetworkSpecError(ValueError):
    """A network description that does not make a network (the message names the setting)."""


def _spec_from(cls: type, data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise NetworkSpecError(f"{what} must be an object; got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise NetworkSpecError(f"{what} has unknown settings: {', '.join(unknown)}")
    values = {}
    for name, f in names.items():
        if name not in data:
            raise NetworkSpecError(f"{what} is missing {name!r}")
        v = data[name]
        kind = type(f.default)
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if type(v) is not kind or (kind is float and not math.isfinite(v)):
            raise NetworkSpecError(f"{what}.{name} must be {kind.__name__}; got {v!r}")
        values[name] = v
    spec = cls(**values)
    spec.check(what)
    return spec


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """The implicit field's shape (the NeRF field's: METHOD.md §Representation)."""

    levels: int = 16
    features: int = 2
    log2_table: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    interpolation: str = "smoothstep"
    hidden: int = 64
    layers: int = 3

    def check(self, what: str = "field") -> None:
        limits = {"levels": (1, 32), "features": (1, 8), "log2_table": (4, 24), "base_resolution": (2, 1 << 16),
                  "finest_resolution": (2, 1 << 16), "hidden": (1, 1024), "layers": (2, 16)}
        for name, (lo, hi) in limits.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise NetworkSpecError(f"{what}.{name} must lie in [{lo}, {hi}]; got {v}")
        if self.finest_resolution < self.base_resolution:
            raise NetworkSpecError(f"{what}.finest_resolution is below its base_resolution")
        if self.interpolation not in ("linear", "smoothstep"):
            raise NetworkSpecError(f"{what}.interpolation must be linear or smoothstep; got {self.interpolation!r}")

    @property
    def out_dim(self) -> int:
        return self.levels * self.features

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, what: str = "field") -> "FieldSpec":
        return _spec_from(cls, data, what)


@dataclasses.dataclass(frozen=True)
class DeformSpec:
    """The deformation network's shape (the original's: depth 4, width 64)."""

    features: int = 32
    depth: int = 4
    width: int = 64
    offset_scale: float = 0.01
    scale_scale: float = 0.001

    def check(self, what: str = "deformation") -> None:
        for name, (lo, hi) in {"features": (1, 1024), "depth": (1, 16), "width": (1, 1024)}.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise NetworkSpecError(f"{what}.{name} must lie in [{lo}, {hi}]; got {v}")
        for name in ("offset_scale", "scale_scale"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise NetworkSpecError(f"{what}.{name} must lie in (0, 1]; got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, what: str = "deformation") -> "DeformSpec":
        return _spec_from(cls, data, what)


class ImplicitField(nn.Module):
    """Canonical position -> hash features -> (colour, opacity); see the module docstring."""

    def __init__(self, spec: FieldSpec, centre: Any, bound: float, seed: int = 0) -> None:
        super().__init__()
        spec.check()
        self.spec = spec
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).reshape(3).clone())
        self.register_buffer("bound", torch.tensor(float(bound), dtype=torch.float32))
        gen = torch.Generator().manual_seed(int(seed))
        self.encoding = HashGridEncoding(spec, gen, spec.interpolation)
        self.mlp = relu_mlp(spec.out_dim, spec.hidden, spec.layers, 4, gen)

    @classmethod
    def from_nerf(cls, nerf_field: Any) -> "ImplicitField":
        """A copy of a NeRF field (backend.train.nerf.NeRFField) of the same layout."""
        c = nerf_field.config
        spec = FieldSpec(levels=c.levels, features=c.features, log2_table=c.log2_table,
                         base_resolution=c.base_resolution,
                         finest_resolution=max(c.base_resolution, int(round(c.finest_per_bound * float(nerf_field.bound)))),
                         interpolation=c.interpolation, hidden=c.hidden, layers=c.layers)
        field = cls(spec, nerf_field.centre.detach().cpu(), float(nerf_field.bound))
        field.load_state_dict({k: v.detach().cpu() for k, v in nerf_field.state_dict().items()})
        return field.to(nerf_field.centre.device)

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        """(N, L*F) hash features of canonical positions (N, 3); outside the cube, its faces'."""
        return self.encoding((points - self.centre) / (2.0 * self.bound) + 0.5)

    def appearance(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear RGB (N, 3) and opacity (N,) from hash features."""
        raw = self.mlp(features)
        return torch.sigmoid(raw[:, 1:4]), torch.sigmoid(raw[:, 0])


class DeformationNetwork(nn.Module):
    """Hash features + body pose -> offsets and scale residuals; see the module docstring."""

    def __init__(self, spec: DeformSpec, canonical_pose: Any = None, seed: int = 0) -> None:
        super().__init__()
        spec.check()
        self.spec = spec
        pose = torch.zeros(POSE_VALUES) if canonical_pose is None else \
            torch.as_tensor(canonical_pose, dtype=torch.float32).reshape(POSE_VALUES).clone()
        self.register_buffer("canonical_pose", pose)
        gen = torch.Generator().manual_seed(int(seed))
        widths = [spec.features + POSE_VALUES] + [spec.width] * spec.depth
        self.layers = nn.ModuleList(uniform_linear(a, b, gen) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(spec.width, 6)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def relative_pose(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(..., 63) body poses minus the canonical one, snapped to exactly zero within CANONICAL_SNAP."""
        d = body_pose.reshape(*body_pose.shape[:-1], POSE_VALUES).to(self.canonical_pose.dtype) - self.canonical_pose
        return torch.where(d.abs() < CANONICAL_SNAP, torch.zeros_like(d), d)

    def _weights(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """The parameters in `dtype` (first layer split into its feature and pose parts), cast
        once and kept until a parameter changes: posing a frame casts nothing."""
        f = self.spec.features
        first = self.layers[0]
        params = [first.weight[:, :f], first.bias, first.weight[:, f:]]
        for layer in self.layers[1:]:
            params += [layer.weight, layer.bias]
        params += [self.head.weight, self.head.bias]
        if dtype == first.weight.dtype:
            return params
        key = (dtype,) + tuple((id(p), p._version) for p in self.parameters())
        cached = self.__dict__.get("_cast")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, [p.detach().to(dtype) for p in params])
            self.__dict__["_cast"] = cached
        return cached[1]

    def prepare(self, features: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-Gaussian constants: the first layer's position part (N, width) and the head's
        value at the canonical pose (N, 6), in `dtype` (default: the weights')."""
        w = self._weights(dtype or self.head.weight.dtype)
        projected = F.linear(features.to(w[0].dtype), w[0], w[1])
        return projected, self.raw(projected, torch.zeros(POSE_VALUES, device=features.device))

    def raw(self, projected: torch.Tensor, relative_pose: torch.Tensor) -> torch.Tensor:
        """The head's output (N, 6) for prepared features and a relative pose (63,); (B, N, 6)
        for a batch of poses (B, 63)."""
        w = self._weights(projected.dtype)
        pose_part = F.linear(relative_pose.to(projected.dtype), w[2])
        h = F.leaky_relu(projected + pose_part[..., None, :])
        for i in range(len(self.layers) - 1):
            h = F.leaky_relu(F.linear(h, w[3 + 2 * i], w[4 + 2 * i]))
        return F.linear(h, w[-2], w[-1])

    def deform(self, projected: torch.Tensor, canonical_raw: torch.Tensor,
               body_pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rest-space offsets (N, 3) and scale residuals (N, 3), metres, float32 (with a leading
        batch dimension for a batch of poses (B, 63))."""
        out = (self.raw(projected, self.relative_pose(body_pose)) - canonical_raw).float()
        return out[..., :3] * self.spec.offset_scale, out[..., 3:] * self.spec.scale_scale


@dataclasses.dataclass
class HybridNetworks:
    """What makes an avatar hybrid: either network may be absent (None).

    `canonical_transforms` (55, 4, 4) take rest positions into the canonical pose, where the
    field is queried; `field` gives the free Gaussians' colour and opacity there (their
    per-Gaussian values are then only a baked copy); `deformation` moves them with the pose."""

    canonical_transforms: torch.Tensor
    field: ImplicitField | None = None
    deformation: DeformationNetwork | None = None

    def __post_init__(self) -> None:
        if self.deformation is not None and self.field is None:
            raise NetworkSpecError("a deformation network needs the field (its input is the field's hash features)")
        if self.field is not None and self.deformation is not None and \
                self.deformation.spec.features != self.field.spec.out_dim:
            raise NetworkSpecError(f"the deformation network reads {self.deformation.spec.features} features; the "
                                   f"field gives {self.field.spec.out_dim}")

    def to(self, device: str | torch.device) -> "HybridNetworks":
        """On `device`; the networks are copied there (nn.Module.to would move these in place)."""
        device = torch.device(device)
        if self.canonical_transforms.device == device:
            return self

        def moved(module: nn.Module | None) -> Any:
            return None if module is None else copy.deepcopy(module).to(device)

        return HybridNetworks(self.canonical_transforms.to(device), moved(self.field), moved(self.deformation))

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.field, self.deformation) if m is not None]

    def version(self) -> tuple:
        """Changes whenever a parameter or buffer is replaced or updated in place."""
        return tuple((id(t), t._version) for m in self.modules() for t in list(m.parameters()) + list(m.buffers())) + \
            ((id(self.canonical_transforms), self.canonical_transforms._version),)


def canonical_positions(rest: torch.Tensor, skin_joints: torch.Tensor, skin_weights: torch.Tensor,
                        transforms: torch.Tensor) -> torch.Tensor:
    """Rest positions (N, 3) skinned by transforms (55, 4, 4)."""
    t = transforms[:, :3, :].reshape(-1, 12)[skin_joints]
    blended = (skin_weights[..., None] * t).sum(1).reshape(-1, 3, 4)
    return (blended[:, :, :3] * rest[:, None, :]).sum(-1) + blended[:, :, 3]


@dataclasses.dataclass
class FreeNetworkState:
    """Per free Gaussian, from the networks: colour and opacity (None without a field), the
    deformation's prepared features and canonical output (None without a deformation)."""

    colors: torch.Tensor | None
    opacities: torch.Tensor | None
    projected: torch.Tensor | None
    canonical_raw: torch.Tensor | None


def free_network_state(networks: HybridNetworks, rest: torch.Tensor, skin_joints: torch.Tensor,
                       skin_weights: torch.Tensor, dtype: torch.dtype | None = None) -> FreeNetworkState:
    """Evaluate the field once at the free Gaussians' canonical positions (differentiable)."""
    if networks.field is None:
        return FreeNetworkState(None, None, None, None)
    canon = canonical_positions(rest, skin_joints, skin_weights, networks.canonical_transforms)
    features = networks.field.encode(canon)
    colors, opacities = networks.field.appearance(features)
    projected = canonical_raw = None
    if networks.deformation is not None:
        projected, canonical_raw = networks.deformation.prepare(features, dtype)
    return FreeNetworkState(colors, opacities, projected, canonical_raw)


__all__ = ["FieldSpec", "DeformSpec", "ImplicitField", "DeformationNetwork", "HybridNetworks", "FreeNetworkState",
           "NetworkSpecError", "canonical_positions", "free_network_state", "MIN_SCALE"]
