"""The body-shaped starting field: the NeRF fitted to the body model, without diffusion, cached.

The original starts Stage I from an Instant-NGP trained per body model. Here the field is fitted
to the canonical (posed) body directly:

* occupancy: at random points (in the cube, in the body's box, near the skin), with the body's
  inside-ness o (the mesh voxelised by winding number, `mesh.voxelize`, trilinearly
  interpolated), the raw density is pushed above +RAW_MARGIN inside and below -RAW_MARGIN
  outside: o relu(m - raw)^2 + (1 - o) relu(raw + m)^2, the sigma-prior's margin form (an
  opacity loss would leave a fog: its gradient vanishes as the density goes to zero);
* colour: just under the skin, the colour of the template avatar's Gaussian there;
* photometric: after the first third of the steps (when the occupancy grid first sees a body),
  renders of the field under the training cameras are fitted to the project's rasterizer's
  renders of the template avatar over random backgrounds (so opacity is fitted too).

The result is cached in the template's cache (`$DREAMWALTZ_CACHE`) under a key made of the body
model's content (sha256), the betas, the canonical pose and every setting that shapes the
field, and records the body model it was made from: `load_cached` refuses one made from
another (one `NeRFCacheError` naming the file), it is never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...body.template import cache_dir
from ...files import write_torch_atomic
from ...render import rasterize_views
from ...render.torch_rasterizer import quat_to_rotmat
from ..batches import background_color, pose_body
from ..cameras import CameraConfig, CameraSampler
from .config import NeRFConfig
from .field import NeRFField
from .mesh import voxelize
from .occupancy import OccupancyGrid
from .raymarch import MarchSettings, render_views

log = logging.getLogger(__name__)

PRETRAIN_VERSION = 1
CACHE_FORMAT = "dreamwaltz-nerf-body"
RAW_MARGIN = 7.0       # raw density: exp(7) ~ 1100 per metre (opaque within 5 mm) inside, exp(-7) outside
PRETRAIN_SEED = 0      # one pretrained field per body model, whatever the run's seed
# the settings that shape the pretrained field (the cache key holds them)
SHAPING = ("levels", "features", "log2_table", "base_resolution", "finest_per_bound", "interpolation", "hidden",
           "layers", "padding", "grid_size", "density_thresh", "decay", "max_steps", "t_thresh", "pretrain_steps",
           "pretrain_views", "pretrain_resolution", "pretrain_points", "pretrain_gaussians", "pretrain_voxels", "pretrain_lr",
           "grid_lr_scale", "update_every", "pretrain_photometric_from")


class NeRFCacheError(ValueError):
    """A pretrained-field file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass
class CanonicalBody:
    """The body in the stage's pose: what the field is fitted to and lives around."""

    vertices: torch.Tensor     # (V, 3)
    joints: torch.Tensor       # (55, 3)
    transforms: torch.Tensor   # (55, 4, 4) rest -> canonical
    rotations: torch.Tensor    # (55, 3, 3)
    faces: torch.Tensor        # (F, 3)

    @classmethod
    def pose(cls, body, betas: torch.Tensor, params: dict[str, Any]) -> "CanonicalBody":
        posed = pose_body(body, betas, params)
        return cls(posed["vertices"], posed["joints"], posed["transforms"], posed["rotations"],
                   torch.as_tensor(np.asarray(body.faces), device=body.device))


def field_cube(vertices: torch.Tensor, padding: float) -> tuple[torch.Tensor, float]:
    """Centre and half-side of the cube around the body plus `padding` metres."""
    lo, hi = vertices.min(0).values, vertices.max(0).values
    return 0.5 * (lo + hi), float(0.5 * (hi - lo).max()) + float(padding)


def make_grid(config: NeRFConfig, field: NeRFField) -> OccupancyGrid:
    return OccupancyGrid(config.grid_size, field.centre, float(field.bound), config.density_thresh, config.decay)


