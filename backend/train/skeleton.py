"""The skeleton condition: an OpenPose-style image of the posed body, seen by the render camera.

Keypoints come from the posed body model: its 55 joints, the 21 surface keypoints smplx places
on vertices (nose, eyes, ears, toes, heels, fingertips) and the 51 face landmarks on
triangles, in smplx's 127-keypoint order. From them we take the 18 OpenPose body keypoints
(COCO-18 order), 21 per hand, and optionally the face landmarks. A keypoint is dropped when it
lies behind the camera or the body surface hides it: a ray from the camera to the keypoint
that meets the body mesh more than the keypoint's own depth inside the body (its distance to
the nearest vertex, so joints inside a limb still show) before reaching it. Face keypoints thus
vanish in back views. DreamWaltz-G's rule (`occlusion_rule="gap"`) instead hides face points
(nose, eyes, ears, landmarks) behind more than 2 cm of surface and hand points behind more
than 20 cm, and never hides body joints (it ignores the body's self-occlusion).

Drawing follows ControlNet v1.1's OpenPose annotator (`annotator/openpose/util.py`): body limbs
as ellipses of half-width 4 px in the standard colours at 60 % intensity, body keypoints as
discs of radius 4 in full colour, hand bones as 2 px lines coloured along the HSV hue circle,
hand keypoints as blue discs of radius 4, face landmarks as white discs of radius 3, at 512 px
and scaled with the image. It is done with torch on the training device (distance fields,
painter's order), so no OpenCV is needed and no image leaves the GPU.
"""

from __future__ import annotations

import colorsys
import dataclasses
from typing import Any

import numpy as np
import torch

from ..render import Camera

# indices into smplx's 127 keypoints: 55 joints, 21 vertex keypoints, 51 face landmarks
NOSE, R_EYE, L_EYE, R_EAR, L_EAR = 55, 56, 57, 58, 59
OPENPOSE_BODY: tuple[int, ...] = (NOSE, 12, 17, 19, 21, 16, 18, 20, 2, 5, 8, 1, 4, 7, R_EYE, L_EYE, R_EAR, L_EAR)
OPENPOSE_BODY_NAMES: tuple[str, ...] = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
    "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
# OpenPose hand order: wrist, thumb 1-4, index 1-4, middle 1-4, ring 1-4, pinky 1-4 (4 = tip)
OPENPOSE_LEFT_HAND: tuple[int, ...] = (20, 37, 38, 39, 66, 25, 26, 27, 67, 28, 29, 30, 68, 34, 35, 36, 69,
                                       31, 32, 33, 70)
OPENPOSE_RIGHT_HAND: tuple[int, ...] = (21, 52, 53, 54, 71, 40, 41, 42, 72, 43, 44, 45, 73, 49, 50, 51, 74,
                                        46, 47, 48, 75)
FACE_LANDMARKS: tuple[int, ...] = tuple(range(76, 127))
NUM_KEYPOINTS = 127

BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
# 1-based pairs as in the annotator; the last two (ear-shoulder) are not drawn there either
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
    (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))
HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
HAND_EDGE_COLORS: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)) for i in range(len(HAND_EDGES)))
HAND_POINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)
LIMB_INTENSITY = 0.6
# sizes in pixels at 512 px (the annotator's), scaled with min(H, W) / 512
STICK_WIDTH, BODY_RADIUS, HAND_LINE_RADIUS, HAND_RADIUS, FACE_RADIUS = 4.0, 4.0, 1.0, 4.0, 3.0
MIN_DISC_RADIUS = 1.0  # so a keypoint's own pixel is always painted, even in small images
MIN_LINE_RADIUS = 1.0  # limbs and hand bones stay about 2 px wide in small images
PIL_MAX_COORD = 1.0e5  # pixels; beyond this the torch drawer takes over


