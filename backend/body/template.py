"""The open template: a procedurally generated mannequin in the SMPL-X file layout.

The licensed SMPL-X model cannot ship with the project, so every feature needs a body model that
anyone may generate. This is a segmented artist's mannequin (one closed surface per body part,
like a wooden mannequin) with SMPL-X's 55 joints, names and hierarchy, written as an `.npz` that
`smplx.SMPLX` loads unchanged. It is NOT a statistical body model: its shape and expression
spaces are hand-designed displacement fields (height, girth, limb lengths...; jaw, smile,
brows...), its hand "PCA" is a basis of hand synergies, and its pose correctives are a simple
volume-keeping bulge at elbows and knees. Generation is deterministic: same code, same arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from .joints import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS

TEMPLATE_VERSION = 1
NUM_BETAS = 10
NUM_EXPRESSION = 10

SHAPE_COMPONENTS = (
    "height", "girth", "leg_length", "arm_length", "shoulder_width",
    "hip_width", "torso_length", "belly", "head_size", "limb_thickness",
)
EXPRESSION_COMPONENTS = (
    "jaw_open", "smile", "frown", "brow_raise", "brow_furrow",
    "cheek_puff", "lip_pucker", "eye_squint", "nose_wrinkle", "mouth_shift",
)

# Rest joints (metres, Y-up, facing +Z, the body's left is +X), T-pose like SMPL-X's template.
_LEFT_JOINTS = {
    "hip": (0.085, -0.075, 0.0), "knee": (0.100, -0.490, 0.005), "ankle": (0.105, -0.870, -0.030),
    "foot": (0.115, -0.925, 0.095), "collar": (0.035, 0.440, -0.005),
    "shoulder": (0.170, 0.455, -0.015), "elbow": (0.430, 0.455, -0.025),
    "wrist": (0.680, 0.455, -0.015), "eye_smplhf": (0.032, 0.705, 0.098),
    "index1": (0.775, 0.452, 0.022), "index2": (0.815, 0.452, 0.024), "index3": (0.842, 0.452, 0.025),
    "middle1": (0.778, 0.452, 0.000), "middle2": (0.823, 0.452, 0.000), "middle3": (0.852, 0.452, 0.000),
    "ring1": (0.772, 0.452, -0.020), "ring2": (0.813, 0.452, -0.021), "ring3": (0.840, 0.452, -0.022),
    "pinky1": (0.762, 0.452, -0.038), "pinky2": (0.794, 0.452, -0.041), "pinky3": (0.815, 0.452, -0.043),
    "thumb1": (0.705, 0.440, 0.030), "thumb2": (0.735, 0.440, 0.050), "thumb3": (0.760, 0.440, 0.062),
}
_CENTRE_JOINTS = {
    "pelvis": (0.0, 0.0, 0.0), "spine1": (0.0, 0.105, -0.015), "spine2": (0.0, 0.235, -0.005),
    "spine3": (0.0, 0.300, 0.005), "neck": (0.0, 0.520, -0.015), "head": (0.0, 0.600, 0.010),
    "jaw": (0.0, 0.628, 0.030),
}
_TIP_LENGTH = {"index": 0.022, "middle": 0.024, "ring": 0.022, "pinky": 0.019, "thumb": 0.024}


def rest_joints_default() -> np.ndarray:
    """The template's rest joints for zero betas, (55, 3)."""
    out = np.zeros((NUM_JOINTS, 3))
    for name, i in JOINT_INDEX.items():
        if name in _CENTRE_JOINTS:
            out[i] = _CENTRE_JOINTS[name]
            continue
        side, rest = name.split("_", 1)
        x, y, z = _LEFT_JOINTS[rest]
        out[i] = (x if side == "left" else -x, y, z)
    return out


@dataclasses.dataclass(frozen=True)
class Part:
    """One closed segment of the mannequin, skinned mainly to `joint`."""

    joint: int
    start: np.ndarray
    end: np.ndarray
    r_start: tuple[float, float]   # radii along (side, depth) at the start
    r_end: tuple[float, float]
    ext: tuple[float, float]       # extension beyond start and end (metres)
    side_hint: tuple[float, float, float]
    n_around: int
    n_along: int
    power: float = 2.4             # superellipse profile: 2 = ellipsoid, larger = boxier
    blend_child: int = -1          # child joint blended in near the end
    blend_parent: bool = True
    joint_at: float = 0.0          # where along the axis (0 start, 1 end) the joint's ring lies


def _shape_params(betas: np.ndarray) -> dict[str, float]:
    return dict(zip(SHAPE_COMPONENTS, np.asarray(betas, dtype=np.float64)))


