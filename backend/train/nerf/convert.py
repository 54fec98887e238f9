"""NeRF -> Gaussians: the field's density on a grid becomes the avatar's free Gaussians.

1. The field is queried on a regular grid over the occupied box (`convert_resolution` points on
   its longest side; the paper's 400^3): points whose density exceeds the threshold (the
   occupancy grid's min(mean, density_thresh), as the original) become Gaussians.
2. Each is isotropic with standard deviation `convert_scale` x the spacing h (1/sqrt(2 pi) h:
   then one layer of the lattice, seen along any axis, sums to the Gaussian's opacity, which is
   the opacity of a slab h thick, 1 - exp(-sigma h)); its colour is the field's there.
3. Free points near the mesh-bound parts go: within 10 cm of the hands and (with expression
   control) 1 cm of the face, measured to the nearest body triangle, as the original.
4. Skinning weights are the barycentric blend of the nearest triangle's vertex weights; points
   more than 1 cm off the surface then average their k = 30 nearest neighbours' weights
   (weights 1 / (neighbour's distance to the mesh x distance), `skin_smooth_iters` times), so
   a skirt follows both legs, not the nearer one. The top four joints are kept.
5. Positions go from the canonical pose to the rest pose by inverting each point's blended
   skinning transform. The mesh-bound Gaussians are the template's (hands; face with expression
   control), coloured by the field at their canonical positions.
"""

from __future__ import annotations

import dataclasses
import math
import torch

from ...avatar import Avatar, AvatarMeta, BoundGaussians, FreeGaussians
from ...avatar.gaussians import SKIN_INFLUENCES
from ...avatar.posing import pose_bound, rest_state
from .mesh import nearest_triangles
from .prior import part_faces

QUERY_CHUNK = 1 << 18


@dataclasses.dataclass
class GridPoints:
    points: torch.Tensor     # (N, 3) canonical positions
    index: torch.Tensor      # (N, 3) integer grid coordinates
    sigma: torch.Tensor      # (N,)
    colors: torch.Tensor     # (N, 3)
    spacing: float


