"""The hybrid Gaussian avatar: free Gaussians skinned to joints, and Gaussians bound to triangles.

Free Gaussians (body, clothes, hair) live in the avatar's rest space and follow the skeleton by
linear blend skinning with up to four joints each. Mesh-bound Gaussians (hands, face) sit on
body-model triangles by barycentric coordinates, so expressions and pose correctives, which move
the surface itself, move them too.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .hybrid import HybridNetworks

SKIN_INFLUENCES = 4


@dataclasses.dataclass
class FreeGaussians:
    means: torch.Tensor           # (N, 3) rest-space positions
    quats: torch.Tensor           # (N, 4) wxyz, rest space
    log_scales: torch.Tensor      # (N, 3)
    opacity_logits: torch.Tensor  # (N,)
    colors: torch.Tensor          # (N, 3) linear RGB
    skin_joints: torch.Tensor     # (N, 4) int64 joint indices
    skin_weights: torch.Tensor    # (N, 4) summing to 1

    def __len__(self) -> int:
        return int(self.means.shape[0])


@dataclasses.dataclass
class BoundGaussians:
    faces: torch.Tensor           # (M,) int64 triangle index into the body model's faces
    barycentric: torch.Tensor     # (M, 3)
    offsets: torch.Tensor         # (M, 3) in the triangle's frame (edge, bitangent, normal)
    quats: torch.Tensor           # (M, 4) wxyz relative to the triangle's frame
    log_scales: torch.Tensor      # (M, 3)
    opacity_logits: torch.Tensor  # (M,)
    colors: torch.Tensor          # (M, 3)

    def __len__(self) -> int:
        return int(self.faces.shape[0])


@dataclasses.dataclass
class AvatarMeta:
    """What avatar.json records besides the tensors (prompt, seed, settings, provenance)."""

    name: str = "avatar"
    prompt: str = ""
    seed: int = 0
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Avatar:
    """An avatar: its body model, the shape it was made with, its Gaussians and, for a hybrid
    avatar, the networks that give the free Gaussians colour, opacity and pose-dependent
    deformation (hybrid.py)."""

    body: Any                     # backend.body.BodyModel
    betas: torch.Tensor           # (num_betas,)
    free: FreeGaussians
    bound: BoundGaussians
    meta: AvatarMeta = dataclasses.field(default_factory=AvatarMeta)
    networks: "HybridNetworks | None" = None
    cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_gaussians(self) -> int:
        return len(self.free) + len(self.bound)

    @property
    def device(self) -> torch.device:
        return self.free.means.device

    def to(self, device: str | torch.device) -> "Avatar":
        move = lambda obj: type(obj)(**{f.name: getattr(obj, f.name).to(device)  # noqa: E731
                                        for f in dataclasses.fields(obj)})
        self.body.to(device)
        networks = None if self.networks is None else self.networks.to(device)
        return Avatar(self.body, self.betas.to(device), move(self.free), move(self.bound), self.meta, networks)