@dataclasses.dataclass
class SkeletonConfig:
    body: bool = True
    hands: bool = True
    face: bool = False
    occlusion: bool = True
    surface_slack: float = 0.06  # metres of surface allowed in front of a surface keypoint
    joint_slack: float = 0.02    # joints: metres on top of factor x their distance to the nearest vertex
    depth_factor: float = 1.5
    max_gap: float = 0.2         # joints: metres of their own segments' surface allowed in front
    occlusion_rule: str = "depth"   # "depth" (ours, above) | "gap" (DreamWaltz-G: face_gap, hand_gap, body never)
    face_gap: float = 0.02       # gap rule: metres of surface allowed in front of a face point
    hand_gap: float = 0.2        # gap rule: ... of a hand point

    def __post_init__(self) -> None:
        if self.occlusion_rule not in ("depth", "gap"):
            raise ValueError(f"skeleton.occlusion_rule must be depth or gap; got {self.occlusion_rule!r}")


class KeypointLayout:
    """Turns posed vertices and joints into smplx's 127 keypoints, on the body's device."""

    def __init__(self, body: Any) -> None:
        vertex_ids, lmk_faces, lmk_bary = body.keypoint_sources()
        self.vertex_ids = vertex_ids.to(body.device)
        faces = torch.as_tensor(body.faces, device=body.device, dtype=torch.long)
        self.faces = faces
        self.lmk_faces = faces[lmk_faces.to(body.device)]              # (51, 3)
        self.lmk_bary = lmk_bary.to(body.device).float()               # (51, 3)

    def __call__(self, vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        """vertices (V,3), joints (55,3) -> (127,3)."""
        extra = vertices[self.vertex_ids]
        lmk = (vertices[self.lmk_faces] * self.lmk_bary[..., None]).sum(1)
        return torch.cat([joints[:55], extra, lmk], 0)


FACE_POINTS: tuple[int, ...] = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR) + FACE_LANDMARKS
HAND_POINTS: tuple[int, ...] = OPENPOSE_LEFT_HAND + OPENPOSE_RIGHT_HAND
WRISTS: tuple[int, ...] = (OPENPOSE_LEFT_HAND[0], OPENPOSE_RIGHT_HAND[0])   # body and hand keypoints both


def selected_keypoints(config: SkeletonConfig) -> list[int]:
    idx: list[int] = []
    if config.body:
        idx += OPENPOSE_BODY
    if config.hands:
        idx += OPENPOSE_LEFT_HAND + OPENPOSE_RIGHT_HAND
    if config.face:
        idx += FACE_LANDMARKS
    return sorted(set(idx))


# the base of the neck sits between the collars and shoulders; the hips inside the pelvis
EXTRA_ADJACENT = {12: (13, 14, 16, 17), 1: (0, 3), 2: (0, 3)}


def adjacent_joints(parents: Any) -> list[set[int]]:
    """For each of the 55 joints: itself, its parent and its children (and EXTRA_ADJACENT)."""
    out = [{j} for j in range(len(parents))]
    for j, p in enumerate(parents):
        if p >= 0:
            out[j].add(int(p))
            out[int(p)].add(j)
    for j, extra in EXTRA_ADJACENT.items():
        out[j].update(extra)
    return out


@torch.no_grad()
def first_hits(points: torch.Tensor, origin: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor,
               chunk: int = 1 << 15) -> tuple[torch.Tensor, torch.Tensor]:
    """For rays origin -> points[k]: the parameter t in (0, inf) of the first mesh hit (t = 1 is
    the point itself; inf when nothing is hit) and the hit face (-1).

    Every (ray, triangle) pair is first tested against the triangle's bounding sphere (one
    (K,3) x (3,F) product); Moeller-Trumbore then runs on the few pairs that pass."""
    d = points - origin                                                    # (K,3)
    k = points.shape[0]
    first = torch.full((k,), float("inf"), device=points.device, dtype=points.dtype)
    face = torch.full((k,), -1, device=points.device, dtype=torch.long)
    tri = vertices[faces]                                                  # (F,3,3)
    centre = tri.mean(1)
    radius2 = ((tri - centre[:, None]) ** 2).sum(-1).amax(1)
    rel = centre - origin                                                  # (F,3)
    dn = d / torch.linalg.norm(d, dim=-1, keepdim=True).clamp_min(1e-12)
    for s in range(0, tri.shape[0], chunk):
        along = dn @ rel[s:s + chunk].T                                    # (K,F)
        miss2 = (rel[s:s + chunk] ** 2).sum(-1)[None] - along * along
        ray, f = torch.nonzero((miss2 <= radius2[s:s + chunk][None]) & (along > -radius2[s:s + chunk].sqrt()[None]),
                               as_tuple=True)
        if not len(ray):
            continue
        f = f + s
        v0, v1, v2 = tri[f].unbind(1)                                      # (P,3)
        e1, e2 = v1 - v0, v2 - v0
        dr = d[ray]
        h = torch.linalg.cross(dr, e2, dim=-1)
        det = (e1 * h).sum(-1)
        ok = det.abs() > 1e-12
        inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
        tvec = origin[None] - v0
        u = (tvec * h).sum(-1) * inv
        q = torch.linalg.cross(tvec, e1, dim=-1)
        v = (dr * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6)
        t = torch.where(hit, t, torch.full_like(t, float("inf")))
        best = torch.full((k,), float("inf"), device=points.device, dtype=points.dtype)
        best = best.scatter_reduce(0, ray, t, reduce="amin")
        better = best < first
        # the face of each ray's best hit: the pair whose t equals the minimum
        is_best = hit & (t == best[ray]) & better[ray]
        face = face.scatter(0, ray[is_best], f[is_best])
        first = torch.where(better, best, first)
    return first, face


