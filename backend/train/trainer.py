"""The training loop: skeleton-guided score distillation into the hybrid Gaussian avatar.

A run goes through its recipe's stages (recipes.py; `Schedule` in stages.py), named in the
progress reports. One iteration of a Gaussian stage: take its batch (`batches.py`: a pose by
the stage's pose mode, `views` cameras, backgrounds and the OpenPose skeleton of each view,
made ahead by worker processes); pose the avatar with the batch's skinning transforms; render
all views over their backgrounds in one rasterizer call; take the SDS loss of SD 1.5 +
ControlNet (in the template stage instead: a photometric fit to the template avatar);
backpropagate to the Gaussians (and the hash-grid field); step Adam; accumulate screen-space
gradients and densify / prune the free Gaussians on schedule. A NeRF stage (the dreamwaltz-g
recipe's Stage I) renders the NeRF instead (nerf_stage.py), and the first Gaussian stage after
it starts by converting the field to Gaussians.

`run_training(config, out_dir, progress_cb, should_cancel, resume)` does a whole run: it writes
`config.json`, checkpoints (`checkpoints/last.pt`, atomically, every `checkpoint_every`
iterations and when cancelled), `previews/latest.png`, and at the end the avatar folder
`avatar/` (via `save_avatar`) and `train.json` (a summary); it returns the avatar folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..avatar import Avatar, AvatarMeta, BoundGaussians, FreeGaussians, pose_with_transforms, save_avatar
from ..avatar.posing import triangle_frames
from ..body import BodyModel
from ..files import remove_stale_temps, write_bytes_atomic, write_text_atomic
from ..guidance import GuidanceModels, SDSGuidance, load_guidance_models, load_tiny_encoder
from ..guidance.speed import accelerate
from ..render import GaussianSet, rasterize, rasterize_views
from .appearance import ColorField
from .batches import Batch, BatchMaker, BatchSource, default_workers, pose_body, step_seed
from .cameras import View, front_camera
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import Solo
from .errors import TrainingError
from .hybrid import HybridTraining, gaussian_lrs
from .nerf_stage import UNAVAILABLE as NERF_UNAVAILABLE, NerfStage, nerf_available
from .recipes import Stage
from .stages import Schedule, template_avatar
from .strategy import DensifyStrategy, ParamEditor, scene_scale_of

log = logging.getLogger("backend.train")

ProgressCallback = Callable[..., None]
PHASES = ("sample", "render", "encode", "unet", "backward", "optim", "refine")
BUDGET_PROBE_STEPS = 20
EXPORT_RESERVE_S = 10.0   # seconds kept for the export, at most 5 % of the budget


class TrainingCancelled(Exception):
    """The run was cancelled; a checkpoint was saved (resume continues from it)."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"cancelled at iteration {step}; checkpoint saved to {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class PhaseTimer:
    """Accumulates wall time per phase; with `sync`, waits for the GPU at each boundary so the
    split is true (the benchmark); with `annotate`, names each phase for torch.profiler; off, it
    costs nothing."""

    def __init__(self, enabled: bool = False, sync: bool = False, annotate: bool = False) -> None:
        self.enabled, self.sync, self.annotate = enabled, sync, annotate
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        if self.sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        scope = torch.profiler.record_function(f"phase:{name}") if self.annotate else contextlib.nullcontext()
        try:
            with scope:
                yield
        finally:
            if self.sync and torch.cuda.is_available():
                torch.cuda.synchronize()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
            self.counts[name] = self.counts.get(name, 0) + 1

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-3, 1 - 1e-3)
    return torch.log(x / (1 - x))


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:48] or "avatar"


