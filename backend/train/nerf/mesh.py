"""Body-mesh geometry the NeRF stage needs: inside/outside on a voxel grid, nearest triangles,
surface samples.

Voxelisation counts signed crossings along +z through each voxel column: a ray leaving a closed
surface crosses a triangle whose normal points along it, so the winding number of a voxel is
the sum of sign(n_z) over the crossings above it, and the voxel is inside when that is
positive. It is exact for the template's overlapping closed segments as for one closed SMPL-X
surface, and costs one pass over the triangles.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...body.template import vertex_normals

JITTER = 1e-7 * np.pi   # keeps voxel-column centres off triangle edges


@dataclasses.dataclass
class Voxels:
    inside: np.ndarray      # (nx, ny, nz) bool
    origin: np.ndarray      # (3,) the corner of voxel (0, 0, 0)
    spacing: float

    def sample(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear inside-ness in [0, 1] at points (N, 3) (0 outside the grid)."""
        vol = torch.as_tensor(self.inside, dtype=torch.float32, device=points.device)
        size = torch.tensor(self.inside.shape, dtype=torch.float32, device=points.device)
        # grid_sample's normalised coordinates, align_corners=False: -1 and 1 are the outer faces
        g = (points - torch.as_tensor(self.origin, dtype=torch.float32, device=points.device)) / self.spacing
        g = 2.0 * g / size - 1.0
        out = torch.nn.functional.grid_sample(vol.permute(2, 1, 0)[None, None], g[None, None, None],
                                              mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(-1).clamp(0.0, 1.0)


def voxelize(vertices: np.ndarray, faces: np.ndarray, lo: np.ndarray, hi: np.ndarray, longest: int) -> Voxels:
    """Inside-ness of the closed surface(s) on a grid over [lo, hi] with `longest` voxels on the
    longest side."""
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    h = float((hi - lo).max()) / longest
    dims = np.maximum(1, np.ceil((hi - lo) / h).astype(np.int64))
    nx, ny, nz = (int(d) for d in dims)
    tri = v[faces]                                                     # (F, 3, 3)
    a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    keep = np.abs(area2) > 1e-14
    tri, a, b, c, area2 = tri[keep], a[keep], b[keep], c[keep], area2[keep]
    col = lambda x, axis: (x - lo[axis]) / h - 0.5 - JITTER  # noqa: E731 - column index coordinate
    xy = tri[:, :, :2]
    i0 = np.clip(np.ceil(col(xy[..., 0].min(1), 0)), 0, nx).astype(np.int64)
    i1 = np.clip(np.floor(col(xy[..., 0].max(1), 0)), -1, nx - 1).astype(np.int64)
    j0 = np.clip(np.ceil(col(xy[..., 1].min(1), 1)), 0, ny).astype(np.int64)
    j1 = np.clip(np.floor(col(xy[..., 1].max(1), 1)), -1, ny - 1).astype(np.int64)
    ni, nj = np.maximum(0, i1 - i0 + 1), np.maximum(0, j1 - j0 + 1)
    count = ni * nj
    t = np.repeat(np.arange(len(tri)), count)
    local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    ci = i0[t] + local % np.maximum(ni[t], 1)
    cj = j0[t] + local // np.maximum(ni[t], 1)
    px = lo[0] + (ci + 0.5 + JITTER) * h
    py = lo[1] + (cj + 0.5 + JITTER) * h
    ax, ay, bx, by, cx, cy = a[t, 0], a[t, 1], b[t, 0], b[t, 1], c[t, 0], c[t, 1]
    w0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / area2[t]
    w1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / area2[t]
    w2 = 1.0 - w0 - w1
    hit = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
    t, ci, cj, w0, w1, w2 = t[hit], ci[hit], cj[hit], w0[hit], w1[hit], w2[hit]
    z = w0 * tri[t, 0, 2] + w1 * tri[t, 1, 2] + w2 * tri[t, 2, 2]
    sign = np.sign(area2[t]).astype(np.int64)                         # + : normal along +z (leaving)
    kz = np.clip(np.ceil((z - lo[2]) / h - 0.5), 0, nz).astype(np.int64)
    crossings = np.zeros((nx, ny, nz + 1), dtype=np.int64)
    np.add.at(crossings, (ci, cj, kz), sign)
    above = np.cumsum(crossings[..., ::-1], axis=-1)[..., ::-1]       # sum over m >= k
    return Voxels(inside=above[..., 1:] > 0, origin=lo, spacing=h)


def closest_on_triangles(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Closest points of triangles (a, b, c) to points p (all (..., 3)) and their barycentrics
    (..., 3) (Ericson's region tests)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    tiny = torch.finfo(p.dtype).tiny
    denom = (va + vb + vc)
    denom = torch.where(denom.abs() < tiny, torch.full_like(denom, tiny), denom)
    v, w = vb / denom, vc / denom
    bary = torch.stack([1 - v - w, v, w], -1)                          # inside the face

    def put(mask: torch.Tensor, value: torch.Tensor) -> None:
        nonlocal bary
        bary = torch.where(mask[..., None], value, bary)

    one, zero = torch.ones_like(d1), torch.zeros_like(d1)
    e = (d4 - d3) / ((d4 - d3) + (d5 - d6)).clamp_min(tiny)
    put((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), torch.stack([zero, 1 - e, e], -1))
    wb = d2 / (d2 - d6).clamp_min(tiny)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), torch.stack([1 - wb, zero, wb], -1))
    put((d6 >= 0) & (d5 <= d6), torch.stack([zero, zero, one], -1))
    vv = d1 / (d1 - d3).clamp_min(tiny)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), torch.stack([1 - vv, vv, zero], -1))
    put((d3 >= 0) & (d4 <= d3), torch.stack([zero, one, zero], -1))
    put((d1 <= 0) & (d2 <= 0), torch.stack([one, zero, zero], -1))
    q = bary[..., 0:1] * a + bary[..., 1:2] * b + bary[..., 2:3] * c
    return q, bary


