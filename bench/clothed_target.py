"""The capacity benchmark's target: the open template dressed in a flared skirt and long hair.

Everything is made of free Gaussians in the template's rest space, skinned like the avatar's:

* the body: the template avatar's Gaussians (another seed and count than any recipe starts
  from) recoloured as a shirt on the torso and upper arms, shoes on the feet, skin elsewhere;
* a skirt: an A-line cone from the waist (10 cm above the pelvis joint) to 10 cm above the
  knees, flaring from the hips' width to 30 x 25 cm half-axes at the hem, pleated in colour with
  a gold hem band; skinned to the pelvis at the waist and, further down, more and more to the
  hip of its side (70 % at the hem), so it swings with the legs;
* long hair: a cap 1.2 cm off the skull (top, sides and back, not the face) and a curtain that
  hangs from the back of the head to the shoulder blades, 2-4 cm off the neck and back, with
  streaks; the cap and the curtain's top follow the head, its lower end the upper back (spine3).

Neither the skirt nor the hair touches the skin: both stand off it, which is what Gaussians
started on the skin must grow into and what the NeRF stage exists for. `labels` says which
part each Gaussian belongs to, so the benchmark can render the body without either part and
find the pixels only the skirt (or the hair) covers.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from backend.avatar import Avatar, AvatarMeta, FreeGaussians, init_template_avatar
from backend.avatar.template_init import MANNEQUIN_COLOR
from backend.avatar.posing import matrix_to_quaternion
from backend.body.joints import JOINT_INDEX
from backend.train.nerf.mesh import sample_surface

PARTS = ("body", "skirt", "hair")
SHIRT, SHOES = (0.16, 0.45, 0.55), (0.10, 0.10, 0.12)
SKIRT, HEM, HAIR = (0.72, 0.12, 0.20), (0.95, 0.80, 0.25), (0.26, 0.15, 0.07)
SHIRT_JOINTS = ("spine1", "spine2", "spine3", "left_collar", "right_collar", "left_shoulder", "right_shoulder")
SHOE_JOINTS = ("left_ankle", "right_ankle", "left_foot", "right_foot")
HEAD = JOINT_INDEX["head"]
LIGHT = np.array([0.3, 0.6, 0.75]) / np.linalg.norm([0.3, 0.6, 0.75])   # the template's baked light


@dataclasses.dataclass
class ClothedTarget:
    avatar: Avatar            # all Gaussians (the mesh-bound hands included)
    labels: torch.Tensor      # (N_free,) index into PARTS, per free Gaussian

    def without(self, part: str) -> Avatar:
        """The target minus one part (for the pixels only that part covers)."""
        keep = self.labels != PARTS.index(part)
        f = self.avatar.free
        free = FreeGaussians(**{fl.name: getattr(f, fl.name)[keep] for fl in dataclasses.fields(FreeGaussians)})
        return dataclasses.replace(self.avatar, free=free, cache={})

    def counts(self) -> dict[str, int]:
        out = {p: int((self.labels == i).sum()) for i, p in enumerate(PARTS)}
        out["body"] += len(self.avatar.bound)
        return out


@dataclasses.dataclass
class Sheet:
    """Gaussians on a surface: positions, unit normals, area per Gaussian, colours, skinning."""

    points: np.ndarray
    normals: np.ndarray
    area: float
    colors: np.ndarray
    joints: np.ndarray        # (N, 4)
    weights: np.ndarray       # (N, 4)


def _frames(normals: np.ndarray) -> torch.Tensor:
    """Rotations whose third axis is the normal (a disc lies in the surface)."""
    n = torch.as_tensor(normals, dtype=torch.float64)
    helper = torch.where((n[:, 1:2].abs() < 0.9), torch.tensor([[0.0, 1.0, 0.0]], dtype=n.dtype),
                         torch.tensor([[1.0, 0.0, 0.0]], dtype=n.dtype))
    t1 = torch.nn.functional.normalize(torch.cross(helper, n, dim=1), dim=1)
    t2 = torch.cross(n, t1, dim=1)
    return torch.stack([t1, t2, n], -1)


def _lit(colors: np.ndarray, normals: np.ndarray) -> np.ndarray:
    return colors * (0.6 + 0.4 * np.clip(normals @ LIGHT, 0.0, 1.0))[:, None]


def _free(sheet: Sheet) -> FreeGaussians:
    n = len(sheet.points)
    radius = math.sqrt(sheet.area / max(n, 1)) * 0.8
    return FreeGaussians(
        means=torch.as_tensor(sheet.points, dtype=torch.float32),
        quats=matrix_to_quaternion(_frames(sheet.normals)).float(),
        log_scales=torch.log(torch.tensor([[radius, radius, radius * 0.3]])).repeat(n, 1),
        opacity_logits=torch.full((n,), 3.0),
        colors=torch.as_tensor(np.clip(_lit(sheet.colors, sheet.normals), 0, 1), dtype=torch.float32),
        skin_joints=torch.as_tensor(sheet.joints, dtype=torch.int64),
        skin_weights=torch.as_tensor(sheet.weights, dtype=torch.float32))


def _skin(*pairs: tuple[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Four-influence skinning from (joint, weight per point) pairs (normalised)."""
    n = len(pairs[0][1])
    joints = np.zeros((n, 4), np.int64)
    weights = np.zeros((n, 4))
    for k, (j, w) in enumerate(pairs):
        joints[:, k], weights[:, k] = j, w
    return joints, weights / weights.sum(1, keepdims=True)