class Trainer:
    def __init__(self, config: TrainConfig, out_dir: str | Path | None = None,
                 models: GuidanceModels | None = None, progress_cb: ProgressCallback | None = None,
                 should_cancel: Callable[[], bool] | None = None, guidance: Callable[..., Any] | None = None,
                 fixed_views: list[View] | None = None, timer: PhaseTimer | None = None,
                 tiny_encoder: Any = None, parallel: Solo | None = None) -> None:
        """`guidance` replaces SDS (and the template fit) by any callable with SDS's signature
        (images, controls, prompts, progress, generator, timer) -> (loss, info); `fixed_views`
        replaces the camera sampler (both for tests and experiments); `parallel`: this rank of
        a view-parallel run (distributed.py)."""
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.parallel = parallel or Solo()
        self.device = self.parallel.place(resolve_device(config.device))
        self.progress_cb = progress_cb
        self.should_cancel = should_cancel or (lambda: False)
        self.models = models
        self.guidance_override = guidance
        self.fixed_views = fixed_views
        self.timer = timer or PhaseTimer()
        self.sds: SDSGuidance | None = None
        self.tiny_encoder = tiny_encoder
        self._session_t0 = time.perf_counter()
        self._elapsed_before = 0.0
        self._budget_probe: tuple[int, float] | None = None
        self._budget_planned: list[str] = []   # stages whose speed the plan has been fitted to
        self._loss_sum: torch.Tensor | None = None
        self._loss_n = 0
        self._last_report = 0.0
        self._last_stage: str | None = None
        self.history: list[dict[str, Any]] = []
        self.preview_path: Path | None = None
        self._init_state()

    # ------------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------------
    def _init_state(self) -> None:
        c = self.config
        self.body = BodyModel.load(c.body_model, self.device)
        self.torch_gen = torch.Generator().manual_seed(int(c.seed))   # densification
        self.noise_gen = torch.Generator(device=self.device)            # SDS, reseeded every step
        avatar = template_avatar(self.body, c.initial_gaussians, c.seed, c.betas, c.bound_fraction, c.expression)
        self.betas = avatar.betas.detach()
        self.template = avatar  # the frozen reference of the template stage
        rest = self.body.shaped_vertices(self.betas).detach()
        self.rest_vertices = rest
        self.scene_scale = scene_scale_of(rest)
        self._body_faces = torch.as_tensor(self.body.faces, device=self.device)
        self.field: ColorField | None = None
        if c.appearance == "hashgrid":
            self.field = ColorField(c.hashgrid, rest.min(0).values, rest.max(0).values, self.device, seed=c.seed)
        self.hybrid: HybridTraining | None = None   # after the NeRF stages with hybrid.enabled
        self._set_gaussians(avatar)
        self.strategy = DensifyStrategy(c.densify, self.scene_scale)
        self.stages: dict[str, Stage] = {s.name: s for s in c.stages()}
        self.schedule = Schedule.create(list(self.stages.values()))
        self.step_index = 0
        # a recipe with NeRF stages trains the field first and converts it to Gaussians after them
        self.nerf: NerfStage | None = None
        self.phase = "nerf" if any(s.kind == "nerf" for s in self.stages.values()) else "gaussians"
        if self.phase == "nerf" and not nerf_available():
            raise TrainingError(NERF_UNAVAILABLE)
        maker = BatchMaker(c, self.body, self.betas, self.fixed_views)
        self.poses = maker.poses
        workers = default_workers(self.device) if c.workers < 0 else c.workers
        self.batches = BatchSource(maker, lambda step: self.schedule.stage_at(step), self._needs_controls,
                                   self.device, workers)

    def _set_gaussians(self, avatar: Avatar) -> None:
        """Make `avatar`'s Gaussians the trained parameters, with a fresh optimizer."""
        c = self.config
        f, b = avatar.free, avatar.bound
        if self.hybrid is not None:
            p, buffers = self.hybrid.trainer_tensors(avatar, self.body, self.betas, c.expression)
        else:
            p = {
                "free.means": f.means, "free.quats": f.quats, "free.log_scales": f.log_scales,
                "free.opacity_logits": f.opacity_logits,
                "bound.offsets": b.offsets, "bound.quats": b.quats, "bound.log_scales": b.log_scales,
                "bound.opacity_logits": b.opacity_logits,
            }
            if c.appearance == "colors":
                p["free.color_logits"] = _logit(f.colors)
                p["bound.color_logits"] = _logit(b.colors)
            buffers = {"free.skin_joints": f.skin_joints, "free.skin_weights": f.skin_weights,
                       "bound.faces": b.faces, "bound.barycentric": b.barycentric}
        self.params = {k: torch.nn.Parameter(v.detach().clone().float().contiguous().to(self.device))
                       for k, v in p.items()}
        self.buffers = {k: v.detach().clone().to(self.device) for k, v in buffers.items()}
        self.optimizer = self._make_optimizer()
        self.editor = ParamEditor(self.params, self.buffers, self.optimizer)
        self._pose_cache: dict = {}
        self.parallel.align([*self.learnable_tensors().values(), *self.buffers.values()])

    def _lr_groups(self) -> list[dict[str, Any]]:
        lr = self.config.lr
        table = {"means": lr.means, "quats": lr.quats, "log_scales": lr.log_scales, "opacity_logits": lr.opacity,
                 "color_logits": lr.colors, "offsets": lr.offsets, **gaussian_lrs(lr)}
        groups = [{"params": [p], "lr": table[name.split(".", 1)[1]], "name": name} for name, p in self.params.items()]
        if self.hybrid is not None:
            groups += self.hybrid.param_groups(lr)
        if self.field is not None:
            if self.field.backend == "tcnn":
                groups.append({"params": list(self.field.parameters()), "lr": lr.hashgrid, "name": "field.net"})
            else:
                groups.append({"params": [self.field.encoding.embeddings], "lr": lr.hashgrid, "name": "field.grid"})
                groups.append({"params": list(self.field.mlp.parameters()), "lr": lr.mlp, "name": "field.mlp"})
        for g in groups:
            g["base_lr"] = g["lr"]
        return groups

    def _make_optimizer(self) -> torch.optim.Optimizer:
        kw: dict[str, Any] = {"eps": 1e-15}
        if self.device.type == "cuda":
            kw["fused"] = True
        return torch.optim.Adam(self._lr_groups(), **kw)

    def _set_lrs(self, step: int, views: list[View]) -> None:
        """The centres' exponential decay (over the run, or restarting each stage as the
        original's separate runs do) and, with `camera_scale`, the original's spatial scale
        (distance x tan(fov / 2) of the views) on the centres' and log-scales' rates."""
        lr = self.config.lr
        if lr.decay == "stage":
            i = self.schedule.index_at(step)
            local = step - self.schedule.start_of(i) + 1   # the original counts its iterations from 1
            frac = local / (lr.decay_length * max(1, self.schedule.lengths[i]))
        else:
            frac = step / (lr.decay_length * max(1, self.schedule.planned_total - 1))
        frac = min(1.0, frac)
        scale = float(np.mean([v.spatial_scale for v in views])) if lr.camera_scale else 1.0
        for g in self.optimizer.param_groups:
            if g["name"] == "free.means":
                g["lr"] = g["base_lr"] * (lr.means_final ** frac) * scale
            elif g["name"] in ("free.log_scales", "bound.log_scales") and lr.camera_scale:
                g["lr"] = g["base_lr"] * scale
        if self.hybrid is not None:
            self.hybrid.set_lrs(self.optimizer, self.stage(step))

    # ------------------------------------------------------------------------------------------
    # avatar views of the parameters
    # ------------------------------------------------------------------------------------------
    def bound_rest_positions(self) -> torch.Tensor:
        faces = self._body_faces[self.buffers["bound.faces"]]
        tri, frames = triangle_frames(self.rest_vertices, faces)
        anchor = (self.buffers["bound.barycentric"][:, :, None] * tri).sum(1)
        return anchor + (frames @ self.params["bound.offsets"][:, :, None])[..., 0]

    def colors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.field is None:
            return torch.sigmoid(self.params["free.color_logits"]), torch.sigmoid(self.params["bound.color_logits"])
        return self.field(self.params["free.means"]), self.field(self.bound_rest_positions())

    def avatar(self) -> Avatar:
        """The current avatar (differentiable w.r.t. the parameters)."""
        if self.hybrid is not None:
            return self.hybrid.avatar(self.params, self.buffers, self.body, self.betas, self.stage(),
                                      cache=self._pose_cache)
        p, b = self.params, self.buffers
        fc, bc = self.colors()
        free = FreeGaussians(means=p["free.means"], quats=p["free.quats"], log_scales=p["free.log_scales"],
                             opacity_logits=p["free.opacity_logits"], colors=fc,
                             skin_joints=b["free.skin_joints"], skin_weights=b["free.skin_weights"])
        bound = BoundGaussians(faces=b["bound.faces"], barycentric=b["bound.barycentric"], offsets=p["bound.offsets"],
                               quats=p["bound.quats"], log_scales=p["bound.log_scales"],
                               opacity_logits=p["bound.opacity_logits"], colors=bc)
        avatar = Avatar(body=self.body, betas=self.betas, free=free, bound=bound, meta=AvatarMeta(name="training"))
        if hasattr(avatar, "cache"):  # posing caches the shape's rest state there: keep it across steps
            avatar.cache = self._pose_cache
        return avatar

    def learnable_tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.params)
        if self.field is not None:
            out.update({f"field.{k}": v for k, v in self.field.named_parameters()})
        if self.hybrid is not None:
            out.update(self.hybrid.named_parameters())
        return out

    def _meta(self) -> AvatarMeta:
        c = self.config
        settings = {k: v for k, v in c.to_dict().items() if k not in ("sd_model", "controlnet")}
        provenance = {"made_by": "backend train", "method": "skeleton-guided SDS (DreamWaltz-G style)",
                      "iterations": self.step_index, "planned_iterations": self.schedule.planned_total,
                      "training_seconds": round(self.elapsed, 1), "device": str(self.device),
                      "appearance": c.appearance}
        if self.models is not None:
            provenance.update(self.models.sources)
            provenance["diffusion_dtype"] = str(self.models.dtype).replace("torch.", "")
        return AvatarMeta(name=_slug(c.prompt), prompt=c.prompt, seed=c.seed, settings=settings, provenance=provenance)

    @property
    def elapsed(self) -> float:
        return self._elapsed_before + (time.perf_counter() - self._session_t0)

    # ------------------------------------------------------------------------------------------
    # guidance
    # ------------------------------------------------------------------------------------------
    def ensure_guidance(self) -> None:
        if self.guidance_override is not None or self.sds is not None:
            return
        if all(self.stages[n].kind == "template" for n, k in zip(self.schedule.names, self.schedule.lengths) if k):
            return
        c = self.config
        if self.models is None:
            self.models = load_guidance_models(c.sd_model, c.controlnet, self.device, c.diffusion_dtype,
                                                c.allow_download)
        if c.sds.encoder == "tiny" and self.tiny_encoder is None:
            if not c.tiny_encoder:
                raise TrainingError('sds.encoder = "tiny" needs tiny_encoder (an AutoencoderTiny such as madebyollin/taesd)')
            self.tiny_encoder = load_tiny_encoder(c.tiny_encoder, self.device, self.models.dtype, c.allow_download)
        if c.compile and not self.models.compiled and self.progress_cb is not None:
            self.progress_cb("compiling models", self.step_index, 0)
        accelerate(self.models, channels_last=c.channels_last, compile=c.compile and not self.models.compiled,
                   tiny_encoder=self.tiny_encoder if c.sds.encoder == "tiny" else None)
        self.sds = SDSGuidance(self.models, c.prompt, c.sds, tiny_encoder=self.tiny_encoder, cuda_graphs=c.cuda_graphs,
                                attention=c.attention)

    # ------------------------------------------------------------------------------------------
    # one iteration
    # ------------------------------------------------------------------------------------------
    def _needs_controls(self, stage: str) -> bool:
        return self.stages[stage].kind != "template" or self.guidance_override is not None

    def stage(self, step: int | None = None) -> Stage:
        """The stage of iteration `step` (default: the current one)."""
        step = self.step_index if step is None else step
        return self.stages[self.schedule.stage_at(min(step, max(0, self.schedule.planned_total - 1)))]

    def nerf_stage(self) -> NerfStage:
        """The run's NeRF (made on first use: from the body model's pretrained field)."""
        if self.nerf is None:
            self.nerf = NerfStage(self)
        return self.nerf

    def convert(self) -> None:
        """NeRF -> Gaussians: the field's Gaussians replace the parameters (the first Gaussian
        stage after the NeRF stages starts with this)."""
        avatar = self.nerf_stage().to_gaussians()
        log.info("iteration %d: the NeRF became %d free and %d mesh-bound Gaussians", self.step_index,
                 len(avatar.free.means), len(avatar.bound.faces))
        if self.config.hybrid.enabled:
            self.hybrid = HybridTraining.from_nerf(self.config.hybrid, self.nerf.stage,
                                                   self.nerf.stage.canonical_params["body_pose"])
        self._set_gaussians(avatar)
        self.strategy = DensifyStrategy(self.config.densify, self.scene_scale)
        self.nerf.close()
        self.nerf = None
        self.phase = "gaussians"

    def pose_body(self, params: dict[str, Any]) -> dict[str, Any]:
        return pose_body(self.body, self.betas, params)

    def close(self) -> None:
        """Stop the batch workers (the trainer stays usable: they restart on demand)."""
        self.batches.close()

    def train_step(self) -> torch.Tensor:
        """Run iteration `self.step_index` (without advancing it); returns the loss (a tensor)."""
        c = self.config
        step = self.step_index
        spec = self.stage(step)
        if spec.kind == "nerf":
            loss = self.nerf_stage().train_step(step, spec)
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_n += 1
            return loss
        if self.phase == "nerf":
            self.convert()
        timer = self.timer
        sds_step = spec.kind != "template" and self.guidance_override is None
        with timer("sample"):
            batch = self.batches.get(step)
            self._set_lrs(step, batch.views)
            controls = batch.control_images()
            self.noise_gen.manual_seed(step_seed(c.seed, step))
            prompts = [(v.kind, v.view) for v in batch.views]
            progress = self.schedule.sds_progress(step)
            if sds_step:
                self.ensure_guidance()
                inputs = self.sds.prepare(controls, prompts, progress, self.noise_gen)
            share = self.parallel.share(len(batch.views))   # this rank's views (all of them in one process)
            mine = batch.share(share)
            views, bgs, part = mine.views, mine.backgrounds, len(mine.views) / len(batch.views)
            if sds_step:
                inputs = inputs.views(share)
        with timer("render"):
            gs = pose_with_transforms(self.avatar(), batch.transforms, batch.expression, batch.rotations)
            n_free = len(self.params["free.means"])
            track = c.densify.enabled and spec.kind != "template" and gs.means.requires_grad
            per_view_means = [gs.means + 0.0 if track else gs.means for _ in views]
            if track:  # per-view screen-space gradients for densification
                for means in per_view_means:
                    means.retain_grad()
            sets = [GaussianSet(means=m, quats=gs.quats, scales=gs.scales, opacities=gs.opacities, colors=gs.colors)
                    for m in per_view_means]
            cameras = [v.camera for v in views]
            images = rasterize_views(sets, cameras, backend=c.rasterizer, backgrounds=bgs,
                                     depth=False).rgb.permute(0, 3, 1, 2)
        if sds_step:
            loss, _ = self.sds.loss(images, inputs, timer)
        elif self.guidance_override is not None:
            loss, _ = self.guidance_override(images, mine.control_images(), prompts[share], progress, self.noise_gen,
                                             timer)
            loss = loss * part
        else:
            with timer("unet"):
                loss = self._template_loss(mine, images) * part
        with timer("backward"):
            loss.backward()
        with timer("optim"):
            loss = self.parallel.reduce_grads(self.learnable_tensors().values(), loss)
            if track:
                self.strategy.accumulate([m.grad[:n_free] if m.grad is not None else None for m in per_view_means],
                                         [m.detach()[:n_free] for m in per_view_means], cameras,
                                         batch_views=len(batch.views), reduce=self.parallel.reduce_stats)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with timer("refine"):
            report = self.strategy.refine(step, self.schedule.planned_total, self.editor, self.torch_gen)
            if report:
                log.info("iteration %d: densified (+%d duplicated, %d split, -%d pruned%s) -> %d free Gaussians",
                         step + 1, report.duplicated, report.split, report.pruned,
                         ", opacities reset" if report.reset else "", len(self.params["free.means"]))
        loss = loss.detach()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_n += 1
        return loss

    def _template_loss(self, batch: Batch, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = pose_with_transforms(self.template, batch.transforms, batch.expression, batch.rotations)
            targets = rasterize_views([ref] * len(batch.views), [v.camera for v in batch.views],
                                      backend=self.config.rasterizer, backgrounds=batch.backgrounds)
        return F.mse_loss(images, targets.rgb.permute(0, 3, 1, 2))  # random backgrounds make this fit alpha too

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_index,
            "schedule": self.schedule.state_dict(),
            "phase": self.phase,
            "nerf": None if self.nerf is None else self.nerf.state_dict(),
            "elapsed": self.elapsed,
            "config": self.config.to_dict(),
            "params": {k: v.detach() for k, v in self.params.items()},
            "buffers": dict(self.buffers),
            "field": None if self.field is None else self.field.state_dict(),
            "field_backend": None if self.field is None else self.field.backend,
            "hybrid": None if self.hybrid is None else self.hybrid.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": {"torch": self.torch_gen.get_state()},
            "budget": {"planned": list(self._budget_planned)},
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = TrainConfig.from_dict(state["config"])
        diff = self.config.same_run_as(saved)
        if diff == ["recipe"]:
            raise TrainingError(recipe_mismatch("the checkpoint", saved.recipe, self.config.recipe))
        if diff:
            raise TrainingError(f"the checkpoint was made with different settings ({', '.join(diff)}); "
                                "resume with the settings of the run (or start a new run in another folder)")
        if (state["field_backend"] or None) != (None if self.field is None else self.field.backend):
            raise TrainingError(f"the checkpoint's colour field uses {state['field_backend']}, this machine "
                                f"{self.field.backend if self.field else None}; resume where tiny-cuda-nn is "
                                "(or is not) installed as before")
        self.params.clear()
        self.params.update({k: torch.nn.Parameter(v.to(self.device).contiguous()) for k, v in state["params"].items()})
        self.buffers.clear()
        self.buffers.update({k: v.to(self.device) for k, v in state["buffers"].items()})
        if self.field is not None:
            self.field.load_state_dict(state["field"])
        saved = state.get("hybrid")
        self.hybrid = None if saved is None else HybridTraining.from_state(self.config.hybrid, saved, self.device)
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        for g in self.optimizer.param_groups:  # load_state_dict restores the saved lrs; keep the bases
            g.setdefault("base_lr", g["lr"])
        self.editor = ParamEditor(self.params, self.buffers, self.optimizer)
        self.strategy.load_state_dict({k: (v.to(self.device) if torch.is_tensor(v) else v)
                                       for k, v in state["strategy"].items()})
        self.schedule = _schedule_from_state(state["schedule"])
        self.phase = str(state.get("phase", "gaussians"))
        if self.nerf is not None:
            self.nerf.close()
            self.nerf = None
        if self.phase == "nerf" and state.get("nerf") is not None:
            self.nerf_stage().load_state_dict(state["nerf"])
        self.step_index = int(state["step"])
        self._elapsed_before = float(state["elapsed"])
        self._session_t0 = time.perf_counter()
        self.torch_gen.set_state(state["rng"]["torch"].cpu())
        planned = state.get("budget", {}).get("planned", [])
        self._budget_planned = list(planned) if isinstance(planned, list) else \
            ([self.schedule.names[self.schedule.index_at(self.step_index)]] if planned else [])
        self.history = list(state.get("history", []))

    def save_checkpoint(self) -> Path:
        """Rank 0 writes it, after checking that the ranks are in lockstep; all wait for it."""
        path = checkpoint_path(self.out_dir)
        self.parallel.check_lockstep(self.learnable_tensors(), self.step_index)
        if self.parallel.is_main:
            save_checkpoint(path, self.state_dict())
        self.parallel.barrier()
        return path

    def resume(self) -> bool:
        """Load the last checkpoint of `out_dir` if there is one."""
        path = checkpoint_path(self.out_dir)
        if not path.exists():
            return False
        self.load_state_dict(load_checkpoint(path, "cpu"))
        log.info("resumed %s at iteration %d of %d", self.out_dir, self.step_index, self.schedule.planned_total)
        return True

    # ------------------------------------------------------------------------------------------
    # reporting, preview, export
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_preview(self, size: int = 256) -> np.ndarray:
        """A front view in the canonical pose: of the NeRF while the run is in its NeRF stages,
        of the Gaussians after them."""
        canonical = self.pose_body(self.poses.canonical())
        cam = front_camera(canonical["vertices"], size, size)
        background = torch.full((3,), 0.92, device=self.device)
        if self.phase == "nerf":
            rgb = self.nerf_stage().render_preview(cam, background)
        else:
            gs = pose_with_transforms(self.avatar(), canonical["transforms"], None, canonical["rotations"])
            rgb = rasterize(gs, cam, backend=self.config.rasterizer, background=background).rgb
        return (rgb.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)

    def write_preview(self) -> Path | None:
        if self.out_dir is None or not self.parallel.is_main:
            return None
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.render_preview()).save(buf, format="PNG")
        path = self.out_dir / "previews" / "latest.png"
        write_bytes_atomic(path, buf.getvalue())
        self.preview_path = path
        return path

    def mean_loss(self) -> float | None:
        if not self._loss_n or self._loss_sum is None:
            return None
        value = float(self._loss_sum) / self._loss_n
        self._loss_sum, self._loss_n = None, 0
        return value

    def report(self, force: bool = False, preview: Path | None = None) -> None:
        """A progress report (at most every `progress_every` seconds unless forced, a new
        preview or a new stage): stage name, step and total, mean loss, and as extra fields the
        recipe, the stage's index and the stage names."""
        stage = self.stage().name
        now = time.perf_counter()
        if not force and preview is None and stage == self._last_stage and \
                now - self._last_report < self.config.progress_every:
            return
        self._last_report, self._last_stage = now, stage
        loss = self.mean_loss()
        if loss is not None:
            self.history.append({"step": self.step_index, "stage": stage, "loss": loss,
                                 "elapsed": round(self.elapsed, 2),
                                 "gaussians": None if self.phase == "nerf" else self.num_gaussians})
            del self.history[:-2000]
        if self.progress_cb is not None:
            self.progress_cb(stage, self.step_index, self.schedule.planned_total, loss=loss,
                             preview=str(preview) if preview is not None else None, recipe=self.config.recipe,
                             stage_index=self.schedule.names.index(stage), stages=list(self.schedule.names))

    @property
    def num_gaussians(self) -> int:
        return int(self.params["free.means"].shape[0] + self.buffers["bound.faces"].shape[0])

    @torch.no_grad()
    def export_avatar(self) -> Avatar:
        """The avatar with baked colours and normalised rotations, detached."""
        if self.hybrid is not None:
            return self.hybrid.export_avatar(self.avatar(), self._meta())
        a = self.avatar()
        def det(t: torch.Tensor) -> torch.Tensor:
            return t.detach().clone()
        free = FreeGaussians(means=det(a.free.means), quats=F.normalize(det(a.free.quats), dim=-1),
                             log_scales=det(a.free.log_scales), opacity_logits=det(a.free.opacity_logits),
                             colors=det(a.free.colors).clamp(0, 1), skin_joints=det(a.free.skin_joints),
                             skin_weights=det(a.free.skin_weights))
        bound = BoundGaussians(faces=det(a.bound.faces), barycentric=det(a.bound.barycentric),
                               offsets=det(a.bound.offsets), quats=F.normalize(det(a.bound.quats), dim=-1),
                               log_scales=det(a.bound.log_scales), opacity_logits=det(a.bound.opacity_logits),
                               colors=det(a.bound.colors).clamp(0, 1))
        return Avatar(body=self.body, betas=self.betas.clone(), free=free, bound=bound, meta=self._meta())

    def save(self) -> Path:
        folder = self.out_dir / "avatar"
        if not self.parallel.is_main:
            return folder
        save_avatar(self.export_avatar(), folder, preview=self.render_preview())
        summary = {"prompt": self.config.prompt, "avatar": str(folder), "iterations": self.step_index,
                   "planned_iterations": self.schedule.planned_total, "training_seconds": round(self.elapsed, 2),
                   "gaussians": self.num_gaussians, "device": str(self.device),
                   "history": self.history[-200:]}
        write_text_atomic(self.out_dir / "train.json", json.dumps(summary, indent=2))
        return folder

    # ------------------------------------------------------------------------------------------
    # the run
    # ------------------------------------------------------------------------------------------
    def _budget(self) -> bool:
        """Plan with the time budget; True when it is spent."""
        budget = self.config.time_budget
        if not budget:
            return False
        step = self.step_index
        spec = self.stage(step)
        if spec.kind != "template" and spec.name not in self._budget_planned and step < self.schedule.planned_total:
            # fitted again in each stage, at its own speed (a NeRF at 64 px is faster than 3DGS at 512)
            if self._budget_probe is None or self._budget_probe[2] != spec.name:
                self._budget_probe = (step, self.elapsed, spec.name)
            elif step - self._budget_probe[0] >= BUDGET_PROBE_STEPS:
                per_step = (self.elapsed - self._budget_probe[1]) / (step - self._budget_probe[0])
                left = budget - self.elapsed - self._reserve(budget)
                fits = step + int(max(0.0, left) / max(per_step, 1e-6))
                if fits < self.schedule.planned_total:
                    log.info("time budget %.0f s: %.3f s per iteration in stage %s, planning %d iterations "
                             "instead of %d", budget, per_step, spec.name, fits, self.schedule.planned_total)
                    self.schedule.shorten(fits, step)
                self._budget_planned.append(spec.name)
        return self.elapsed >= budget - self._reserve(budget)

    def _budget_agreed(self) -> bool:
        """`_budget` by rank 0's clock, its plan followed by every rank."""
        if not self.config.time_budget or self.parallel.world == 1:
            return self._budget()
        spent = self._budget() if self.parallel.is_main else False
        spent, schedule = self.parallel.from_main((spent, self.schedule.state_dict()))
        if not self.parallel.is_main:
            self.schedule = Schedule.from_state(schedule)
        return bool(spent)

    @staticmethod
    def _reserve(budget: float) -> float:
        return min(EXPORT_RESERVE_S, 0.05 * budget)

    def run(self) -> Path:
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> Path:
        c = self.config
        self.ensure_guidance()
        self.report(force=True)
        while self.step_index < self.schedule.planned_total:
            if self.parallel.any(self.should_cancel()):
                path = self.save_checkpoint()
                self.report(force=True)
                raise TrainingCancelled(self.step_index, path)
            if self._budget_agreed():
                log.info("time budget spent after %d iterations (%.0f s)", self.step_index, self.elapsed)
                self.schedule.shorten(self.step_index, self.step_index)
                break
            self.train_step()
            self.step_index += 1
            s = self.step_index
            preview = None
            if c.checkpoint_every > 0 and s % c.checkpoint_every == 0 and s < self.schedule.planned_total:
                self.save_checkpoint()
            if c.preview_every > 0 and s % c.preview_every == 0:
                preview = self.write_preview()
            if c.log_every > 0 and s % c.log_every == 0:
                what = "NeRF" if self.phase == "nerf" else f"{self.num_gaussians} Gaussians"
                log.info("iteration %d/%d (%s, %s): %s, %.1f s", s, self.schedule.planned_total, c.recipe,
                         self.schedule.stage_at(s - 1), what, self.elapsed)
            self.report(preview=preview)
        if self.phase == "nerf":  # the run ended in its NeRF stages (a time budget): the avatar needs Gaussians
            self.convert()
        self.save_checkpoint()
        folder = self.save()
        preview = self.write_preview()
        self.report(force=True, preview=preview)
        return folder