def march_settings(config: NeRFConfig, field: NeRFField) -> MarchSettings:
    return MarchSettings(step=config.step_size(float(field.bound)), t_thresh=config.t_thresh, chunk=config.chunk)


def adam(config: NeRFConfig, field: NeRFField) -> torch.optim.Adam:
    """The pretraining's optimizer (betas and epsilon as the original's NeRF)."""
    lr = config.pretrain_lr
    groups = [{"params": field.grid_parameters(), "lr": lr * config.grid_lr_scale, "name": "nerf.grid"},
              {"params": field.mlp_parameters(), "lr": lr, "name": "nerf.mlp"}]
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR of images (..., 3) in [0, 1]; with `mask` (..., 1), over the masked pixels only
    (the body: a background that fills most of a full-body view would flatter any result)."""
    err = (a.float() - b.float()) ** 2
    mse = float(err.mean()) if mask is None else float((err * mask).sum() / (3 * mask.sum()).clamp_min(1))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def silhouette(*alphas: torch.Tensor, level: float = 0.02) -> torch.Tensor:
    """Pixels where any of the renders is not background."""
    return torch.stack([a > level for a in alphas]).any(0).float()


class BodyTargets:
    """What the pretraining fits: voxelised inside-ness, skin colours and template renders."""

    def __init__(self, config: NeRFConfig, body, betas: torch.Tensor, canonical: CanonicalBody,
                 field: NeRFField) -> None:
        from ...avatar.posing import pose_with_transforms
        from ..stages import template_avatar

        self.config = config
        v = canonical.vertices.detach()
        margin = 0.05
        lo = (v.min(0).values - margin).cpu().numpy()
        hi = (v.max(0).values + margin).cpu().numpy()
        self.voxels = voxelize(v.cpu().numpy(), np.asarray(body.faces), lo, hi, config.pretrain_voxels)
        self.box = torch.tensor(np.stack([lo, hi]), dtype=torch.float32, device=v.device)
        inside = np.argwhere(self.voxels.inside)
        self.inside = torch.as_tensor(self.voxels.origin + (inside + 0.5) * self.voxels.spacing,
                                      dtype=torch.float32, device=v.device)
        avatar = template_avatar(body, config.pretrain_gaussians, PRETRAIN_SEED, betas, 0.25, expression=True)
        with torch.no_grad():
            self.gaussians = pose_with_transforms(avatar, canonical.transforms, None, canonical.rotations)
        self.normals = quat_to_rotmat(self.gaussians.quats)[:, :, 2]
        self.canonical = canonical
        self.cameras = CameraSampler(CameraConfig(), config.pretrain_resolution, config.pretrain_resolution)
        self.cube = (field.centre, float(field.bound))

    def occupancy_points(self, n: int, gen: torch.Generator) -> torch.Tensor:
        device = self.box.device
        centre, bound = self.cube
        k = n // 4
        cube = centre + (torch.rand(k, 3, generator=gen, device=device) * 2 - 1) * bound
        box = self.box[0] + torch.rand(k, 3, generator=gen, device=device) * (self.box[1] - self.box[0])
        cell = torch.randint(0, len(self.inside), (k,), generator=gen, device=device)
        inside = self.inside[cell] + (torch.rand(k, 3, generator=gen, device=device) - 0.5) * self.voxels.spacing
        pick = torch.randint(0, len(self.gaussians), (n - 3 * k,), generator=gen, device=device)
        near = self.gaussians.means[pick] + torch.randn(n - 3 * k, 3, generator=gen, device=device) * 0.02
        return torch.cat([cube, box, inside, near])

    def colour_points(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.box.device
        pick = torch.randint(0, len(self.gaussians), (n,), generator=gen, device=device)
        depth = torch.rand(n, 1, generator=gen, device=device) * 0.01
        return self.gaussians.means[pick] - depth * self.normals[pick], self.gaussians.colors[pick]

    def views(self, rng: np.random.Generator, count: int) -> tuple[list, torch.Tensor]:
        c = self.canonical
        views = [self.cameras.sample(rng, c.vertices, c.joints, c.transforms, kind="body") for _ in range(count)]
        bgs = torch.as_tensor(np.stack([background_color("random", rng) for _ in views]), dtype=torch.float32,
                              device=c.vertices.device)
        return [v.camera for v in views], bgs

    def render(self, cameras: list, backgrounds: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = rasterize_views([self.gaussians] * len(cameras), cameras, backgrounds=backgrounds, depth=False)
        return out.rgb


def fit_body(config: NeRFConfig, body, betas: torch.Tensor, canonical: CanonicalBody, device: torch.device,
             progress: Callable[[int, int], None] | None = None) -> tuple[NeRFField, OccupancyGrid, dict[str, Any]]:
    """Fit a new field to the canonical body (see the module docstring); returns the field, its
    occupancy grid and a report (losses and the PSNR against template renders of held-out views)."""
    centre, bound = field_cube(canonical.vertices, config.padding)
    field = NeRFField(config, centre, bound, device, seed=PRETRAIN_SEED)
    grid = make_grid(config, field)
    targets = BodyTargets(config, body, betas, canonical, field)
    opt = adam(config, field)
    march = march_settings(config, field)
    gen = torch.Generator(device=device).manual_seed(PRETRAIN_SEED)
    rng = np.random.default_rng(PRETRAIN_SEED)
    steps = int(config.pretrain_steps)
    photometric_from = int(steps * config.pretrain_photometric_from)
    history = []
    for step in range(steps):
        if step >= photometric_from and (step - photometric_from) % config.update_every == 0:
            grid.update(field, gen, full=step == photometric_from)
        pts = targets.occupancy_points(config.pretrain_points, gen)
        occ = targets.voxels.sample(pts)
        raw = field.raw(pts)[:, 0]
        loss = (occ * torch.relu(RAW_MARGIN - raw) ** 2 + (1 - occ) * torch.relu(raw + RAW_MARGIN) ** 2).mean()
        cpts, ccol = targets.colour_points(config.pretrain_points // 4, gen)
        loss = loss + F.mse_loss(field.query(cpts)[1], ccol)
        if step >= photometric_from:
            cams, bgs = targets.views(rng, config.pretrain_views)
            image = render_views(field, grid, cams, march, backgrounds=bgs, generator=gen).rgb
            loss = loss + F.mse_loss(image, targets.render(cams, bgs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, "loss": float(loss.detach())})
        if progress is not None:
            progress(step + 1, steps)
    grid.update(field, gen)
    report = {"history": history, "psnr": evaluate(config, field, grid, targets)}
    log.info("pretrained the body field: PSNR %.2f dB against the template's renders", report["psnr"])
    return field, grid, report


@torch.no_grad()
def evaluate(config: NeRFConfig, field: NeRFField, grid: OccupancyGrid, targets: BodyTargets, views: int = 4) -> float:
    """PSNR over the body's pixels (either silhouette) of the field's renders against the
    template's, held-out body views, grey background."""
    rng = np.random.default_rng([PRETRAIN_SEED, 0xE7A1])
    cams, _ = targets.views(rng, views)
    bgs = torch.full((len(cams), 3), config.background, device=field.device)
    image = render_views(field, grid, cams, march_settings(config, field), backgrounds=bgs)
    with torch.no_grad():
        target = rasterize_views([targets.gaussians] * len(cams), cams, backgrounds=bgs)
    return psnr(image.rgb, target.rgb, silhouette(image.alpha, target.alpha))


