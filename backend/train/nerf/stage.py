"""`NeRFStage`: what the trainer drives in Stage I.

    stage = NeRFStage.pretrained(config, body, betas, canonical_params, device, seed, expression)
    groups = stage.param_groups()                 # Adam groups "nerf.grid" (lr x 10), "nerf.mlp"
    stage.update_occupancy(step)                  # every `update_every` iterations (deterministic per step)
    out = stage.render(cameras, resolution=64, backgrounds=None, generator=gen)   # RenderOutput, (V, H, W, C)
    loss = sds(out.rgb.permute(0, 3, 1, 2)) + stage.prior_loss(step)
    state = stage.state_dict(); stage.load_state_dict(state)                      # resume
    avatar = stage.to_gaussians()                 # the Avatar the 3DGS stages start from

The field lives in the canonical pose's world space (the pose the stage trains in); it renders
the same `Camera`s the Gaussian rasterizer does, over grey (0.5) unless backgrounds are given.
The stage holds no optimizer: the trainer builds one from `param_groups()`, whose tensors are
the field's parameters (resume restores them in place, so the optimizer's state stays valid).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ...avatar import Avatar
from ...render.core import Camera, RenderOutput
from .config import NeRFConfig
from .field import NeRFField
from .occupancy import OccupancyGrid
from .pretrain import CanonicalBody, march_settings, pretrained_field
from .prior import SigmaPrior
from .raymarch import render_views

STATE_FORMAT = "dreamwaltz-nerf-stage"


def step_generator(seed: int, step: int, salt: int, device: torch.device) -> torch.Generator:
    """A torch generator per (seed, step, purpose): the stage's randomness survives a resume."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), salt]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(state))


class NeRFStage:
    def __init__(self, config: NeRFConfig, body, betas: torch.Tensor, canonical_params: dict[str, Any],
                 field: NeRFField, grid: OccupancyGrid, seed: int = 0, expression: bool = False,
                 report: dict[str, Any] | None = None) -> None:
        self.config = config
        self.body = body
        self.betas = betas.detach().to(body.device)
        self.canonical_params = canonical_params
        self.canonical = CanonicalBody.pose(body, self.betas, canonical_params)
        self.field = field
        self.grid = grid
        self.seed = int(seed)
        self.expression = bool(expression)
        self.report = report or {}
        self.march = march_settings(config, field)
        self._prior: SigmaPrior | None = None

    @classmethod
    def pretrained(cls, config: NeRFConfig, body, betas: torch.Tensor, canonical_params: dict[str, Any],
                   device: torch.device | str, seed: int = 0, expression: bool = False, cache: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> "NeRFStage":
        """The stage started from the body-shaped field (cached per body model, shape and pose)."""
        device = torch.device(device)
        betas = body.betas_vector(betas).detach()
        field, grid, report = pretrained_field(config, body, betas, canonical_params, device, cache, progress)
        return cls(config, body, betas, canonical_params, field, grid, seed, expression, report)

    @property
    def device(self) -> torch.device:
        return self.field.device

    # ---- training ------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        c = self.config
        groups = [{"params": self.field.grid_parameters(), "lr": c.lr * c.grid_lr_scale, "name": "nerf.grid"},
                  {"params": self.field.mlp_parameters(), "lr": c.lr, "name": "nerf.mlp"}]
        for g in groups:
            g["base_lr"] = g["lr"]
        return groups

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.field.parameters())

    def render(self, cameras: Sequence[Camera], resolution: int | None = None, backgrounds: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> RenderOutput:
        """Differentiable renders (V, H, W, C) of the field; `generator` jitters the samples."""
        return render_views(self.field, self.grid, cameras, self.march, backgrounds, self.config.background,
                            generator, resolution)

    def update_occupancy(self, step: int, force: bool = False) -> bool:
        """Refresh the occupancy grid at every `update_every`-th iteration; True when it did."""
        if not force and step % self.config.update_every:
            return False
        self.grid.update(self.field, step_generator(self.seed, step, 0x0CC, self.device))
        return True

    def prior(self) -> SigmaPrior:
        if self._prior is None:
            c = self.config
            parts = ("hands", "face") if self.expression else ("hands",)
            self._prior = SigmaPrior(self.body, self.canonical.vertices, parts, c.prior_points, c.prior_peak,
                                     c.prior_noise, c.prior_thickness, c.prior_pool, self.seed)
        return self._prior

    def prior_loss(self, step: int) -> torch.Tensor:
        """The sigma-prior (weighted) for iteration `step`."""
        return self.config.prior_weight * self.prior().loss(self.field, step)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "body": dict(self.body.identity), "backend": self.field.backend,
                "field": {k: v.detach().clone() for k, v in self.field.state_dict().items()},
                "grid": self.grid.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError("not a NeRF stage state")
        if (state.get("body") or {}).get("content_sha256") != self.body.identity["content_sha256"]:
            raise ValueError(f"the NeRF state was made on the body model {(state.get('body') or {}).get('name')}, "
                             f"not {self.body.identity['name']}")
        with torch.no_grad():
            for name, value in self.field.state_dict(keep_vars=True).items():
                value.copy_(state["field"][name].to(value.device))
        self.grid.load_state_dict(state["grid"])

    # ---- conversion ----------------------------------------------------------------------------
    def to_gaussians(self, **overrides: Any) -> Avatar:
        """The field as the Avatar the 3DGS stages continue from (see `convert.py`)."""
        from .convert import field_to_avatar

        return field_to_avatar(self, **overrides)
