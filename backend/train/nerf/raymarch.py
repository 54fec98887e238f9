"""Volume rendering of the field through the project's cameras, in pure PyTorch.

Rays: one per pixel centre (OpenCV camera, `backend.render.core.Camera`), with direction
R^T ((u - cx) / fx, (v - cy) / fy, 1), so the ray parameter t is the camera-space depth. Samples:
fixed steps of `step` metres (jittered per ray when a generator is given) inside the box of
occupied cells, kept where the occupancy grid is occupied. Rendering is done twice: without
gradients, to find where each ray's transmittance falls below `t_thresh` (early ray
termination), then with gradients through the samples before that only. Colour composites
over the background: rgb = sum w_i c_i + (1 - sum w_i) bg, w_i = T_i (1 - exp(-sigma_i delta)).
All views are marched together; any resolution (a camera is rescaled to it).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from ...render.core import Camera, RenderOutput
from .field import NeRFField
from .occupancy import OccupancyGrid

QUERY_CHUNK = 1 << 19


@dataclasses.dataclass
class MarchSettings:
    step: float                 # metres between samples
    t_thresh: float = 1e-4
    chunk: int = 1 << 22        # candidate samples per occupancy lookup


def rescaled(camera: Camera, width: int, height: int | None = None) -> Camera:
    """The same camera with its image resized to `width` x `height` (intrinsics scaled)."""
    height = int(round(camera.height * width / camera.width)) if height is None else int(height)
    if width == camera.width and height == camera.height:
        return camera
    sx, sy = width / camera.width, height / camera.height
    k = np.asarray(camera.K, dtype=np.float64) if not torch.is_tensor(camera.K) else camera.K.detach().cpu().double().numpy()
    k = k.copy()
    k[0] *= sx
    k[1] *= sy
    return Camera(world_to_camera=camera.world_to_camera, K=k, width=int(width), height=int(height),
                  near=camera.near, far=camera.far)


def camera_rays(camera: Camera, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin (3,) and directions (H*W, 3) with unit camera-space z, row-major pixels."""
    w2c = camera.viewmat(device, torch.float64)
    k = camera.intrinsics(device, torch.float64)
    v, u = torch.meshgrid(torch.arange(camera.height, device=device, dtype=torch.float64) + 0.5,
                          torch.arange(camera.width, device=device, dtype=torch.float64) + 0.5, indexing="ij")
    d_cam = torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)], -1).reshape(-1, 3)
    rot = w2c[:3, :3]
    origin = -rot.T @ w2c[:3, 3]
    return origin.float(), (d_cam @ rot).float()


