"""The hybrid avatar in training (METHOD.md §Representation; its networks: avatar/hybrid.py).

After the NeRF stages the free Gaussians have no colour or opacity of their own: a copy of the
NeRF's field gives both at their canonical positions and goes on training with them (Adam, the
grid at `lr.hashgrid`, the MLP at `lr.mlp`, as the original's 3DGS stages), and colours the
mesh-bound Gaussians too. The deformation network starts at zero and trains only in the stages
whose batches draw random poses (`deform_poses`); until its first such stage it is left out of
posing, which changes nothing (it is exactly the identity until trained) and saves its cost.

The mesh-bound Gaussians, with `paper_bound`, are the original's (avatar/mesh_bound.py): the
trainer learns their barycentric weights and their two clamped scale factors only.

The trainer holds one `HybridTraining`; it asks it for its optimizer groups, the networks to
pose with at a stage, the learning rates per stage, its state for checkpoints, and the
networks to save.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..avatar.hybrid import DeformationNetwork, DeformSpec, HybridNetworks, ImplicitField
from ..avatar.mesh_bound import PaperBound, paper_bound

DEFORM_GROUP = "hybrid.deformation"


@dataclasses.dataclass
class HybridConfig:
    enabled: bool | None = None           # colour and opacity from the NeRF's field (needs the NeRF stages);
                                          # None: the recipe's (dreamwaltz-g with its NeRF stages)
    deformation: bool = True              # the pose-dependent deformation network (with enabled)
    deform_poses: tuple[str, ...] = ("random", "prior")   # it trains in stages drawing these pose modes
    depth: int = 4                        # its layers ...
    width: int = 64                       # ... and their width (the original's)
    offset_scale: float = 0.01            # metres per unit of its position output
    scale_scale: float = 0.001            # metres per unit of its scale output
    paper_bound: bool = True              # mesh-bound Gaussians as the original's (with enabled)

    def __post_init__(self) -> None:
        self.deform_poses = tuple(self.deform_poses)
        DeformSpec(depth=self.depth, width=self.width, offset_scale=self.offset_scale,
                   scale_scale=self.scale_scale).check("hybrid")


def _accelerated(field: ImplicitField) -> ImplicitField:
    """On CUDA with tiny-cuda-nn, the field's grid runs as its HashGrid (same parameters, same
    features: fields/hashgrid.py), as the NeRF's does."""
    from ..fields.hashgrid import tcnn_available

    if field.centre.is_cuda and tcnn_available():
        from .nerf.field import TcnnHashGrid

        field.encoding = TcnnHashGrid(field.spec, field.spec.interpolation, field.encoding.embeddings.data)
    return field