def prepare_out_dir(config: TrainConfig, out_dir: Path, resume: bool, write: bool = True) -> None:
    """Check that `out_dir` may take this run; with `write` (rank 0), record its config."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / "config.json"
    has_ckpt = checkpoint_path(out_dir).exists()
    if not resume and (has_ckpt or (out_dir / "avatar").exists()):
        raise TrainingError(f"{out_dir} already holds a training run; pass --resume to continue it "
                            "or choose another output folder")
    if resume and cfg_path.exists():
        saved = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
        diff = config.same_run_as(saved)
        if diff == ["recipe"]:
            raise TrainingError(recipe_mismatch(str(out_dir), saved.recipe, config.recipe))
        if diff:
            raise TrainingError(f"{out_dir} holds a run with different settings ({', '.join(diff)}); "
                                "resume it with its own settings (see its config.json)")
    if write:   # only the writer: another rank would remove rank 0's temporary files while it writes them
        stale = remove_stale_temps(out_dir)   # a killed run's half-written checkpoints and previews (not
        if stale:                             # before the checks: a refused run must touch nothing)
            log.info("removed %d temporary files a killed run left in %s", len(stale), out_dir)
        write_text_atomic(cfg_path, config.to_json())


def recipe_mismatch(where: str, saved: str, asked: str) -> str:
    return (f"{where} holds a run of --recipe {saved}; it cannot be resumed as --recipe {asked} (the setting "
            f"recipe decides every stage and default): resume it with --recipe {saved}, or start a new run in "
            "another folder")


def _schedule_from_state(state: dict[str, Any]) -> Schedule:
    """A checkpoint's schedule; those of version 1 (the fast recipe's three stages as
    template_end, planned_total and canonical_fraction) too."""
    if "names" in state:
        return Schedule.from_state(state)
    template, total = int(state["template_end"]), int(state["planned_total"])
    canonical = template + int(round((total - template) * float(state["canonical_fraction"])))
    return Schedule(["template", "canonical", "posed"], [template, canonical - template, total - canonical])


def load_run_config(out_dir: str | Path) -> TrainConfig:
    """The config a run folder was started with (for resuming without repeating the options)."""
    path = Path(out_dir) / "config.json"
    if not path.exists():
        raise TrainingError(f"{out_dir} holds no training run (config.json is missing)")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def resume_config(out_dir: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The config of the run in `out_dir` with `overrides` (nested dicts merged into the
    saved ones); resuming as another recipe is refused first, naming the setting."""
    data = load_run_config(out_dir).to_dict()
    asked = overrides.get("recipe")
    if asked is not None and asked != data["recipe"]:
        raise TrainingError(recipe_mismatch(str(out_dir), data["recipe"], str(asked)))
    for key, value in overrides.items():
        data[key] = dict(data[key], **value) if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return TrainConfig.from_dict(data)