class OcclusionTest:
    """Which keypoints the body hides from a camera position.

    A surface keypoint (nose, eyes, ears, toes, heels, fingertips, face landmarks) is visible
    when the first surface the ray meets is within `surface_slack` of it (the open template is a
    segmented mannequin whose parts overlap by a few centimetres). A joint lies inside the body,
    so the ray always crosses some surface first: it is visible when that surface is within the
    joint's own depth in the body (factor x its distance to the nearest vertex + joint_slack), or when
    the surface belongs to the joint's own segments (itself, parent, children, by dominant
    skinning weight) and is less than `max_gap` in front of it."""

    def __init__(self, body: Any, surface_slack: float = 0.06, joint_slack: float = 0.02, factor: float = 1.5,
                 max_gap: float = 0.2, rule: str = "depth", face_gap: float = 0.02, hand_gap: float = 0.2) -> None:
        faces = torch.as_tensor(body.faces, device=body.device, dtype=torch.long)
        dominant = body.skinning_weights.argmax(1)
        self.face_joint = dominant[faces[:, 0]]
        adj = adjacent_joints(body.parents)
        self.adjacent = torch.zeros(NUM_KEYPOINTS, 55, dtype=torch.bool, device=body.device)
        for j in range(55):
            self.adjacent[j, sorted(adj[j])] = True
        self.is_joint = torch.arange(NUM_KEYPOINTS, device=body.device) < 55
        self.surface_slack, self.joint_slack = surface_slack, joint_slack
        self.factor, self.max_gap = factor, max_gap
        self.rule = rule
        # the gap rule's allowance per keypoint: face points, hand points (wrists: the body's), body never
        gap_limit = torch.full((NUM_KEYPOINTS,), float("inf"), device=body.device)
        gap_limit[list(HAND_POINTS)] = hand_gap
        gap_limit[list(FACE_POINTS)] = face_gap
        gap_limit[list(WRISTS)] = float("inf")
        self.gap_limit = gap_limit
        self.hand_gap = hand_gap

    @staticmethod
    def gaps(pts: torch.Tensor, origin: torch.Tensor, vertices: torch.Tensor,
             faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Metres of surface in front of each point seen from `origin`, and the first face hit."""
        t, face = first_hits(pts, origin, vertices, faces)
        length = torch.linalg.norm(pts - origin, dim=-1).clamp_min(1e-9)
        gap = (1.0 - t).clamp_min(0.0) * length
        return torch.where(torch.isfinite(t), gap, torch.zeros_like(gap)), face

    @torch.no_grad()
    def __call__(self, keypoints: torch.Tensor, idx: torch.Tensor, origin: torch.Tensor,
                 vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        pts = keypoints[idx]
        gap, face = self.gaps(pts, origin, vertices, faces)
        if self.rule == "gap":
            return gap <= self.gap_limit[idx]
        joint = self.is_joint[idx]
        depth_in_body = torch.cdist(pts, vertices).min(1).values
        allowed = torch.where(joint, self.factor * depth_in_body + self.joint_slack,
                              torch.full_like(gap, self.surface_slack))
        own = self.adjacent[idx, self.face_joint[face.clamp_min(0)]] & (face >= 0) & joint
        return (gap <= allowed) | (own & (gap <= self.max_gap))


def keypoint_visibility(keypoints: torch.Tensor, camera: Camera, vertices: torch.Tensor | None,
                        faces: torch.Tensor | None, config: SkeletonConfig,
                        which: list[int] | None = None,
                        occlusion: "OcclusionTest | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel positions (127,2) and visibility (127,) of the keypoints through `camera`:
    in front of the camera and, with occlusion on, not hidden by the body mesh. Keypoints not in
    `which` are invisible."""
    uv, z = camera.project(keypoints)
    vis = z > camera.near
    if which is not None:
        mask = torch.zeros_like(vis)
        mask[which] = True
        vis &= mask
    if config.occlusion and occlusion is not None and vertices is not None:
        idx = vis.nonzero().squeeze(1)
        if idx.numel():
            origin = torch.as_tensor(camera.position, dtype=keypoints.dtype, device=keypoints.device)
            vis[idx] = occlusion(keypoints, idx, origin, vertices, faces)
    return uv, vis


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Prims:
    """Primitives in painter's order: segment a-b, radius across (ellipse half-width or capsule
    radius), kind (0 ellipse spanning a-b, 1 capsule around a-b, 2 disc at a), colour."""

    a: list
    b: list
    r: list
    kind: list
    color: list

    def add(self, a, b, r, kind, color) -> None:
        self.a.append(a)
        self.b.append(b)
        self.r.append(r)
        self.kind.append(kind)
        self.color.append(color)


def _primitives(uv: torch.Tensor, vis: torch.Tensor, config: SkeletonConfig, scale: float,
                hand_vis: torch.Tensor | None = None) -> _Prims:
    prims = _Prims([], [], [], [], [])
    v = vis.tolist()
    hv = v if hand_vis is None else hand_vis.tolist()

    def disc_radius(r: float) -> float:
        return max(r * scale, MIN_DISC_RADIUS)

    if config.body:
        for i, (p, q) in enumerate(BODY_LIMBS):
            a, b = OPENPOSE_BODY[p - 1], OPENPOSE_BODY[q - 1]
            if v[a] and v[b]:
                prims.add(a, b, max(STICK_WIDTH * scale, MIN_LINE_RADIUS), 0,
                          tuple(float(round(c * LIMB_INTENSITY)) for c in BODY_COLORS[i]))
        for i, k in enumerate(OPENPOSE_BODY):
            if v[k]:
                prims.add(k, k, disc_radius(BODY_RADIUS), 2, BODY_COLORS[i])
    if config.hands:
        for hand in (OPENPOSE_LEFT_HAND, OPENPOSE_RIGHT_HAND):
            for i, (p, q) in enumerate(HAND_EDGES):
                a, b = hand[p], hand[q]
                if hv[a] and hv[b]:
                    prims.add(a, b, max(HAND_LINE_RADIUS * scale, MIN_LINE_RADIUS), 1, HAND_EDGE_COLORS[i])
            for k in hand:
                if hv[k]:
                    prims.add(k, k, disc_radius(HAND_RADIUS), 2, HAND_POINT_COLOR)
    if config.face:
        for k in FACE_LANDMARKS:
            if v[k]:
                prims.add(k, k, disc_radius(FACE_RADIUS), 2, FACE_COLOR)
    return prims


def draw_skeleton(uv: torch.Tensor, vis: torch.Tensor, width: int, height: int,
                  config: SkeletonConfig | None = None, tile: int = 16, method: str = "auto",
                  hand_vis: torch.Tensor | None = None) -> torch.Tensor:
    """(3, H, W) float image in [0, 1] (black background) from pixel positions (127, 2) (+0.5
    pixel-centre convention) and visibility (127,); each pixel takes the colour of the last
    primitive (in painter's order) that covers it. `hand_vis` (127,), when given, is the
    visibility the hands are drawn with (the wrist is a body and a hand keypoint at once).

    method "torch" tests every primitive on the tiles its bounding box touches, on the
    tensors' device (no image leaves the GPU); "pil" fills polygons with Pillow, 3x faster on
    the CPU (where the batch workers draw); "auto" picks by device (and falls back to torch for
    keypoints projected absurdly far off the image, which Pillow's integer rasteriser mishandles)."""
    config = config or SkeletonConfig()
    if method == "auto":
        cpu = uv.device.type == "cpu"
        far = cpu and bool(vis.any()) and bool((uv[vis].abs() > PIL_MAX_COORD).any())
        method = "pil" if cpu and not far else "torch"
    prims = _primitives(uv, vis, config, min(width, height) / 512.0, hand_vis)
    if method == "pil":
        return _draw_pil(uv, prims, width, height)
    return _draw_torch(uv, prims, width, height, tile)


def _draw_pil(uv: torch.Tensor, prims: _Prims, width: int, height: int) -> torch.Tensor:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    # Pillow floors vertex coordinates and fills inclusively: with the +0.5 convention's
    # coordinates that rounds every edge to the nearest pixel centre.
    pts = uv.double().numpy()
    ring = np.linspace(0.0, 2.0 * np.pi, 36, endpoint=False)
    circle = np.stack([np.cos(ring), np.sin(ring)], 1)
    for a, b, r, kind, color in zip(prims.a, prims.b, prims.r, prims.kind, prims.color):
        fill = tuple(int(round(c)) for c in color)
        pa, pb = pts[a], pts[b]
        if kind == 2:
            draw.polygon((pa + r * circle).ravel().tolist(), fill=fill)
            continue
        seg = pb - pa
        length = float(np.hypot(*seg))
        d = seg / length if length > 1e-9 else np.array([1.0, 0.0])
        n = np.array([-d[1], d[0]])
        if kind == 0:       # the ellipse spanning a-b
            centre = 0.5 * (pa + pb)
            poly = centre + np.outer(np.cos(ring) * max(0.5 * length, 1e-6), d) + np.outer(np.sin(ring) * r, n)
        else:               # the capsule around a-b
            half = np.pi / 2
            arc = np.linspace(-half, half, 9)
            end_b = pb + np.outer(np.cos(arc) * r, d) + np.outer(np.sin(arc) * r, n)
            end_a = pa - np.outer(np.cos(arc) * r, d) - np.outer(np.sin(arc) * r, n)
            poly = np.concatenate([end_b, end_a])
        draw.polygon(poly.ravel().tolist(), fill=fill)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def _draw_torch(uv: torch.Tensor, prims: _Prims, width: int, height: int, tile: int) -> torch.Tensor:
    device = uv.device
    image = torch.zeros(height * width, 3, device=device)
    if not prims.a:
        return image.T.reshape(3, height, width)
    uvf = uv.float()
    a = uvf[torch.as_tensor(prims.a, device=device)]              # (P,2)
    b = uvf[torch.as_tensor(prims.b, device=device)]
    r = torch.tensor(prims.r, device=device)
    kind = torch.tensor(prims.kind, device=device)
    colors = torch.tensor(prims.color, device=device, dtype=torch.float32) / 255.0
    seg = b - a
    length = torch.linalg.norm(seg, dim=-1)
    dirs = torch.where(length[:, None] > 1e-9, seg / length.clamp_min(1e-9)[:, None],
                       torch.tensor([1.0, 0.0], device=device))
    normal = torch.stack([-dirs[:, 1], dirs[:, 0]], -1)
    centre = 0.5 * (a + b)
    half = torch.where(kind == 0, 0.5 * length, r).clamp_min(1e-6)   # along the segment
    # bounding boxes -> (primitive, tile) pairs
    reach = torch.where(kind == 0, half, r + torch.where(kind == 1, 0.5 * length, 0.0))
    lo = torch.minimum(a, b) - reach[:, None] - 1
    hi = torch.maximum(a, b) + reach[:, None] + 1
    tw, th = -(-width // tile), -(-height // tile)
    t0x = (lo[:, 0] / tile).floor().clamp(0, tw).long()
    t1x = (hi[:, 0] / tile).ceil().clamp(0, tw).long()
    t0y = (lo[:, 1] / tile).floor().clamp(0, th).long()
    t1y = (hi[:, 1] / tile).ceil().clamp(0, th).long()
    nx, ny = t1x - t0x, t1y - t0y
    count = nx * ny
    total = int(count.sum())
    if total == 0:
        return image.T.reshape(3, height, width)
    pid = torch.repeat_interleave(torch.arange(len(prims.a), device=device), count, output_size=total)
    local = torch.arange(total, device=device) - (torch.cumsum(count, 0) - count)[pid]
    tx = t0x[pid] + local % nx[pid]
    ty = t0y[pid] + local // nx[pid]
    oy, ox = torch.meshgrid(torch.arange(tile, device=device), torch.arange(tile, device=device), indexing="ij")
    px = tx[:, None] * tile + ox.reshape(1, -1)                    # (pairs, tile*tile)
    py = ty[:, None] * tile + oy.reshape(1, -1)
    inside_image = (px < width) & (py < height)
    p = torch.stack([px, py], -1).float() + 0.5
    rel = p - centre[pid][:, None]
    d, nrm = dirs[pid][:, None], normal[pid][:, None]
    along = (rel * d).sum(-1)
    across = (rel * nrm).sum(-1)
    rp = r[pid][:, None]
    ellipse = (along / half[pid][:, None]) ** 2 + (across / rp) ** 2 <= 1.0
    ra = p - a[pid][:, None]
    lp = length[pid][:, None]
    tproj = torch.minimum(torch.maximum((ra * d).sum(-1), torch.zeros_like(lp)), lp)
    capsule = ((ra - tproj[..., None] * d) ** 2).sum(-1) <= rp ** 2
    inside = torch.where((kind[pid] == 1)[:, None], capsule, ellipse) & inside_image
    value = torch.where(inside, pid[:, None], torch.full_like(pid[:, None], -1))
    flat = (py.clamp_max(height - 1) * width + px.clamp_max(width - 1)).reshape(-1)
    top = torch.full((height * width,), -1, device=device, dtype=torch.long)
    top = top.scatter_reduce(0, flat, value.reshape(-1), reduce="amax", include_self=True)
    painted = top >= 0
    image[painted] = colors[top[painted]]
    return image.T.reshape(3, height, width)


class SkeletonRenderer:
    """Keypoints -> visibility -> OpenPose image, for one body model."""

    def __init__(self, body: Any, config: SkeletonConfig | None = None) -> None:
        self.body = body
        self.config = config or SkeletonConfig()
        self.layout = KeypointLayout(body)
        self.which = selected_keypoints(self.config)
        c = self.config
        self.occlusion = OcclusionTest(body, c.surface_slack, c.joint_slack, c.depth_factor, c.max_gap,
                                       c.occlusion_rule, c.face_gap, c.hand_gap)

    def keypoints(self, vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        return self.layout(vertices, joints)

    def render(self, vertices: torch.Tensor, joints: torch.Tensor, camera: Camera,
               keypoints: torch.Tensor | None = None) -> torch.Tensor:
        """(3, H, W) skeleton image for one posed body (vertices (V,3), joints (55,3))."""
        kp = self.keypoints(vertices, joints) if keypoints is None else keypoints
        uv, vis = keypoint_visibility(kp, camera, vertices, self.layout.faces, self.config, self.which,
                                      self.occlusion)
        hand_vis = self._hand_wrists(kp, vis, camera, vertices) if self.config.occlusion_rule == "gap" else None
        return draw_skeleton(uv, vis, int(camera.width), int(camera.height), self.config, hand_vis=hand_vis)

    def _hand_wrists(self, kp: torch.Tensor, vis: torch.Tensor, camera: Camera,
                     vertices: torch.Tensor) -> torch.Tensor:
        """The gap rule's visibility for the hands: the wrists as hand points (`hand_gap`), not
        as the body joints that are never hidden."""
        hand_vis = vis.clone()
        if not (self.config.hands and self.config.occlusion):
            return hand_vis
        idx = torch.as_tensor(WRISTS, device=kp.device)
        shown = vis[idx]
        if bool(shown.any()):
            origin = torch.as_tensor(camera.position, dtype=kp.dtype, device=kp.device)
            gap, _ = OcclusionTest.gaps(kp[idx], origin, vertices, self.layout.faces)
            hand_vis[idx] = shown & (gap <= self.config.hand_gap)
        return hand_vis