@dataclasses.dataclass
class Nearest:
    face: torch.Tensor        # (N,) triangle index
    barycentric: torch.Tensor  # (N, 3) of the closest point
    distance: torch.Tensor    # (N,) metres


def nearest_triangles(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor, k: int = 8,
                      chunk: int = 4096) -> Nearest:
    """The nearest triangle of each point among those around its k nearest vertices (exact for
    meshes whose triangles are small against the distances that matter)."""
    device = points.device
    if not len(points):
        return Nearest(torch.zeros(0, dtype=torch.long, device=device), points.new_zeros(0, 3), points.new_zeros(0))
    nv = len(vertices)
    fv = faces.reshape(-1)
    order = torch.argsort(fv, stable=True)
    incident = (order // 3)                                           # faces sorted by vertex
    counts = torch.bincount(fv, minlength=nv)
    start = torch.cumsum(counts, 0) - counts
    max_inc = int(counts.max())
    slots = torch.arange(max_inc, device=device)
    out_f, out_b, out_d = [], [], []
    for p in points.split(chunk):
        near = torch.cdist(p, vertices).topk(min(k, nv), dim=1, largest=False).indices    # (n, k)
        idx = start[near][..., None] + slots                                            # (n, k, m)
        ok = slots < counts[near][..., None]
        cand = incident[idx.clamp_max(len(incident) - 1)]
        cand = torch.where(ok, cand, cand[..., :1].expand_as(cand)).reshape(len(p), -1)   # (n, k m)
        tri = vertices[faces[cand]]                                                      # (n, km, 3, 3)
        q, bary = closest_on_triangles(p[:, None].expand(-1, cand.shape[1], -1), tri[..., 0, :], tri[..., 1, :],
                                       tri[..., 2, :])
        d = torch.linalg.norm(q - p[:, None], dim=-1)
        best = d.argmin(1)
        rows = torch.arange(len(p), device=device)
        out_f.append(cand[rows, best])
        out_b.append(bary[rows, best])
        out_d.append(d[rows, best])
    return Nearest(torch.cat(out_f), torch.cat(out_b), torch.cat(out_d))


@dataclasses.dataclass
class SurfaceSamples:
    points: np.ndarray     # (N, 3)
    normals: np.ndarray    # (N, 3) interpolated vertex normals
    faces: np.ndarray      # (N,) index into the faces given


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator) -> SurfaceSamples:
    """Area-weighted points on triangles `faces` of the mesh `vertices`."""
    from ...avatar.template_init import _sample_triangles

    v = np.asarray(vertices, dtype=np.float64)
    tri = v[faces]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    f, bary = _sample_triangles(areas, count, rng)
    normals = vertex_normals(v, np.asarray(faces))[faces[f]]
    n = np.einsum("nk,nkc->nc", bary, normals)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return SurfaceSamples(points=np.einsum("nk,nkc->nc", bary, tri[f]), normals=n, faces=f)