def _shaped_joints(p: dict[str, float]) -> np.ndarray:
    """Rest joints for shape parameters: bone vectors scaled per body region, then overall."""
    base = rest_joints_default()
    out = np.zeros_like(base)
    for i, name in enumerate(JOINT_NAMES):
        par = PARENTS[i]
        if par < 0:
            out[i] = base[i]
            continue
        bone = (base[i] - base[par]).copy()
        if any(k in name for k in ("knee", "ankle", "foot")):
            bone *= 1 + 0.05 * p["leg_length"]
        elif any(k in name for k in ("elbow", "wrist")):
            bone *= 1 + 0.05 * p["arm_length"]
        elif "shoulder" in name:
            bone[0] *= 1 + 0.12 * p["shoulder_width"]
        elif "hip" in name:
            bone[0] *= 1 + 0.10 * p["hip_width"]
        elif name in ("spine1", "spine2", "spine3", "neck") or "collar" in name:
            bone *= 1 + 0.05 * p["torso_length"]
        elif name == "head" or "eye" in name or name == "jaw":
            bone *= 1 + 0.05 * p["head_size"]
        out[i] = out[par] + bone
    return out * (1 + 0.04 * p["height"])


def _parts(p: dict[str, float]) -> list[Part]:
    """The mannequin's segments for shape parameters `p`."""
    j = _shaped_joints(p)
    s = 1 + 0.04 * p["height"]
    g = 1 + 0.08 * p["girth"]
    lg = (1 + 0.04 * p["girth"]) * (1 + 0.08 * p["limb_thickness"])
    hd = s * (1 + 0.05 * p["head_size"])
    belly = 1 + 0.15 * p["belly"]
    hipw = 1 + 0.08 * p["hip_width"]
    J = lambda name: j[JOINT_INDEX[name]]  # noqa: E731
    up = np.array([0.0, 1.0, 0.0])
    X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    parts = [
        Part(0, J("pelvis"), J("pelvis") + 0.09 * s * up, (0.165 * g * hipw * s, 0.110 * g * s),
             (0.150 * g * s, 0.105 * g * s), (0.13 * s, 0.03 * s), X, 36, 16, 3.0,
             blend_child=JOINT_INDEX["spine1"], blend_parent=False),
        Part(3, J("spine1"), J("spine2"), (0.150 * g * s, 0.105 * g * belly * s),
             (0.150 * g * s, 0.110 * g * belly * s), (0.03 * s, 0.03 * s), X, 36, 12, 3.0,
             blend_child=JOINT_INDEX["spine2"]),
        Part(6, J("spine2"), J("spine3"), (0.155 * g * s, 0.110 * g * belly * s),
             (0.160 * g * s, 0.115 * g * s), (0.03 * s, 0.03 * s), X, 36, 10, 3.0,
             blend_child=JOINT_INDEX["spine3"]),
        Part(9, J("spine3"), J("neck"), (0.165 * g * s, 0.115 * g * s), (0.150 * g * s, 0.095 * g * s),
             (0.03 * s, 0.03 * s), X, 36, 16, 3.0, blend_child=JOINT_INDEX["neck"]),
        Part(12, J("neck"), J("head"), (0.055 * g * s, 0.055 * g * s), (0.050 * g * s, 0.052 * g * s),
             (0.02 * s, 0.02 * s), X, 20, 10, 2.2, blend_child=JOINT_INDEX["head"]),
        Part(15, J("head"), J("head") + 0.185 * hd * up, (0.068 * hd, 0.085 * hd), (0.060 * hd, 0.080 * hd),
             (0.035 * hd, 0.0), X, 44, 32, 2.1),
        Part(22, J("jaw"), J("jaw") + hd * np.array([0.0, -0.045, 0.062]), (0.055 * hd, 0.035 * hd),
             (0.030 * hd, 0.022 * hd), (0.01 * hd, 0.012 * hd), X, 24, 12, 2.2),
    ]
    for side, sx in (("left", 1.0), ("right", -1.0)):
        n = lambda k: JOINT_INDEX[f"{side}_{k}"]  # noqa: E731
        P = lambda k: J(f"{side}_{k}")  # noqa: E731
        parts += [
            Part(n("eye_smplhf"), P("eye_smplhf") - np.array([0, 0, 0.013 * hd]),
                 P("eye_smplhf") + np.array([0, 0, 0.013 * hd]), (0.013 * hd, 0.013 * hd),
                 (0.013 * hd, 0.013 * hd), (0.0, 0.0), X, 12, 8, 2.0, blend_parent=False, joint_at=0.5),
            Part(n("hip"), P("hip"), P("knee"), (0.078 * lg * s, 0.080 * lg * s), (0.052 * lg * s, 0.055 * lg * s),
                 (0.05 * s, 0.03 * s), X, 24, 16, 2.3, blend_child=n("knee")),
            Part(n("knee"), P("knee"), P("ankle"), (0.050 * lg * s, 0.052 * lg * s), (0.034 * lg * s, 0.036 * lg * s),
                 (0.025 * s, 0.02 * s), X, 24, 16, 2.3, blend_child=n("ankle")),
            Part(n("ankle"), P("ankle") + s * np.array([0, -0.035, -0.05]), P("foot") + s * np.array([0, 0.0, 0.0]),
                 (0.040 * lg * s, 0.035 * s), (0.045 * lg * s, 0.022 * s), (0.02 * s, 0.01 * s), (sx, 0, 0), 20, 12, 3.0),
            Part(n("foot"), P("foot"), P("foot") + s * np.array([0.005 * sx, 0.0, 0.06]), (0.045 * lg * s, 0.022 * s),
                 (0.035 * lg * s, 0.014 * s), (0.01 * s, 0.005 * s), (sx, 0, 0), 16, 8, 2.6),
            Part(n("collar"), P("collar"), P("shoulder"), (0.050 * g * s, 0.060 * g * s), (0.055 * g * s, 0.060 * g * s),
                 (0.02 * s, 0.02 * s), Y, 16, 10, 2.2, blend_child=n("shoulder")),
            Part(n("shoulder"), P("shoulder"), P("elbow"), (0.050 * lg * s, 0.048 * lg * s), (0.038 * lg * s, 0.038 * lg * s),
                 (0.035 * s, 0.02 * s), Y, 24, 16, 2.3, blend_child=n("elbow")),
            Part(n("elbow"), P("elbow"), P("wrist"), (0.038 * lg * s, 0.036 * lg * s), (0.027 * lg * s, 0.022 * lg * s),
                 (0.02 * s, 0.01 * s), Y, 24, 16, 2.3, blend_child=n("wrist")),
            Part(n("wrist"), P("wrist"), P("middle1"), (0.016 * s, 0.030 * s), (0.014 * s, 0.046 * s),
                 (0.012 * s, 0.006 * s), Y, 20, 12, 3.0),
        ]
        for finger in ("index", "middle", "pinky", "ring", "thumb"):
            radius = (0.0105 if finger == "thumb" else 0.0085 if finger != "pinky" else 0.0075) * s
            for k in (1, 2, 3):
                a = P(f"{finger}{k}")
                if k < 3:
                    b = P(f"{finger}{k + 1}")
                else:
                    d = a - P(f"{finger}2")
                    b = a + d / np.linalg.norm(d) * _TIP_LENGTH[finger] * s
                taper = (1.0 - 0.08 * (k - 1), 0.92 - 0.08 * (k - 1))
                parts.append(Part(
                    n(f"{finger}{k}"), a, b, (radius * taper[0], radius * taper[0]),
                    (radius * taper[1], radius * taper[1]), (0.004 * s, 0.004 * s), Y, 10, 8, 2.2,
                    blend_child=n(f"{finger}{k + 1}") if k < 3 else -1))
    return parts