def run_training(config: TrainConfig, out_dir: str | Path, progress_cb: ProgressCallback | None = None,
                 should_cancel: Callable[[], bool] | None = None, resume: bool = False,
                 models: GuidanceModels | None = None, parallel: Solo | None = None) -> Path:
    """Train an avatar into `out_dir` and return its avatar folder (see the module docstring).
    Raises TrainingCancelled (after saving a checkpoint) when `should_cancel()` turns true.
    `parallel`: this rank of a view-parallel run (distributed.py; rank 0 alone writes)."""
    out_dir = Path(out_dir)
    parallel = parallel or Solo()
    if not config.prompt.strip():
        raise TrainingError("a prompt is needed (what the avatar should look like)")
    prepare_out_dir(config, out_dir, resume, write=parallel.is_main)
    parallel.barrier()
    trainer = Trainer(config, out_dir, models=models, progress_cb=progress_cb, should_cancel=should_cancel,
                      parallel=parallel)
    if resume and not trainer.resume():
        log.info("no checkpoint in %s; starting from the beginning", out_dir)
    if trainer.step_index >= trainer.schedule.planned_total and (out_dir / "avatar").exists():
        return out_dir / "avatar"
    return trainer.run()


__all__ = ["Trainer", "TrainingCancelled", "TrainingError", "PhaseTimer", "run_training", "load_run_config",
           "resume_config", "PHASES"]