def _box_interval(origins: torch.Tensor, dirs: torch.Tensor, box: torch.Tensor, near: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (box[0] - origins) * inv
    t1 = (box[1] - origins) * inv
    t_near = torch.maximum(torch.minimum(t0, t1).max(-1).values, near)
    t_far = torch.maximum(t0, t1).min(-1).values
    return t_near, t_far


@dataclasses.dataclass
class Samples:
    ray: torch.Tensor        # (S,) ray index, sorted, samples of a ray in marching order
    t: torch.Tensor          # (S,) depth
    points: torch.Tensor     # (S, 3)


def march(grid: OccupancyGrid, origins: torch.Tensor, dirs: torch.Tensor, near: torch.Tensor,
          settings: MarchSettings, generator: torch.Generator | None = None) -> Samples:
    """Sample positions in occupied cells along each ray (origins and dirs (R, 3))."""
    device = dirs.device
    empty = Samples(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device),
                    torch.zeros(0, 3, device=device))
    if grid.empty or not len(dirs):
        return empty
    pad = grid.cell * 0.5
    box = torch.stack([grid.box[0] - pad, grid.box[1] + pad])
    t_near, t_far = _box_interval(origins, dirs, box, near)
    norm = torch.linalg.norm(dirs, dim=-1)
    dt = settings.step / norm                                 # depth per step
    steps = torch.ceil((t_far - t_near) / dt).clamp_min(0).long()
    hit = torch.nonzero(steps > 0).squeeze(1)
    if not len(hit):
        return empty
    offset = torch.rand(len(hit), generator=generator, device=device) if generator is not None \
        else torch.full((len(hit),), 0.5, device=device)
    rays, ts, pts = [], [], []
    n_max = int(steps[hit].max())
    per_chunk = max(1, settings.chunk // n_max)
    k = torch.arange(n_max, device=device, dtype=torch.float32)
    for start in range(0, len(hit), per_chunk):
        r = hit[start:start + per_chunk]
        t = t_near[r, None] + (k[None] + offset[start:start + per_chunk, None]) * dt[r, None]
        valid = (k[None] < steps[r, None]) & (t < t_far[r, None])
        x = origins[r, None] + t[..., None] * dirs[r, None]
        valid &= grid.lookup(x.reshape(-1, 3)).reshape(valid.shape)
        ri, ki = torch.nonzero(valid, as_tuple=True)
        rays.append(r[ri])
        ts.append(t[ri, ki])
        pts.append(x[ri, ki])
    return Samples(torch.cat(rays), torch.cat(ts), torch.cat(pts))


def _transmittance(tau: torch.Tensor, ray: torch.Tensor) -> torch.Tensor:
    """exp(-sum of tau over the earlier samples of the same ray), for ray-sorted samples."""
    if not len(tau):
        return tau
    cs = torch.cumsum(tau.double(), 0)
    first = torch.ones_like(ray, dtype=torch.bool)
    first[1:] = ray[1:] != ray[:-1]
    start = torch.nonzero(first).squeeze(1)
    seg = torch.cumsum(first.long(), 0) - 1
    before = (cs - tau.double())[start][seg]                   # cumulative sum before each ray's first sample
    return torch.exp(-(cs - tau.double() - before)).to(tau.dtype)


def _densities(field: NeRFField, points: torch.Tensor) -> torch.Tensor:
    return torch.cat([field.density(c) for c in points.split(QUERY_CHUNK)]) if len(points) else points[:, 0]


def composite(field: NeRFField, samples: Samples, n_rays: int, step: float, t_thresh: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Premultiplied colour (R, 3), opacity (R,) and expected depth (R,), differentiable."""
    device = samples.t.device
    with torch.no_grad():
        tau = _densities(field, samples.points) * step
        alive = _transmittance(tau, samples.ray) > t_thresh
    ray, t, pts = samples.ray[alive], samples.t[alive], samples.points[alive]
    rgb = torch.zeros(n_rays, 3, device=device)
    opacity = torch.zeros(n_rays, device=device)
    depth = torch.zeros(n_rays, device=device)
    if not len(ray):
        return rgb, opacity, depth
    sigma, color = field.query(pts)
    tau = sigma * step
    w = _transmittance(tau, ray) * (1.0 - torch.exp(-tau))
    rgb = rgb.index_add(0, ray, w[:, None] * color)
    opacity = opacity.index_add(0, ray, w)
    depth = depth.index_add(0, ray, w * t)
    return rgb, opacity, depth


def render_views(field: NeRFField, grid: OccupancyGrid, cameras: Sequence[Camera], settings: MarchSettings,
                 backgrounds: torch.Tensor | None = None, background: float = 0.5,
                 generator: torch.Generator | None = None, resolution: int | None = None) -> RenderOutput:
    """Render the field through cameras of one size (or all rescaled to `resolution` wide);
    rgb (V, H, W, 3) over the backgrounds ((V, 3), default `background` grey), alpha and depth
    (V, H, W, 1), differentiable in the field's parameters."""
    device = field.device
    cams = [rescaled(c, resolution) if resolution else c for c in cameras]
    sizes = {(c.width, c.height) for c in cams}
    if len(sizes) != 1:
        raise ValueError(f"render_views needs cameras of one size; got {sorted(sizes)}")
    w, h = sizes.pop()
    origins, dirs, nears = [], [], []
    for cam in cams:
        o, d = camera_rays(cam, device)
        origins.append(o.expand_as(d))
        dirs.append(d)
        nears.append(torch.full((len(d),), float(cam.near), device=device))
    o, d, near = torch.cat(origins), torch.cat(dirs), torch.cat(nears)
    samples = march(grid, o, d, near, settings, generator)
    rgb, alpha, depth = composite(field, samples, len(d), settings.step, settings.t_thresh)
    if backgrounds is None:
        bg = torch.full((len(cams), 3), float(background), device=device)
    else:
        bg = torch.as_tensor(backgrounds, dtype=torch.float32, device=device).reshape(len(cams), 3)
    v = len(cams)
    rgb = rgb.reshape(v, h, w, 3) + (1.0 - alpha.reshape(v, h, w, 1)) * bg[:, None, None, :]
    alpha = alpha.reshape(v, h, w, 1)
    depth = torch.where(alpha > 1e-6, depth.reshape(v, h, w, 1) / alpha.clamp_min(1e-6), torch.zeros_like(alpha))
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)