def _frame(part: Part) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    axis = part.end - part.start
    length = float(np.linalg.norm(axis))
    d = axis / length
    hint = np.asarray(part.side_hint, dtype=np.float64)
    u = hint - hint.dot(d) * d
    if np.linalg.norm(u) < 1e-6:
        u = np.array([0.0, 0.0, 1.0]) - d[2] * d
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    return d, u, v, length


def _part_axial_samples(part: Part, length: float) -> np.ndarray:
    """Ring positions along the axis: denser at the ends, with rings exactly at start and end."""
    lo, hi = -part.ext[0], length + part.ext[1]
    k = np.arange(1, part.n_along + 1)
    a = lo + (hi - lo) * 0.5 * (1 - np.cos(np.pi * k / (part.n_along + 1)))
    a = np.concatenate([a, [0.0, length, part.joint_at * length]])
    a = np.unique(np.round(a, 9))
    return a[(a > lo + 1e-6) & (a < hi - 1e-6)]


def _build_part(part: Part) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, faces, axial parameter t (0 at start, 1 at end) and the start-ring mask."""
    d, u, v, length = _frame(part)
    lo, hi = -part.ext[0], length + part.ext[1]
    axial = _part_axial_samples(part, length)
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    rel = np.abs((axial - mid) / half)
    profile = (1.0 - rel ** part.power) ** (1.0 / part.power)
    t = np.clip(axial / length, 0.0, 1.0)
    ru = (1 - t) * part.r_start[0] + t * part.r_end[0]
    rv = (1 - t) * part.r_start[1] + t * part.r_end[1]
    phi = 2 * np.pi * np.arange(part.n_around) / part.n_around
    ring = (part.start[None, None, :] + axial[:, None, None] * d
            + (profile * ru)[:, None, None] * np.cos(phi)[None, :, None] * u
            + (profile * rv)[:, None, None] * np.sin(phi)[None, :, None] * v)
    nr, na = len(axial), part.n_around
    verts = np.concatenate([ring.reshape(-1, 3), [part.start + lo * d], [part.start + hi * d]])
    faces = []
    idx = np.arange(nr * na).reshape(nr, na)
    for r in range(nr - 1):
        a, b = idx[r], idx[r + 1]
        a1, b1 = np.roll(a, -1), np.roll(b, -1)
        faces += [np.stack([a, b, b1], 1), np.stack([a, b1, a1], 1)]
    bottom, top = nr * na, nr * na + 1
    faces.append(np.stack([np.full(na, bottom), idx[0], np.roll(idx[0], -1)], 1)[:, [0, 2, 1]])
    faces.append(np.stack([np.full(na, top), idx[-1], np.roll(idx[-1], -1)], 1))
    faces = np.concatenate(faces).astype(np.int64)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, [0, 2, 1]]
    t_all = np.concatenate([np.repeat(axial / length, na), [lo / length, hi / length]])
    start_ring = np.concatenate([np.repeat(np.isclose(axial, part.joint_at * length), na), [False, False]])
    return verts, faces, t_all, start_ring


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    y = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return y * y * (3 - 2 * y)


@dataclasses.dataclass
class _Mesh:
    vertices: np.ndarray
    faces: np.ndarray
    weights: np.ndarray
    regressor: np.ndarray
    part_of_vertex: np.ndarray
    t_of_vertex: np.ndarray


def _build_mesh(betas: np.ndarray) -> _Mesh:
    parts = _parts(_shape_params(betas))
    verts, faces, weights, owner, ts = [], [], [], [], []
    regressor = np.zeros((NUM_JOINTS, 0))
    rings: dict[int, np.ndarray] = {}
    offset = 0
    for part in parts:
        v, f, t, start_ring = _build_part(part)
        w = np.zeros((len(v), NUM_JOINTS))
        w_parent = 0.5 * (1 - _smoothstep(-0.12, 0.22, t)) if part.blend_parent and PARENTS[part.joint] >= 0 else 0 * t
        w_child = 0.5 * _smoothstep(0.78, 1.12, t) if part.blend_child >= 0 else 0 * t
        w[:, part.joint] = 1 - w_parent - w_child
        if PARENTS[part.joint] >= 0:
            w[:, PARENTS[part.joint]] += w_parent
        if part.blend_child >= 0:
            w[:, part.blend_child] += w_child
        rings[part.joint] = offset + np.flatnonzero(start_ring)
        verts.append(v), faces.append(f + offset), weights.append(w)
        owner.append(np.full(len(v), part.joint)), ts.append(t)
        offset += len(v)
    vertices = np.concatenate(verts)
    regressor = np.zeros((NUM_JOINTS, len(vertices)))
    for joint, ring in rings.items():
        regressor[joint, ring] = 1.0 / len(ring)
    ankle_rings = {JOINT_INDEX[f"{s}_ankle"]: JOINT_INDEX[f"{s}_knee"] for s in ("left", "right")}
    for ankle, knee in ankle_rings.items():
        # The ankle sits at the shin's lower end, not on the foot's axis: regress it from there.
        owned = np.flatnonzero(np.concatenate(owner) == knee)
        t = np.concatenate(ts)[owned]
        ring = owned[np.isclose(t, 1.0)]
        regressor[ankle] = 0.0
        regressor[ankle, ring] = 1.0 / len(ring)
    return _Mesh(vertices, np.concatenate(faces), np.concatenate(weights), regressor,
                 np.concatenate(owner), np.concatenate(ts))


def _face_frame(mesh: _Mesh) -> tuple[np.ndarray, float]:
    head = mesh.vertices[mesh.part_of_vertex == JOINT_INDEX["head"]]
    centre = 0.5 * (head.min(0) + head.max(0))
    return centre, float(head[:, 1].max() - head[:, 1].min())


def _face_features(mesh: _Mesh) -> dict[str, np.ndarray]:
    """Named points on the front of the face, from the head's size (for bumps, expressions, landmarks)."""
    c, h = _face_frame(mesh)
    depth = mesh.vertices[mesh.part_of_vertex == JOINT_INDEX["head"]][:, 2].max()
    f = lambda x, y, dz=0.0: np.array([c[0] + x * h, c[1] + y * h, depth + dz * h])  # noqa: E731
    return {
        "nose": f(0.0, -0.09, 0.02), "mouth": f(0.0, -0.33, -0.12),
        "mouth_l": f(0.11, -0.32, -0.16), "mouth_r": f(-0.11, -0.32, -0.16),
        "brow_l": f(0.15, 0.11, -0.08), "brow_r": f(-0.15, 0.11, -0.08),
        "cheek_l": f(0.22, -0.17, -0.22), "cheek_r": f(-0.22, -0.17, -0.22),
        "eye_l": f(0.15, 0.02, -0.08), "eye_r": f(-0.15, 0.02, -0.08),
        "chin": f(0.0, -0.47, -0.2),
    }


