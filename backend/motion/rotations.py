"""Rotation helpers in plain numpy (axis-angle, quaternions, matrices, slerp).

The motion package must import without torch (Blender's Python has only numpy), so the
few conversions it needs live here. Quaternions are (..., 4) in (w, x, y, z) order.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-8


def aa_to_quat(aa: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> unit quaternion (..., 4), stable near the zero rotation."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * angle
    small = angle < 1e-6
    # sin(half)/angle, with its Taylor series where the angle vanishes
    safe = np.where(small, 1.0, angle)
    k = np.where(small, 0.5 - angle * angle / 48.0, np.sin(half) / safe)
    return np.concatenate([np.cos(half), aa * k], axis=-1)


def quat_to_aa(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (..., 4) -> axis-angle (..., 3) with angle in [0, pi]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    q = np.where(q[..., :1] < 0.0, -q, q)          # same rotation, shorter angle
    w = q[..., :1]
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, w)
    small = s < 1e-7
    k = np.where(small, 2.0 / np.maximum(w, _EPS), angle / np.where(small, 1.0, s))
    return v * k


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a*b of (..., 4) quaternions."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (..., 4) -> rotation matrix (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    w, x, y, z = np.moveaxis(q, -1, 0)
    m = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def mat_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrix (..., 3, 3) -> unit quaternion (..., 4) (Shepperd's method, w >= 0)."""
    m = np.asarray(m, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # four candidate solutions, pick the numerically best per element
    cands = np.stack([
        np.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
        np.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
        np.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
        np.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
    ], axis=-2)
    diag = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                     1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = np.argmax(diag, axis=-1)
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    return np.where(q[..., :1] < 0.0, -q, q)


def aa_to_mat(aa: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> rotation matrix (..., 3, 3)."""
    return quat_to_mat(aa_to_quat(aa))


def mat_to_aa(m: np.ndarray) -> np.ndarray:
    """Rotation matrix (..., 3, 3) -> axis-angle (..., 3)."""
    return quat_to_aa(mat_to_quat(m))


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation along the shorter arc.

    q0, q1: (..., 4) unit quaternions; t: broadcastable to (..., 1) weights in [0, 1].
    """
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if t.ndim < q0.ndim:
        t = t.reshape(t.shape + (1,) * (q0.ndim - t.ndim))
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0.0, -q1, q1)              # q and -q are the same rotation
    dot = np.clip(np.abs(dot), 0.0, 1.0)
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-6                        # nearly equal: lerp is exact enough
    safe = np.where(near, 1.0, sin_theta)
    w0 = np.where(near, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    w1 = np.where(near, t, np.sin(t * theta) / safe)
    out = w0 * q0 + w1 * q1
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), _EPS)


def rot_x(angle: float) -> np.ndarray:
    """Rotation matrix about +X by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
