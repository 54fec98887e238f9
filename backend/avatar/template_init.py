"""A template avatar: Gaussians covering the body surface with a plain mannequin appearance.

It is where training starts (the template-initialisation stage) and what the demo renders when
no trained avatar exists. Hands and face get mesh-bound Gaussians, the rest free ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .gaussians import SKIN_INFLUENCES, Avatar, AvatarMeta, BoundGaussians, FreeGaussians
from .posing import matrix_to_quaternion, triangle_frames

MANNEQUIN_COLOR = (0.80, 0.66, 0.50)
EYE_COLOR = (0.08, 0.07, 0.07)


class AvatarInitError(ValueError):
    pass


def _sample_triangles(areas: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted triangle choice and uniform barycentrics."""
    faces = rng.choice(len(areas), size=count, p=areas / areas.sum())
    r1, r2 = rng.random(count), rng.random(count)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)
    return faces, bary


def _top_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-weights, axis=1)[:, :SKIN_INFLUENCES]
    w = np.take_along_axis(weights, idx, axis=1)
    return idx, w / np.maximum(w.sum(1, keepdims=True), 1e-12)


def _colors(dominant_joint: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Mannequin colour with soft light baked in from the front and above, so form reads."""
    light = np.array([0.3, 0.6, 0.75])
    shade = 0.6 + 0.4 * np.clip(normals @ (light / np.linalg.norm(light)), 0.0, 1.0)
    colors = np.array(MANNEQUIN_COLOR)[None] * shade[:, None]
    colors[np.isin(dominant_joint, (23, 24))] = EYE_COLOR
    return colors


def init_template_avatar(body, num_gaussians: int = 100_000, seed: int = 0, betas=None,
                         bound_fraction: float = 0.25) -> Avatar:
    """Cover the shaped body surface with `num_gaussians` flat Gaussians (discs on the skin)."""
    if num_gaussians < 1:
        raise AvatarInitError(f"an avatar needs at least one Gaussian; got {num_gaussians}")
    rng = np.random.default_rng(seed)
    betas_t = body.betas_vector(betas)
    verts = body.shaped_vertices(betas_t).detach().cpu().numpy().astype(np.float64)
    faces = body.faces
    tri = verts[faces]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    weights = body.skinning_weights.detach().cpu().numpy()
    regions = body.regions()
    bound_tri = regions["hands"][faces].all(1) | regions["face"][faces].all(1)
    n_bound = int(round(num_gaussians * bound_fraction)) if bound_tri.any() else 0
    n_bound = min(n_bound, num_gaussians - 1) if num_gaussians > 1 else 0
    n_free = num_gaussians - n_bound

    radius = math.sqrt(areas.sum() / num_gaussians) * 0.7
    free_areas = np.where(bound_tri, 0.0, areas)
    f_idx, f_bary = _sample_triangles(free_areas, n_free, rng)
    points = np.einsum("nk,nkc->nc", f_bary, tri[f_idx])
    w = np.einsum("nk,nkj->nj", f_bary, weights[faces[f_idx]])
    skin_idx, skin_w = _top_weights(w)
    _, frames = triangle_frames(torch.as_tensor(verts), torch.as_tensor(faces[f_idx]))
    free = FreeGaussians(
        means=torch.as_tensor(points, dtype=torch.float32),
        quats=matrix_to_quaternion(frames).float(),
        log_scales=torch.log(torch.tensor([[radius, radius, radius * 0.3]])).repeat(n_free, 1),
        opacity_logits=torch.full((n_free,), 2.5),
        colors=torch.as_tensor(_colors(skin_idx[:, 0], frames[:, :, 2].numpy()), dtype=torch.float32),
        skin_joints=torch.as_tensor(skin_idx, dtype=torch.int64),
        skin_weights=torch.as_tensor(skin_w, dtype=torch.float32),
    )
    b_idx, b_bary = _sample_triangles(np.where(bound_tri, areas, 0.0) if n_bound else areas, n_bound, rng)
    b_radius = radius * 0.6
    dominant = np.einsum("nk,nkj->nj", b_bary, weights[faces[b_idx]]).argmax(1) if n_bound else np.zeros(0, int)
    _, b_frames = triangle_frames(torch.as_tensor(verts), torch.as_tensor(faces[b_idx]))
    bound = BoundGaussians(
        faces=torch.as_tensor(b_idx, dtype=torch.int64),
        barycentric=torch.as_tensor(b_bary, dtype=torch.float32),
        offsets=torch.zeros(n_bound, 3),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n_bound, 1),
        log_scales=torch.log(torch.tensor([[b_radius, b_radius, b_radius * 0.3]])).repeat(n_bound, 1),
        opacity_logits=torch.full((n_bound,), 2.5),
        colors=torch.as_tensor(_colors(dominant, b_frames[:, :, 2].numpy()), dtype=torch.float32).reshape(n_bound, 3),
    )
    meta = AvatarMeta(name="template", prompt="", seed=seed,
                      settings={"num_gaussians": num_gaussians, "bound_fraction": bound_fraction},
                      provenance={"made_by": "backend avatar init", "appearance": "plain mannequin"})
    return Avatar(body=body, betas=betas_t.detach().clone(), free=free, bound=bound, meta=meta).to(body.device)