def _bump(points: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    return np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * radius ** 2))


def _face_mask(mesh: _Mesh) -> np.ndarray:
    return np.isin(mesh.part_of_vertex, [JOINT_INDEX["head"], JOINT_INDEX["jaw"]])


def _add_face_detail(mesh: _Mesh) -> None:
    """A nose and a brow ridge on the head, so the face reads as a face from the front."""
    feats = _face_features(mesh)
    _, h = _face_frame(mesh)
    head = mesh.part_of_vertex == JOINT_INDEX["head"]
    p = mesh.vertices[head]
    nose = _bump(p, feats["nose"] + np.array([0, 0.03 * h, -0.06 * h]), 0.05 * h)
    brow = _bump(p * np.array([0.35, 1, 1]), np.array([0, feats["brow_l"][1], feats["brow_l"][2]]) * np.array([0.35, 1, 1]), 0.04 * h)
    mesh.vertices[head] += np.outer(0.10 * h * nose + 0.025 * h * brow, [0, 0, 1])


def _expression_dirs(mesh: _Mesh) -> np.ndarray:
    """(V, 3, 10) displacement fields of the face for the expression components."""
    feats = _face_features(mesh)
    _, h = _face_frame(mesh)
    out = np.zeros((len(mesh.vertices), 3, NUM_EXPRESSION))
    mask = _face_mask(mesh)
    p = mesh.vertices[mask]
    b = lambda name, r=0.09: _bump(p, feats[name], r * h)  # noqa: E731
    # Fade out toward the neck, so expressions never pull the neck's skin.
    fade = np.clip(1.0 - 2.0 * mesh.weights[mask, JOINT_INDEX["neck"]], 0.0, 1.0)[:, None]

    def put(k: int, field: np.ndarray) -> None:
        out[mask, :, k] = field * h * fade

    lower = _smoothstep(0.0, 0.15 * h, feats["mouth"][1] - p[:, 1])[:, None]
    front = (p[:, 2] > feats["mouth"][2] - 0.3 * h)[:, None]
    put(0, lower * front * b("chin", 0.25)[:, None] * np.array([0, -0.06, -0.01]))
    put(1, b("mouth_l", 0.07)[:, None] * np.array([0.02, 0.025, 0]) + b("mouth_r", 0.07)[:, None] * np.array([-0.02, 0.025, 0]))
    put(2, (b("mouth_l", 0.07) + b("mouth_r", 0.07))[:, None] * np.array([0, -0.025, 0]))
    put(3, (b("brow_l", 0.07) + b("brow_r", 0.07))[:, None] * np.array([0, 0.03, 0]))
    put(4, b("brow_l", 0.06)[:, None] * np.array([-0.015, -0.015, 0]) + b("brow_r", 0.06)[:, None] * np.array([0.015, -0.015, 0]))
    put(5, b("cheek_l", 0.09)[:, None] * np.array([0.03, 0, 0.01]) + b("cheek_r", 0.09)[:, None] * np.array([-0.03, 0, 0.01]))
    put(6, b("mouth", 0.08)[:, None] * np.array([0, 0, 0.035]))
    put(7, (b("eye_l", 0.05) + b("eye_r", 0.05))[:, None] * np.array([0, -0.015, 0.004]))
    put(8, b("nose", 0.06)[:, None] * np.array([0, 0.015, -0.005]))
    put(9, b("mouth", 0.1)[:, None] * np.array([0.03, 0, 0]))
    return out