@torch.no_grad()
def dense_points(field, grid, resolution: int, threshold: float | None, density_thresh: float) -> GridPoints:
    """Grid points over the occupied box whose density exceeds the threshold."""
    lo, hi = grid.box[0] - grid.cell, grid.box[1] + grid.cell
    h = float((hi - lo).max()) / resolution
    dims = torch.ceil((hi - lo) / h).long().clamp_min(1).tolist()
    thr = min(float(grid.density.mean()), density_thresh) if threshold is None else float(threshold)
    device = field.device
    axes = [torch.arange(n, device=device) for n in dims]
    pts, idx, sig, col = [], [], [], []
    for i in axes[0].split(max(1, QUERY_CHUNK // (dims[1] * dims[2]))):   # slabs along x
        gi, gj, gk = torch.meshgrid(i, axes[1], axes[2], indexing="ij")
        g = torch.stack([gi, gj, gk], -1).reshape(-1, 3)
        x = lo + (g.float() + 0.5) * h
        s, c = field.query(x)
        keep = s > thr
        pts.append(x[keep])
        idx.append(g[keep])
        sig.append(s[keep])
        col.append(c[keep])
    return GridPoints(torch.cat(pts), torch.cat(idx), torch.cat(sig), torch.cat(col), h)


def grid_neighbours(index: torch.Tensor, k: int, reach: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to k nearest other points (N, k) of points on an integer lattice (N, 3), among those
    within `reach` cells per axis, and their distances in cells; -1 where there are fewer."""
    device = index.device
    lo = index.min(0).values - reach
    dims = index.max(0).values - lo + reach + 1
    lookup = torch.full((int(dims.prod()),), -1, dtype=torch.long, device=device)
    flat = lambda g: (g[..., 0] * dims[1] + g[..., 1]) * dims[2] + g[..., 2]  # noqa: E731
    lookup[flat(index - lo)] = torch.arange(len(index), device=device)
    r = torch.arange(-reach, reach + 1, device=device)
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    dist = torch.linalg.norm(offsets.float(), dim=-1)
    order = torch.argsort(dist, stable=True)[1:]                                   # without the point itself
    offsets, dist = offsets[order], dist[order]
    nbr = lookup[flat(index[:, None] - lo + offsets[None])]                      # (N, O), nearest first
    present = nbr >= 0
    rank = torch.cumsum(present.long(), 1) - 1
    keep = present & (rank < k)
    out = torch.full((len(index), k), -1, dtype=torch.long, device=device)
    out_d = torch.zeros(len(index), k, device=device)
    rows, cols = torch.nonzero(keep, as_tuple=True)
    out[rows, rank[rows, cols]] = nbr[rows, cols]
    out_d[rows, rank[rows, cols]] = dist[cols]
    return out, out_d


def smooth_weights(weights: torch.Tensor, mesh_dist: torch.Tensor, neighbours: torch.Tensor,
                   nbr_dist: torch.Tensor, offset: float, iterations: int) -> torch.Tensor:
    """The original's k-NN smoothing of skinning weights for points farther than `offset` off the mesh."""
    off = torch.nonzero((mesh_dist >= offset) & (neighbours >= 0).any(1)).squeeze(1)
    if not len(off) or iterations <= 0:
        return weights
    nbr = neighbours[off]
    valid = nbr >= 0
    safe = nbr.clamp_min(0)
    w = torch.where(valid, 1.0 / (mesh_dist[safe].clamp_min(1e-6) * nbr_dist[off].clamp_min(1e-6)),
                    torch.zeros_like(nbr_dist[off]))
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    weights = weights.clone()
    for _ in range(int(iterations)):
        weights[off] = torch.einsum("nk,nkj->nj", w, weights[safe])
    return weights


def _invert_skinning(points: torch.Tensor, joints: torch.Tensor, weights: torch.Tensor,
                     transforms: torch.Tensor) -> torch.Tensor:
    blended = torch.einsum("nk,nkrc->nrc", weights, transforms[joints])
    rot, trans = blended[:, :3, :3], blended[:, :3, 3]
    return torch.linalg.solve(rot, (points - trans)[..., None])[..., 0]


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-4, 1 - 1e-4)
    return torch.log(x / (1 - x))


@torch.no_grad()
def field_to_avatar(stage, resolution: int | None = None, threshold: float | None = None,
                    smooth_iters: int | None = None, bound_gaussians: int | None = None) -> Avatar:
    """The avatar of a NeRF stage (see the module docstring); arguments override the config."""
    c = stage.config
    body, field, canonical = stage.body, stage.field, stage.canonical
    device = field.device
    dense = dense_points(field, stage.grid, resolution or c.convert_resolution, threshold
                         if threshold is not None else c.convert_threshold, c.density_thresh)
    faces = canonical.faces
    near = nearest_triangles(dense.points, canonical.vertices.float(), faces)
    prune = torch.zeros(len(dense.points), dtype=torch.bool, device=device)
    parts = [("hands", c.prune_hands)] + ([("face", c.prune_face)] if stage.expression else [])
    for part, dist in parts:
        idx, _ = part_faces(body, (part,))
        in_part = torch.zeros(len(faces), dtype=torch.bool, device=device)
        in_part[torch.as_tensor(idx, device=device)] = True
        prune |= in_part[near.face] & (near.distance < dist)
    keep = ~prune
    pts, index, sigma, colors = dense.points[keep], dense.index[keep], dense.sigma[keep], dense.colors[keep]
    mesh_dist, tri, bary = near.distance[keep], near.face[keep], near.barycentric[keep]
    lbs = body.skinning_weights.detach().to(device)
    weights = torch.einsum("nk,nkj->nj", bary, lbs[faces[tri]])
    if len(pts):
        nbr, nbr_d = grid_neighbours(index, c.skin_smooth_k)
        weights = smooth_weights(weights, mesh_dist, nbr, nbr_d * dense.spacing, c.skin_offset,
                                 c.skin_smooth_iters if smooth_iters is None else smooth_iters)
    top_w, top_j = torch.topk(weights, SKIN_INFLUENCES, dim=1)
    top_w = top_w / top_w.sum(1, keepdim=True).clamp_min(1e-12)
    rest = _invert_skinning(pts, top_j, top_w, canonical.transforms.to(device))
    h = dense.spacing
    opacity = 1.0 - torch.exp(-sigma * h)
    n = len(pts)
    free = FreeGaussians(
        means=rest.float(), quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device).repeat(n, 1),
        log_scales=torch.full((n, 3), math.log(c.convert_scale * h), device=device),
        opacity_logits=_logit(opacity), colors=colors.clamp(0, 1), skin_joints=top_j.long(), skin_weights=top_w)
    bound = _bound_gaussians(stage, bound_gaussians if bound_gaussians is not None else c.bound_gaussians)
    meta = AvatarMeta(name="nerf", settings={"nerf": dataclasses.asdict(c)},
                      provenance={"made_by": "backend NeRF stage", "grid_spacing": h, "points": int(len(dense.points)),
                                  "pruned": int(prune.sum())})
    return Avatar(body=body, betas=stage.betas.clone(), free=free, bound=bound, meta=meta)


def _bound_gaussians(stage, count: int) -> BoundGaussians:
    """The template's mesh-bound Gaussians on the hands (and face with expression control),
    coloured by the field at their canonical positions."""
    from ..stages import template_avatar

    device = stage.device
    if count <= 0:
        return BoundGaussians(**{f.name: torch.zeros((0,) + shape, dtype=dtype, device=device)
                                 for f, (shape, dtype) in zip(dataclasses.fields(BoundGaussians), _BOUND_SHAPES)})
    avatar = template_avatar(stage.body, 4 * count, stage.seed, stage.betas, 0.25, stage.expression)
    b = avatar.bound
    parts = ("hands", "face") if stage.expression else ("hands",)
    idx, _ = part_faces(stage.body, parts)
    keep = torch.isin(b.faces, torch.as_tensor(idx, device=b.faces.device))
    bound = BoundGaussians(**{f.name: getattr(b, f.name)[keep] for f in dataclasses.fields(BoundGaussians)})
    probe = Avatar(body=stage.body, betas=stage.betas, free=avatar.free, bound=bound)
    rest_state(probe)
    posed = pose_bound(probe, stage.canonical.vertices.to(device))
    _, colors = stage.field.query(posed.means)
    return dataclasses.replace(bound, colors=colors.clamp(0, 1))


_BOUND_SHAPES = (((), torch.long), ((3,), torch.float32), ((3,), torch.float32), ((4,), torch.float32),
                 ((3,), torch.float32), ((), torch.float32), ((3,), torch.float32))