def _surface(param, count: int, rng: np.random.Generator, grid: int = 256) -> tuple[np.ndarray, np.ndarray, float]:
    """`count` area-uniform samples of a parametric surface p(s, t) over [0, 1]^2: points, normals
    (the cross product of the partials, as `param` orients it) and the total area."""
    s, t = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
    eps = 1e-4
    ds = (param(s + eps, t) - param(s - eps, t)) / (2 * eps)
    dt = (param(s, t + eps) - param(s, t - eps)) / (2 * eps)
    density = np.linalg.norm(np.cross(ds, dt), axis=-1).reshape(-1)
    area = float(density.mean())
    cell = rng.choice(density.size, size=count, p=density / density.sum())
    su = (cell // grid + rng.random(count)) / grid
    tu = (cell % grid + rng.random(count)) / grid
    p = param(su, tu)
    n = np.cross((param(su + eps, tu) - param(su - eps, tu)), (param(su, tu + eps) - param(su, tu - eps)))
    return p, n / np.linalg.norm(n, axis=-1, keepdims=True), area


def skirt(count: int, rng: np.random.Generator) -> Sheet:
    top, bottom, cz = 0.10, -0.40, -0.005
    (rx0, rz0), (rx1, rz1) = (0.155, 0.12), (0.30, 0.25)

    def param(s: np.ndarray, t: np.ndarray) -> np.ndarray:   # s: around (from +Z), t: down
        theta = 2 * math.pi * s
        rx, rz = rx0 + (rx1 - rx0) * t, rz0 + (rz1 - rz0) * t
        return np.stack([rx * np.sin(theta), top + (bottom - top) * t, cz + rz * np.cos(theta)], -1)

    points, normals, area = _surface(param, count, rng)
    theta = np.arctan2(points[:, 0], points[:, 2] - cz)
    t = (top - points[:, 1]) / (top - bottom)
    pleats = 0.78 + 0.22 * np.cos(12 * theta)
    colors = np.array(SKIRT)[None] * pleats[:, None]
    colors[t > 0.9] = HEM
    side = 1.0 / (1.0 + np.exp(-points[:, 0] / 0.04))
    leg = 0.7 * t
    joints, weights = _skin((JOINT_INDEX["pelvis"], 1.0 - leg + 1e-6), (JOINT_INDEX["left_hip"], leg * side + 1e-6),
                            (JOINT_INDEX["right_hip"], leg * (1.0 - side) + 1e-6))
    return Sheet(points, normals, area, colors, joints, weights)


def hair_curtain(count: int, rng: np.random.Generator) -> Sheet:
    y_top, y_bottom = 0.64, 0.24

    def param(s: np.ndarray, t: np.ndarray) -> np.ndarray:   # s: across (its right to left), t: down
        y = y_top + (y_bottom - y_top) * t
        x = (0.07 + 0.05 * t) * (2 * s - 1)
        ramp = np.clip((0.62 - y) / 0.12, 0, 1)
        z = -0.09 - 0.04 * ramp * ramp * (3 - 2 * ramp) + 1.0 * x * x
        return np.stack([x, y, z], -1)

    points, normals, area = _surface(param, count, rng)
    normals = normals * np.sign(-normals[:, 2:3] + 1e-9)   # facing away from the back
    u = points[:, 0] / (0.07 + 0.05 * (y_top - points[:, 1]) / (y_top - y_bottom))
    colors = np.array(HAIR)[None] * (0.8 + 0.25 * np.sin(9 * math.pi * u))[:, None]
    head = np.clip((points[:, 1] - 0.40) / (0.62 - 0.40), 0, 1)
    joints, weights = _skin((HEAD, head + 1e-6), (JOINT_INDEX["spine3"], 1.0 - head + 1e-6))
    return Sheet(points, normals, area, colors, joints, weights)


def hair_cap(body, rest: np.ndarray, count: int, rng: np.random.Generator) -> Sheet:
    """On the skull's triangles (head-skinned, not the face, above the ears or behind them),
    1.2 cm out along the normal."""
    faces = np.asarray(body.faces)
    regions = body.regions()
    dominant = body.skinning_weights.argmax(1).cpu().numpy()
    head = rest[faces].mean(1)
    on_head = (dominant[faces] == HEAD).all(1) & ~regions["face"][faces].any(1)
    cap = on_head & ((head[:, 1] > 0.70) | (head[:, 2] < 0.03)) & (head[:, 1] > 0.57)
    s = sample_surface(rest, faces[cap], count, rng)
    points = s.points + 0.012 * s.normals
    tri = rest[faces[cap]]
    area = float(0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())
    colors = np.array(HAIR)[None] * (0.8 + 0.25 * np.sin(60 * points[:, 0]))[:, None]
    joints, weights = _skin((HEAD, np.ones(len(points))))
    return Sheet(points, s.normals, area, colors, joints, weights)


def _dress_body(avatar: Avatar) -> None:
    """Shirt and shoes on the template's free Gaussians, by their strongest joint (the baked
    light of the mannequin kept)."""
    f = avatar.free
    shade = (f.colors[:, 0] / MANNEQUIN_COLOR[0]).clamp(0, 1.5)[:, None]
    dominant = f.skin_joints[torch.arange(len(f)), f.skin_weights.argmax(1)]
    for names, color in ((SHIRT_JOINTS, SHIRT), (SHOE_JOINTS, SHOES)):
        mask = torch.isin(dominant, torch.tensor([JOINT_INDEX[n] for n in names]))
        f.colors[mask] = torch.tensor(color) * shade[mask]


def _count(density: float, make) -> int:
    """Gaussians for a sheet at `density` per square metre (its area from a small probe)."""
    return max(16, int(density * make(256, np.random.default_rng(0)).area))


def build_target(body, betas=None, density: float = 20_000.0, seed: int = 7) -> ClothedTarget:
    """The clothed target with about `density` Gaussians per square metre of surface."""
    rng = np.random.default_rng([seed, 0xC107])
    betas_t = body.betas_vector(betas)
    rest = body.shaped_vertices(betas_t).detach().cpu().double().numpy()
    faces = np.asarray(body.faces)
    tri = rest[faces]
    body_area = float(0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum())
    base = init_template_avatar(body, max(64, int(density * body_area)), seed=seed, betas=betas_t).to("cpu")
    _dress_body(base)
    sheets = {"skirt": [skirt(_count(density, skirt), rng)],
              "hair": [hair_cap(body, rest, _count(density, lambda n, g: hair_cap(body, rest, n, g)), rng),
                       hair_curtain(_count(density, hair_curtain), rng)]}
    free = [base.free]
    labels = [torch.zeros(len(base.free), dtype=torch.int64)]
    for part, group in sheets.items():
        for sheet in group:
            free.append(_free(sheet))
            labels.append(torch.full((len(sheet.points),), PARTS.index(part), dtype=torch.int64))
    merged = FreeGaussians(**{fl.name: torch.cat([getattr(g, fl.name) for g in free])
                              for fl in dataclasses.fields(FreeGaussians)})
    meta = AvatarMeta(name="clothed-target", seed=seed, provenance={"made_by": "bench/clothed_target.py"})
    avatar = Avatar(body=body, betas=betas_t.detach().cpu(), free=merged, bound=base.bound, meta=meta)
    return ClothedTarget(avatar=avatar.to(body.device), labels=torch.cat(labels).to(body.device))