def _pose_dirs(mesh: _Mesh) -> np.ndarray:
    """(V, 3, 486) correctives: a bulge at elbows and knees that grows with 1 - cos(angle).

    smplx's pose feature holds (R - I) per joint 1..54, so -(trace(R) - 3) = 2(1 - cos θ)
    is linear in it: the bulge needs no non-linear term.
    """
    out = np.zeros((len(mesh.vertices), 3, 9 * (NUM_JOINTS - 1)))
    normals = vertex_normals(mesh.vertices, mesh.faces)
    for name in ("left_knee", "right_knee", "left_elbow", "right_elbow"):
        j = JOINT_INDEX[name]
        owner_ok = np.isin(mesh.part_of_vertex, [j, PARENTS[j]])
        near = np.linalg.norm(mesh.vertices - _joint_positions(mesh)[j], axis=1)
        amount = 0.004 * np.exp(-(near / 0.05) ** 2) * owner_ok
        for k in (0, 4, 8):
            out[:, :, 9 * (j - 1) + k] = -(amount[:, None] * normals)
    return out


def _joint_positions(mesh: _Mesh) -> np.ndarray:
    return mesh.regressor @ mesh.vertices


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _hand_basis(side: str) -> tuple[np.ndarray, np.ndarray]:
    """Hand synergies as an orthonormal basis (rows) and a relaxed mean pose, both (45,)-sized.

    Order of the 15 joints: index, middle, pinky, ring, thumb (3 each), as SMPL-X.
    Fingers point along +X (left) / -X (right) with the palm down: flexion is about -Z / +Z.
    """
    flex = np.array([0.0, 0.0, -1.0 if side == "left" else 1.0])
    spread_sign = {"index": 1.0, "middle": 0.3, "ring": -0.5, "pinky": -1.0}
    fingers = ("index", "middle", "pinky", "ring", "thumb")
    curl, spread, thumb, point = (np.zeros((15, 3)) for _ in range(4))
    for fi, name in enumerate(fingers):
        for k in range(3):
            row = 3 * fi + k
            if name == "thumb":
                thumb[row] = np.array([0.6, 0.3, 0.0]) * (1 if side == "left" else -1) * (0.6 + 0.2 * k)
                curl[row] = flex * 0.4
                continue
            curl[row] = flex * (1.0 - 0.15 * k)
            spread[row] = np.array([0.0, 1.0, 0.0]) * spread_sign[name] * (1.0 if k == 0 else 0.0)
            point[row] = flex * (0.0 if name == "index" else 1.0)
    rng = np.random.default_rng(20240917 + (side == "right"))
    seed = np.stack([m.reshape(-1) for m in (curl, spread, thumb, point)] + [rng.normal(size=45) for _ in range(41)])
    q, r = np.linalg.qr(seed.T)
    basis = (q * np.sign(np.diag(r))).T
    mean = (0.12 * curl + 0.1 * thumb).reshape(-1)
    return basis, mean


