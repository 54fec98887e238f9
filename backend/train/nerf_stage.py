"""Stage I of the dreamwaltz-g recipe, the trainer's side: SDS into the NeRF, then Gaussians.

The field (a hash-grid density and colour field rendered by ray marching), its pretraining on
the body model (cached per body model), its sigma-prior on the hand and face surfaces and its
conversion to Gaussians belong to the NeRF package, `backend/train/nerf` (its `NeRFStage`).
This module runs one NeRF iteration of the training loop with them: the stage's batch (the
canonical pose, its cameras at the stage's size, the gray background, the skeleton images),
the NeRF's render, SDS through the same guidance as the Gaussian stages plus the sigma-prior,
and Adam on the field (the original's lr 1e-3, x 10 for the grid); it keeps their state for
checkpoints and hands the trainer the converted Gaussians.

A build without the NeRF package refuses the NeRF stages with one clear error instead of
training anything else in their place.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from .errors import TrainingError

UNAVAILABLE = ("the NeRF stage is not available in this build (backend/train/nerf is missing); train with "
               "--recipe fast, or with --recipe dreamwaltz-g and the setting init = \"template\" (no Stage I: the "
               "3DGS stages start from Gaussians on the template's surface)")
RENDER_SALT = 0x4E52   # the render jitter's stream, apart from the SDS noise's


def nerf_available() -> bool:
    return importlib.util.find_spec(f"{__package__}.nerf") is not None


class NerfStage:
    """The NeRF of a run, from its first NeRF iteration to its conversion to Gaussians."""

    def __init__(self, trainer: Any) -> None:
        if not nerf_available():
            raise TrainingError(UNAVAILABLE)
        from .nerf import NeRFCacheError, NeRFStage

        c = trainer.config
        self.trainer = trainer
        self.canonical = trainer.poses.canonical()   # the pose every NeRF batch has ("apose" mode)
        try:
            self.stage = NeRFStage.pretrained(c.nerf, trainer.body, trainer.betas, self.canonical, trainer.device,
                                              seed=c.seed, expression=c.expression)
        except NeRFCacheError as exc:
            raise TrainingError(str(exc)) from exc
        kw: dict[str, Any] = {"eps": 1e-15}
        if trainer.device.type == "cuda":
            kw["fused"] = True
        self.optimizer = torch.optim.Adam(self.stage.param_groups(), **kw)
        self.optimizer.zero_grad(set_to_none=True)  # a field fresh from pretraining may carry its last gradients

    def train_step(self, step: int, spec: Any) -> torch.Tensor:
        """Iteration `step` of a NeRF stage `spec`; returns the loss (detached)."""
        from .batches import step_seed
        from .nerf.stage import step_generator

        t = self.trainer
        timer = t.timer
        t.ensure_guidance()
        with timer("sample"):
            batch = t.batches.get(step)
            t.noise_gen.manual_seed(step_seed(t.config.seed, step))
            prompts = [(v.kind, v.view) for v in batch.views]
            inputs = t.sds.prepare(batch.control_images(), prompts, t.schedule.sds_progress(step), t.noise_gen)
            share = t.parallel.share(len(batch.views))   # this rank's views (view-parallel training)
            mine, inputs = batch.share(share), inputs.views(share)
        with timer("render"):
            self.stage.update_occupancy(step)
            out = self.stage.render([v.camera for v in mine.views], resolution=spec.resolution,
                                    backgrounds=mine.backgrounds,
                                    generator=step_generator(t.config.seed, step, RENDER_SALT, t.device))
            images = out.rgb.permute(0, 3, 1, 2)
        loss, _ = t.sds.loss(images, inputs, timer)
        with timer("backward"):
            loss = loss + self.stage.prior_loss(step) * (len(mine.views) / len(batch.views))
            loss.backward()
        with timer("optim"):
            loss = t.parallel.reduce_grads([p for g in self.optimizer.param_groups for p in g["params"]], loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def render_preview(self, camera: Any, background: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) of the field through `camera`."""
        return self.stage.render([camera], backgrounds=background[None]).rgb[0, ..., :3]

    def to_gaussians(self) -> Any:
        return self.stage.to_gaussians()

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.stage.load_state_dict(state["stage"])
        except ValueError as exc:
            raise TrainingError(f"the checkpoint's NeRF cannot be resumed here: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])

    def close(self) -> None:
        self.optimizer = None