# ------------------------------------------------------------------------------------------------
# the cache
# ------------------------------------------------------------------------------------------------

def _shaping(config: NeRFConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in SHAPING}


def _code_digest() -> str:
    """The code that makes the field (like the template's cache, keyed by its generator's source)."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in (here / "pretrain.py", here / "field.py", here / "mesh.py", here / "raymarch.py",
                 here.parents[1] / "fields" / "hashgrid.py", here.parents[1] / "fields" / "mlp.py"):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_key(config: NeRFConfig, body, betas: torch.Tensor, params: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": PRETRAIN_VERSION, "code": _code_digest(), "body": body.identity["content_sha256"],
                         "config": _shaping(config)}, sort_keys=True).encode())
    h.update(np.asarray(betas.detach().cpu(), dtype=np.float32).tobytes())
    for name in sorted(params):
        h.update(name.encode())
        h.update(np.asarray(params[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def cache_path(config: NeRFConfig, body, betas: torch.Tensor, params: dict[str, Any]) -> Path:
    return cache_dir() / f"nerf_body_v{PRETRAIN_VERSION}_{cache_key(config, body, betas, params)[:16]}.pt"


def save_cached(path: Path, config: NeRFConfig, body, betas: torch.Tensor, field: NeRFField, grid: OccupancyGrid,
                report: dict[str, Any]) -> Path:
    payload = {"format": CACHE_FORMAT, "version": PRETRAIN_VERSION, "body": dict(body.identity),
               "betas": betas.detach().cpu().float(), "config": _shaping(config),
               "field": {k: v.detach().cpu() for k, v in field.state_dict().items()},
               "grid": {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in grid.state_dict().items()},
               "psnr": float(report["psnr"])}
    write_torch_atomic(path, payload)
    return path


def load_cached(path: Path, config: NeRFConfig, body, betas: torch.Tensor, device: torch.device
                ) -> tuple[NeRFField, OccupancyGrid, dict[str, Any]]:
    """A pretrained field from `path`, checked against the body model, betas and settings."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a foreign or damaged file
        raise NeRFCacheError(f"{path} is not a readable pretrained body field ({type(exc).__name__}: {exc}); "
                             "delete it and it will be made again") from exc
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise NeRFCacheError(f"{path} is not a pretrained body field")
    made = data.get("body") or {}
    if made.get("content_sha256") != body.identity["content_sha256"]:
        raise NeRFCacheError(f"{path} is a pretrained body field of another body model ({made.get('name')}, "
                             f"content sha256 {str(made.get('content_sha256'))[:12]}), not of {body.identity['name']} "
                             f"(content sha256 {body.identity['content_sha256'][:12]}); delete it, or use the body "
                             "model it was made from")
    if not torch.equal(data["betas"].float(), betas.detach().cpu().float()):
        raise NeRFCacheError(f"{path} is a pretrained body field of another body shape (betas); delete it")
    if data.get("config") != _shaping(config):
        diff = sorted(k for k, v in _shaping(config).items() if (data.get("config") or {}).get(k) != v)
        raise NeRFCacheError(f"{path} was pretrained with other NeRF settings ({', '.join(diff)}); delete it")
    fs = data["field"]
    field = NeRFField(config, fs["centre"], float(fs["bound"]), device, seed=PRETRAIN_SEED)
    field.load_state_dict(fs)
    grid = make_grid(config, field)
    grid.load_state_dict(data["grid"])
    return field, grid, {"psnr": data.get("psnr")}


def pretrained_field(config: NeRFConfig, body, betas: torch.Tensor, params: dict[str, Any], device: torch.device,
                     cache: bool = True, progress: Callable[[int, int], None] | None = None
                     ) -> tuple[NeRFField, OccupancyGrid, dict[str, Any]]:
    """The body-shaped field for this body model, shape and canonical pose: from the cache, or
    fitted now (and cached)."""
    path = cache_path(config, body, betas, params)
    if cache and path.exists():
        field, grid, report = load_cached(path, config, body, betas, device)
        report["cache"] = str(path)
        return field, grid, report
    canonical = CanonicalBody.pose(body, betas, params)
    log.info("pretraining the NeRF on the body model %s (%d steps; cached in %s)", body.identity["name"],
             config.pretrain_steps, path)
    field, grid, report = fit_body(config, body, betas, canonical, device, progress)
    if cache:
        save_cached(path, config, body, betas, field, grid, report)
        report["cache"] = str(path)
    return field, grid, report