def _reorder_for_smplx_vertex_ids(mesh: _Mesh, arrays: dict[str, np.ndarray]) -> None:
    """Put the anatomical points smplx reads by fixed vertex index (nose, eyes, ears, finger
    tips, toes, heels) at those indices, so smplx's extra joints land where they should."""
    from smplx.vertex_ids import vertex_ids

    ids = vertex_ids["smplx"]
    v = mesh.vertices
    j = _joint_positions(mesh)
    feats = _face_features(mesh)
    head = mesh.part_of_vertex == JOINT_INDEX["head"]
    head_v = v[head]
    targets: dict[str, np.ndarray] = {
        "nose": feats["nose"] + np.array([0, 0, 1.0]),
        "leye": j[JOINT_INDEX["left_eye_smplhf"]] + np.array([0, 0, 1.0]),
        "reye": j[JOINT_INDEX["right_eye_smplhf"]] + np.array([0, 0, 1.0]),
        "lear": np.array([head_v[:, 0].max() + 1.0, feats["eye_l"][1], j[15][2]]),
        "rear": np.array([head_v[:, 0].min() - 1.0, feats["eye_r"][1], j[15][2]]),
    }
    pools: dict[str, np.ndarray] = {
        "nose": np.flatnonzero(head), "leye": np.flatnonzero(mesh.part_of_vertex == 23),
        "reye": np.flatnonzero(mesh.part_of_vertex == 24), "lear": np.flatnonzero(head),
        "rear": np.flatnonzero(head),
    }
    for side, s in (("l", "left"), ("r", "right")):
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            owned = np.flatnonzero(mesh.part_of_vertex == JOINT_INDEX[f"{s}_{finger}3"])
            pools[f"{side}{finger}"] = owned
            targets[f"{side}{finger}"] = v[owned[np.argmax(mesh.t_of_vertex[owned])]]
        foot = np.flatnonzero(mesh.part_of_vertex == JOINT_INDEX[f"{s}_foot"])
        heel = np.flatnonzero(mesh.part_of_vertex == JOINT_INDEX[f"{s}_ankle"])
        sx = 1.0 if s == "left" else -1.0
        pools[f"{side.upper()}BigToe"] = pools[f"{side.upper()}SmallToe"] = foot
        pools[f"{side.upper()}Heel"] = heel
        targets[f"{side.upper()}BigToe"] = v[foot].mean(0) + np.array([-0.5 * sx, -0.5, 1.0])
        targets[f"{side.upper()}SmallToe"] = v[foot].mean(0) + np.array([0.6 * sx, -0.5, 1.0])
        targets[f"{side.upper()}Heel"] = v[heel].mean(0) + np.array([0, -0.5, -1.0])
    order = np.arange(len(v))
    position = np.arange(len(v))
    for name, slot in ids.items():
        pool = pools[name]
        chosen = pool[np.argmin(np.linalg.norm(v[pool] - targets[name], axis=1))]
        here = position[chosen]
        other = order[slot]
        order[slot], order[here] = chosen, other
        position[chosen], position[other] = slot, here
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    for key, arr in arrays.items():
        if key == "f":
            arrays[key] = inverse[arr]
        elif key == "J_regressor":
            arrays[key] = arr[:, order]
        elif key in ("lmk_faces_idx", "dynamic_lmk_faces_idx"):
            continue
        else:
            arrays[key] = arr[order]