class HybridTraining:
    """A hybrid avatar's networks while the 3DGS stages train them (see the module docstring)."""

    def __init__(self, config: HybridConfig, networks: HybridNetworks) -> None:
        self.config = config
        self.networks = networks
        self.deformation_trained = False

    @classmethod
    def from_nerf(cls, config: HybridConfig, nerf_stage: Any, canonical_body_pose: Any) -> "HybridTraining":
        """From a NeRF stage (train/nerf: its field and canonical pose) and the canonical body
        pose (63 values) the deformation is relative to."""
        field = _accelerated(ImplicitField.from_nerf(nerf_stage.field))
        device = field.centre.device
        deformation = None
        if config.deformation:
            spec = DeformSpec(features=field.spec.out_dim, depth=config.depth, width=config.width,
                              offset_scale=config.offset_scale, scale_scale=config.scale_scale)
            deformation = DeformationNetwork(spec, torch.as_tensor(canonical_body_pose, dtype=torch.float32).reshape(-1),
                                             seed=nerf_stage.seed).to(device)
        transforms = nerf_stage.canonical.transforms.detach().float().reshape(55, 4, 4).to(device)
        return cls(config, HybridNetworks(transforms, field, deformation))

    # ---- optimisation ------------------------------------------------------------------------
    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The networks' learnable tensors by name (for the trainer's gradient exchange)."""
        return {f"hybrid.{name}.{k}": v for name, module in (("field", self.networks.field),
                                                             ("deformation", self.networks.deformation))
                if module is not None for k, v in module.named_parameters()}

    def param_groups(self, lr: Any) -> list[dict[str, Any]]:
        field = self.networks.field
        groups = [{"params": [field.encoding.embeddings], "lr": lr.hashgrid, "name": "hybrid.grid"},
                  {"params": list(field.mlp.parameters()), "lr": lr.mlp, "name": "hybrid.field"}]
        if self.networks.deformation is not None:
            groups.append({"params": list(self.networks.deformation.parameters()), "lr": lr.mlp, "name": DEFORM_GROUP})
        for g in groups:
            g["base_lr"] = g["lr"]
        return groups

    def trains_deformation(self, stage: Any) -> bool:
        return self.networks.deformation is not None and stage.poses in self.config.deform_poses

    def set_lrs(self, optimizer: torch.optim.Optimizer, stage: Any) -> None:
        """The deformation network's rate is zero outside its stages (Adam then leaves it as is)."""
        train = self.trains_deformation(stage)
        self.deformation_trained |= train
        for g in optimizer.param_groups:
            if g.get("name") == DEFORM_GROUP:
                g["lr"] = g["base_lr"] if train else 0.0

    def networks_for(self, stage: Any) -> HybridNetworks:
        """The networks to pose with in `stage`: without the deformation before it first trains."""
        if self.networks.deformation is None or self.deformation_trained or self.trains_deformation(stage):
            return self.networks
        return dataclasses.replace(self.networks, deformation=None)

    # ---- the trainer's tensors and the avatar it poses -------------------------------------------
    def trainer_tensors(self, avatar: Any, body: Any, betas: torch.Tensor,
                        expression: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The learnable tensors and fixed buffers of `avatar`'s Gaussians (the converted NeRF):
        the free Gaussians' geometry (their colour and opacity are the field's), and the
        mesh-bound Gaussians as the original's (`paper_bound`) or as they are."""
        f, b = avatar.free, avatar.bound
        params = {"free.means": f.means, "free.quats": f.quats, "free.log_scales": f.log_scales}
        buffers = {"free.skin_joints": f.skin_joints, "free.skin_weights": f.skin_weights}
        if self.config.paper_bound:
            paper = paper_bound_tensors(body, betas, expression)
            params.update({k: paper[k] for k in BOUND_PARAMS})
            buffers.update({k: paper[k] for k in BOUND_BUFFERS})
        else:
            params.update({"bound.offsets": b.offsets, "bound.quats": b.quats, "bound.log_scales": b.log_scales,
                           "bound.opacity_logits": b.opacity_logits})
            buffers.update({"bound.faces": b.faces, "bound.barycentric": b.barycentric, "bound.colors": b.colors})
        return params, buffers

    def avatar(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], body: Any,
               betas: torch.Tensor, stage: Any, meta: Any = None, cache: dict | None = None) -> Any:
        """The avatar to pose at `stage` (differentiable in the parameters and the networks).
        `cache` keeps the body's rest state across steps; the values posing caches by tensor
        identity are dropped from it, since the mesh-bound tensors here are new every call."""
        from ..avatar import Avatar, AvatarMeta, BoundGaussians, FreeGaussians

        means = params["free.means"]
        n = len(means)
        unused = torch.zeros(n, device=means.device)   # colour and opacity: the field's
        free = FreeGaussians(means=means, quats=params["free.quats"], log_scales=params["free.log_scales"],
                             opacity_logits=unused, colors=unused[:, None].expand(n, 3),
                             skin_joints=buffers["free.skin_joints"], skin_weights=buffers["free.skin_weights"])
        tensors = {**params, **buffers}
        if self.config.paper_bound:
            bound = paper_bound_from(tensors).gaussians()
        else:
            bound = BoundGaussians(faces=tensors["bound.faces"], barycentric=tensors["bound.barycentric"],
                                   offsets=tensors["bound.offsets"], quats=tensors["bound.quats"],
                                   log_scales=tensors["bound.log_scales"], opacity_logits=tensors["bound.opacity_logits"],
                                   colors=tensors["bound.colors"])
        avatar = Avatar(body=body, betas=betas, free=free, bound=bound, meta=meta or AvatarMeta(name="training"),
                        networks=self.networks_for(stage))
        if cache is not None:
            for key in ("free_constants", "bound_constants", "graphs"):
                cache.pop(key, None)
            avatar.cache = cache
        return avatar

    @torch.no_grad()
    def export_avatar(self, avatar: Any, meta: Any) -> Any:
        """`avatar` (this training's, see `avatar`) detached with normalised rotations and the
        networks' copies; saving bakes its per-Gaussian colours and opacities from the field."""
        import torch.nn.functional as F

        def det(t: torch.Tensor) -> torch.Tensor:
            return t.detach().clone()

        f, b = avatar.free, avatar.bound
        free = dataclasses.replace(f, means=det(f.means), quats=F.normalize(det(f.quats), dim=-1),
                                   log_scales=det(f.log_scales), opacity_logits=det(f.opacity_logits),
                                   colors=det(f.colors), skin_joints=det(f.skin_joints), skin_weights=det(f.skin_weights))
        bound = dataclasses.replace(b, **{k: det(getattr(b, k)) for k in ("faces", "barycentric", "offsets", "log_scales",
                                                                          "opacity_logits", "colors")},
                                    quats=F.normalize(det(b.quats), dim=-1))
        return dataclasses.replace(avatar, betas=det(avatar.betas), free=free, bound=bound, meta=meta,
                                   networks=self.export(), cache={})

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The networks' shapes and values (enough for `from_state`)."""
        n = self.networks
        return {"field_spec": n.field.spec.to_dict(),
                "field": {k: v.detach().clone() for k, v in n.field.state_dict().items()},
                "deformation_spec": None if n.deformation is None else n.deformation.spec.to_dict(),
                "deformation": None if n.deformation is None else
                {k: v.detach().clone() for k, v in n.deformation.state_dict().items()},
                "canonical_transforms": n.canonical_transforms.detach().clone(),
                "deformation_trained": self.deformation_trained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = self.networks
        if (state["deformation"] is None) != (n.deformation is None):
            raise ValueError("the checkpoint's hybrid avatar has a deformation network where this run has none, or "
                             "the other way round")
        with torch.no_grad():   # in place: the optimizer's state stays attached to these tensors
            for module, saved in ((n.field, state["field"]), (n.deformation, state["deformation"])):
                if module is not None:
                    for name, value in module.state_dict(keep_vars=True).items():
                        value.copy_(saved[name].to(value.device))
            n.canonical_transforms.copy_(state["canonical_transforms"].to(n.canonical_transforms.device))
        self.deformation_trained = bool(state["deformation_trained"])

    @classmethod
    def from_state(cls, config: HybridConfig, state: dict[str, Any], device: torch.device) -> "HybridTraining":
        """Rebuilt from a checkpoint (a resumed run after the NeRF stages)."""
        from ..avatar.hybrid import FieldSpec

        spec = FieldSpec.from_dict(state["field_spec"])
        field = _accelerated(ImplicitField(spec, state["field"]["centre"].cpu(), float(state["field"]["bound"])).to(device))
        deformation = None
        if state["deformation"] is not None:
            deformation = DeformationNetwork(DeformSpec.from_dict(state["deformation_spec"])).to(device)
        out = cls(config, HybridNetworks(state["canonical_transforms"].to(device), field, deformation))
        out.load_state_dict(state)
        return out

    def export(self) -> HybridNetworks:
        """Detached copies for the avatar folder."""
        n = self.networks
        field = ImplicitField(n.field.spec, n.field.centre.detach().cpu(), float(n.field.bound))
        field.load_state_dict({k: v.detach().cpu() for k, v in n.field.state_dict().items()})
        deformation = None
        if n.deformation is not None:
            deformation = DeformationNetwork(n.deformation.spec)
            deformation.load_state_dict({k: v.detach().cpu() for k, v in n.deformation.state_dict().items()})
        device = n.canonical_transforms.device
        return HybridNetworks(n.canonical_transforms.detach().clone(), field.to(device),
                              None if deformation is None else deformation.to(device))


# ---- the original's mesh-bound Gaussians as trainer parameters ---------------------------------

def gaussian_lrs(lr: Any) -> dict[str, float]:
    """Learning rates of the original's mesh-bound parameters: its barycentrics' (1.6e-4, the
    mesh-bound offsets' rate in the recipe) and its scales' for the two scale factors."""
    return {"barycentric": lr.offsets, "factors": lr.log_scales}


BOUND_PARAMS = ("bound.barycentric", "bound.factors")
BOUND_BUFFERS = ("bound.faces", "bound.base_scales", "bound.colors")


def paper_bound_tensors(body: Any, betas: torch.Tensor, expression: bool) -> dict[str, torch.Tensor]:
    """The original's mesh-bound Gaussians on the hands (and face with expression control), as the
    trainer's tensors: BOUND_PARAMS learnable, BOUND_BUFFERS fixed."""
    b = paper_bound(body, betas, ("hands", "face") if expression else ("hands",))
    return {"bound.barycentric": b.barycentric, "bound.factors": b.factors, "bound.faces": b.faces,
            "bound.base_scales": b.base_scales, "bound.colors": b.colors}


def paper_bound_from(tensors: dict[str, torch.Tensor]) -> PaperBound:
    return PaperBound(faces=tensors["bound.faces"], barycentric=tensors["bound.barycentric"],
                      factors=tensors["bound.factors"], base_scales=tensors["bound.base_scales"],
                      colors=tensors["bound.colors"])


__all__ = ["HybridConfig", "HybridTraining", "gaussian_lrs", "BOUND_PARAMS", "BOUND_BUFFERS", "paper_bound_tensors", "paper_bound_from"]
