"""Densification and pruning of the free Gaussians (in the spirit of gsplat's DefaultStrategy).

After each backward pass, the screen-space gradient of every free Gaussian's centre is
accumulated per camera that sees it. Every `every` steps inside [start, stop) (fractions of
the run), Gaussians whose average gradient exceeds `grow_grad2d` are duplicated (if small) or
split in two (if large: two samples from the Gaussian, scales / 1.6), the strongest first and
at most `max_growth` x their number per refinement (up to `max_free`), and Gaussians with
opacity below `prune_opacity` or a scale above `prune_scale3d` x the body's size are
removed; optionally opacities are reset every `reset_every` steps. The optimizer's moments
follow every change (new rows start at zero). The mesh-bound Gaussians are not densified.

The screen-space gradient is derived from the gradient of the posed 3D centre: with
u = fx x / z + cx, dL/du = (dL/dx_cam) z / fx (and likewise for v), normalised like gsplat's
(x W/2 and H/2, x the number of cameras in the batch, since the loss averages over them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import torch

from ..render import Camera
from ..render.core import upload


@dataclasses.dataclass
class DensifyConfig:
    enabled: bool = True
    start: float = 0.05           # fraction of the run
    stop: float = 0.6
    every: int = 100              # steps between refinements
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01    # x scene scale: at or below -> duplicate, above -> split
    prune_opacity: float = 0.005
    prune_scale3d: float = 0.1    # x scene scale
    reset_every: int = 0          # 0 = never reset opacities
    max_free: int = 300_000
    max_growth: float = 0.2       # at most this fraction more Gaussians per refinement (SDS
                                  # gradients are far larger than photometric ones: keep growth sane)


@dataclasses.dataclass
class RefineReport:
    duplicated: int = 0
    split: int = 0
    pruned: int = 0
    reset: bool = False

    def __bool__(self) -> bool:
        return bool(self.duplicated or self.split or self.pruned or self.reset)


class ParamEditor:
    """Edits rows of the free-Gaussian tensors and keeps Adam's state aligned.

    `params` maps names to nn.Parameters, `buffers` to plain tensors of the same length (skinning
    data); names of the free group start with "free."."""

    def __init__(self, params: dict[str, torch.nn.Parameter], buffers: dict[str, torch.Tensor],
                 optimizer: torch.optim.Optimizer, prefix: str = "free.") -> None:
        self.params, self.buffers, self.optimizer, self.prefix = params, buffers, optimizer, prefix

    def names(self) -> list[str]:
        return [n for n in self.params if n.startswith(self.prefix)]

    def edit(self, keep: torch.Tensor, extra: dict[str, torch.Tensor] | None,
             extra_count: int = 0) -> None:
        """New rows = old rows where `keep` (bool) followed by `extra[name]` rows."""
        extra = extra or {}
        for group in self.optimizer.param_groups:
            name = group.get("name")
            if name not in self.params or not name.startswith(self.prefix):
                continue
            old = group["params"][0]
            new_rows = extra.get(name)
            data = old.detach()[keep]
            if new_rows is not None:
                data = torch.cat([data, new_rows.to(data.dtype)], 0)
            new = torch.nn.Parameter(data.contiguous(), requires_grad=old.requires_grad)
            state = self.optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        s = state[key][keep]
                        if new_rows is not None:
                            s = torch.cat([s, torch.zeros((new_rows.shape[0],) + s.shape[1:], dtype=s.dtype,
                                                          device=s.device)], 0)
                        state[key] = s.contiguous()
                self.optimizer.state[new] = state
            group["params"] = [new]
            self.params[name] = new
        for name in list(self.buffers):
            if not name.startswith(self.prefix):
                continue
            data = self.buffers[name][keep]
            if name in extra:
                data = torch.cat([data, extra[name].to(data.dtype)], 0)
            self.buffers[name] = data.contiguous()

    def reset_state(self, name: str, rows: torch.Tensor | None = None) -> None:
        p = self.params[name]
        state = self.optimizer.state.get(p)
        if not state:
            return
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                if rows is None:
                    state[key].zero_()
                else:
                    state[key][rows] = 0


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(q.shape[:-1] + (3, 3))


class DensifyStrategy:
    def __init__(self, config: DensifyConfig, scene_scale: float) -> None:
        self.config = config
        self.scene_scale = float(scene_scale)
        self.grad2d: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"grad2d": self.grad2d, "count": self.count, "scene_scale": self.scene_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad2d, self.count = state.get("grad2d"), state.get("count")
        self.scene_scale = float(state.get("scene_scale", self.scene_scale))

    def _ensure(self, n: int, device: torch.device) -> None:
        if self.grad2d is None or self.grad2d.shape[0] != n:
            self.grad2d = torch.zeros(n, device=device)
            self.count = torch.zeros(n, device=device)

    # ---- per step ------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, grads: list[torch.Tensor], means: list[torch.Tensor], cameras: list[Camera],
                   batch_views: int | None = None,
                   reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """grads/means: per camera, (N,3) gradient of the posed world-space centres and the centres.
        `batch_views`: the cameras of the whole batch when these are a share of it; `reduce`
        sums this step's statistics over the ranks that hold the other shares."""
        if not self.config.enabled or not grads:
            return
        n = grads[0].shape[0]
        device = grads[0].device
        self._ensure(n, device)
        ncam = batch_views or len(cameras)
        views = upload(np.stack([np.asarray(c.world_to_camera) for c in cameras]), device)
        step = torch.zeros((2, n), device=device)   # this step's gradient norms and counts
        for g, m, cam, view in zip(grads, means, cameras, views):
            if g is None:
                continue
            gc = g @ view[:3, :3].T
            z = (m @ view[2, :3] + view[2, 3]).clamp_min(1e-6)
            gu = gc[:, 0] * z / cam.fx * (cam.width / 2.0) * ncam
            gv = gc[:, 1] * z / cam.fy * (cam.height / 2.0) * ncam
            norm = torch.sqrt(gu * gu + gv * gv)
            seen = g.abs().sum(-1) > 0
            step[0] += torch.where(seen, norm, torch.zeros_like(norm))
            step[1] += seen.float()
        if reduce is not None:
            step = reduce(step)
        self.grad2d += step[0]
        self.count += step[1]

    def window(self, total: int) -> tuple[int, int]:
        c = self.config
        return int(c.start * total), int(c.stop * total)

    @torch.no_grad()
    def refine(self, step: int, total: int, editor: ParamEditor, generator: torch.Generator) -> RefineReport:
        """Call after the optimizer step of `step` (0-based)."""
        c = self.config
        report = RefineReport()
        if not c.enabled:
            return report
        start, stop = self.window(total)
        s = step + 1
        if start <= s < stop and c.every > 0 and s % c.every == 0 and self.grad2d is not None:
            report = self._grow_and_prune(editor, generator)
            self.grad2d = self.count = None
        if c.reset_every > 0 and start <= s < stop and s % c.reset_every == 0:
            logits = editor.params["free.opacity_logits"]
            cap = math.log(2 * c.prune_opacity / (1 - 2 * c.prune_opacity))
            logits.data.clamp_(max=cap)
            editor.reset_state("free.opacity_logits")
            report.reset = True
        return report

    def _grow_and_prune(self, editor: ParamEditor, generator: torch.Generator) -> RefineReport:
        c = self.config
        p = editor.params
        n = p["free.means"].shape[0]
        device = p["free.means"].device
        if self.grad2d.shape[0] != n:
            return RefineReport()
        avg = self.grad2d / self.count.clamp_min(1.0)
        high = (avg > c.grow_grad2d) & (self.count > 0)
        max_scale = torch.exp(p["free.log_scales"].detach()).max(-1).values
        small = max_scale <= c.grow_scale3d * self.scene_scale
        room = max(0, min(c.max_free - n, int(math.ceil(c.max_growth * n))))
        cand = high.nonzero().squeeze(1)
        # a split adds one net Gaussian, a duplicate one: keep the strongest within the budget
        if cand.numel() > room:
            order = torch.argsort(avg[cand], descending=True, stable=True)
            cand = cand[order[:room]]
        dup = torch.zeros(n, dtype=torch.bool, device=device)
        split = torch.zeros(n, dtype=torch.bool, device=device)
        dup[cand] = small[cand]
        split[cand] = ~small[cand]
        report = RefineReport(duplicated=int(dup.sum()), split=int(split.sum()))

        # new rows: duplicates (copies) then two samples per split Gaussian
        names = editor.names() + [b for b in editor.buffers if b.startswith(editor.prefix)]
        source = {name: (p[name].detach() if name in p else editor.buffers[name]) for name in names}
        extra: dict[str, torch.Tensor] = {name: source[name][dup] for name in names}
        if report.split:
            idx = split.nonzero().squeeze(1)
            scales = torch.exp(source["free.log_scales"][idx])
            rot = quat_to_rotmat(source["free.quats"][idx])
            noise = torch.randn((2, idx.numel(), 3), generator=generator).to(device)
            offsets = torch.einsum("nij,bnj->bni", rot, scales[None] * noise)
            for name in names:
                rows = source[name][idx]
                if name == "free.means":
                    rows2 = (rows[None] + offsets).reshape(-1, 3)
                elif name == "free.log_scales":
                    rows2 = (rows - math.log(1.6)).repeat(2, 1)
                else:
                    rows2 = rows.repeat((2,) + (1,) * (rows.dim() - 1))
                extra[name] = torch.cat([extra[name], rows2], 0)
        opacity = torch.sigmoid(source["free.opacity_logits"])
        prune = (opacity < c.prune_opacity) | (max_scale > c.prune_scale3d * self.scene_scale)
        prune &= ~dup  # never drop what was just copied
        keep = ~(prune | split)
        if int(keep.sum()) + int(extra["free.means"].shape[0]) == 0:  # never empty the set
            prune = torch.zeros_like(prune)
            keep = ~split
        report.pruned = int((prune & ~split).sum())
        editor.edit(keep, extra)
        return report


def scene_scale_of(vertices: torch.Tensor) -> float:
    """Half the diagonal of the rest body's bounding box (about 1 m for an adult)."""
    v = vertices.detach()
    return 0.5 * float(torch.linalg.norm(v.max(0).values - v.min(0).values))