def _closest_on_triangles(points: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the nearest triangle (by distance to its closest point) and barycentrics."""
    best_d = np.full(len(points), np.inf)
    best_f = np.zeros(len(points), dtype=np.int64)
    best_b = np.zeros((len(points), 3))
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    for i, p in enumerate(points):
        # Project onto each triangle's plane, clamp barycentrics (good enough for dense meshes).
        v0, v1, v2 = b - a, c - a, p - a
        d00 = np.einsum("ij,ij->i", v0, v0)
        d01 = np.einsum("ij,ij->i", v0, v1)
        d11 = np.einsum("ij,ij->i", v1, v1)
        d20 = np.einsum("ij,ij->i", v2, v0)
        d21 = np.einsum("ij,ij->i", v2, v1)
        den = np.maximum(d00 * d11 - d01 * d01, 1e-18)
        bv = np.clip((d11 * d20 - d01 * d21) / den, 0, 1)
        bw = np.clip((d00 * d21 - d01 * d20) / den, 0, 1)
        s = np.maximum(bv + bw, 1.0)
        bv, bw = bv / s, bw / s
        bu = 1 - bv - bw
        q = bu[:, None] * a + bv[:, None] * b + bw[:, None] * c
        d = np.linalg.norm(q - p, axis=1)
        k = int(np.argmin(d))
        best_d[i], best_f[i], best_b[i] = d[k], k, (bu[k], bv[k], bw[k])
    return best_f, best_b


def _landmark_points(mesh: _Mesh) -> np.ndarray:
    """The 51 inner-face landmarks of the iBUG-68 layout (brows, nose, eyes, mouth), in rest space."""
    c, h = _face_frame(mesh)
    depth = mesh.vertices[_face_mask(mesh)][:, 2].max()
    pts = []
    pts += [(x, 0.13 + 0.03 * np.sin(np.pi * (i / 4.0))) for i, x in enumerate(np.linspace(-0.26, -0.06, 5))]
    pts += [(x, 0.13 + 0.03 * np.sin(np.pi * (i / 4.0))) for i, x in enumerate(np.linspace(0.06, 0.26, 5))]
    pts += [(0.0, y) for y in np.linspace(0.02, -0.15, 4)]
    pts += [(x, -0.19) for x in np.linspace(-0.07, 0.07, 5)]
    for cx in (-0.15, 0.15):
        ang = np.linspace(np.pi, -np.pi, 7)[:-1]
        pts += [(cx + 0.06 * np.cos(a), 0.02 + 0.025 * np.sin(a)) for a in ang]
    outer = np.linspace(np.pi, -np.pi, 13)[:-1]
    pts += [(0.12 * np.cos(a), -0.33 + 0.06 * np.sin(a)) for a in outer]
    inner = np.linspace(np.pi, -np.pi, 9)[:-1]
    pts += [(0.08 * np.cos(a), -0.33 + 0.025 * np.sin(a)) for a in inner]
    xy = np.array(pts)
    return np.stack([c[0] + xy[:, 0] * h, c[1] + xy[:, 1] * h, np.full(len(xy), depth + h)], axis=1)


def _face_triangles(mesh: _Mesh, faces: np.ndarray) -> np.ndarray:
    face_ok = _face_mask(mesh)[faces].all(axis=1)
    return np.flatnonzero(face_ok)


def _project_to_front(mesh: _Mesh, points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop far-in-front points onto the face along -Z (ray toward the face), then attach."""
    cand = _face_triangles(mesh, faces)
    v = mesh.vertices
    centroids = v[faces[cand]].mean(axis=1)
    front = cand[centroids[:, 2] > np.median(centroids[:, 2])]
    tri_c = v[faces[front]].mean(axis=1)
    surf = np.array([tri_c[np.argmin(np.linalg.norm(tri_c[:, :2] - p[:2], axis=1))] for p in points])
    f_local, bary = _closest_on_triangles(surf, v[faces[front]])
    return front[f_local], bary


def _dynamic_contour(mesh: _Mesh, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """79 yaw bins x 17 jaw-line landmarks (smplx picks a bin from the head's yaw)."""
    c, h = _face_frame(mesh)
    cand = _face_triangles(mesh, faces)
    tri = mesh.vertices[faces[cand]]
    idx = np.zeros((79, 17), dtype=np.int64)
    bary = np.zeros((79, 17, 3))
    angles = np.linspace(-np.pi * 0.45, np.pi * 0.45, 17)
    for b, yaw in enumerate(np.deg2rad(np.arange(-39, 40))):
        a = angles + 0.5 * yaw
        pts = np.stack([c[0] + 0.5 * h * np.sin(a), c[1] - h * (0.18 + 0.3 * np.cos(a)), c[2] + 0.5 * h * np.cos(a)], 1)
        f_local, bb = _closest_on_triangles(pts, tri)
        idx[b], bary[b] = cand[f_local], bb
    return idx, bary


def generate(betas_dirs: bool = True) -> dict[str, np.ndarray]:
    """Arrays of the template in the SMPL-X `.npz` layout (keys as in SMPLX_NEUTRAL.npz)."""
    zero = np.zeros(NUM_BETAS)
    mesh = _build_mesh(zero)
    _add_face_detail(mesh)
    shapedirs = np.zeros((len(mesh.vertices), 3, NUM_BETAS + NUM_EXPRESSION))
    if betas_dirs:
        for k in range(NUM_BETAS):
            other = _build_mesh(np.eye(NUM_BETAS)[k])
            _add_face_detail(other)
            shapedirs[:, :, k] = other.vertices - mesh.vertices
    shapedirs[:, :, NUM_BETAS:] = _expression_dirs(mesh)
    lmk_faces, lmk_bary = _project_to_front(mesh, _landmark_points(mesh), mesh.faces)
    dyn_faces, dyn_bary = _dynamic_contour(mesh, mesh.faces)
    left, left_mean = _hand_basis("left")
    right, right_mean = _hand_basis("right")
    kintree = np.stack([np.array(PARENTS, dtype=np.int64), np.arange(NUM_JOINTS)])
    kintree[0, 0] = 4294967295  # SMPL-X stores the root's parent as uint32 -1
    arrays: dict[str, np.ndarray] = {
        "v_template": mesh.vertices.astype(np.float32),
        "f": mesh.faces.astype(np.int32),
        "weights": mesh.weights.astype(np.float32),
        "J_regressor": mesh.regressor.astype(np.float32),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": _pose_dirs(mesh).astype(np.float32),
        "part_of_vertex": mesh.part_of_vertex.astype(np.int32),
    }
    _reorder_for_smplx_vertex_ids(mesh, arrays)
    arrays["f"] = arrays["f"].astype(np.int32)
    arrays.update({
        "kintree_table": kintree,
        "lmk_faces_idx": lmk_faces.astype(np.int64),
        "lmk_bary_coords": lmk_bary.astype(np.float32),
        "dynamic_lmk_faces_idx": dyn_faces.astype(np.int64),
        "dynamic_lmk_bary_coords": dyn_bary.astype(np.float32),
        "hands_componentsl": left.astype(np.float32), "hands_meanl": left_mean.astype(np.float32),
        "hands_componentsr": right.astype(np.float32), "hands_meanr": right_mean.astype(np.float32),
        "template_version": np.array(TEMPLATE_VERSION),
        "template_kind": np.array("dreamwaltz-open-template: procedural mannequin, not a statistical body model"),
        "shape_components": np.array(SHAPE_COMPONENTS),
        "expression_components": np.array(EXPRESSION_COMPONENTS),
    })
    return arrays


def write_template(path: str | os.PathLike) -> Path:
    """Generate the template and write it atomically as a SMPL-X-layout `.npz`."""
    from ..files import write_npz_atomic

    path = Path(path)
    write_npz_atomic(path, generate(), compressed=True)
    return path


def cache_dir() -> Path:
    base = os.environ.get("DREAMWALTZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dreamwaltz")
    return Path(base)


def cached_template_path() -> Path:
    """The cached template, generated on first use (keyed by the generator's version)."""
    source = Path(__file__).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    path = cache_dir() / f"open_template_v{TEMPLATE_VERSION}_{digest}.npz"
    if not path.exists():
        write_template(path)
    return path
