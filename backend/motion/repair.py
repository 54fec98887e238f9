"""NaN / inf handling: refuse by default, interpolate over gaps when asked (repair=True)."""

from __future__ import annotations

import warnings

import numpy as np

from .errors import MotionError
from .rotations import aa_to_quat, quat_to_aa, slerp
from .types import FRAME_FIELDS, POSE_FIELDS, Motion


def _neighbours(valid: np.ndarray):
    """For a (N, C) validity mask: previous and next valid frame per (frame, column), -1 if none."""
    n = valid.shape[0]
    idx = np.arange(n)[:, None]
    prev = np.where(valid, idx, -1)
    prev = np.maximum.accumulate(prev, axis=0)
    nxt = np.where(valid, idx, n)
    nxt = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
    nxt = np.where(nxt == n, -1, nxt)
    return prev, nxt


def _fill_indices(valid: np.ndarray):
    """(i0, i1, w) per (frame, column) so that value = blend(i0, i1, w); edges hold the nearest."""
    prev, nxt = _neighbours(valid)
    i0 = np.where(prev < 0, nxt, prev)
    i1 = np.where(nxt < 0, prev, nxt)
    span = np.maximum(i1 - i0, 1)
    t = np.arange(valid.shape[0])[:, None]
    w = np.where(i1 > i0, (t - i0) / span, 0.0)
    return i0, i1, w


def _repair_lerp(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float64).reshape(arr.shape[0], -1)
    valid = np.isfinite(a)
    i0, i1, w = _fill_indices(valid)
    cols = np.arange(a.shape[1])[None, :]
    out = a[i0, cols] * (1 - w) + a[i1, cols] * w
    return np.where(valid, a, out).reshape(arr.shape).astype(arr.dtype)


def _repair_rot(arr: np.ndarray) -> np.ndarray:
    n = arr.shape[0]
    a = np.asarray(arr, dtype=np.float64).reshape(n, -1, 3)
    valid = np.all(np.isfinite(a), axis=2)                      # (N, J)
    i0, i1, w = _fill_indices(valid)
    q = aa_to_quat(np.where(valid[..., None], a, 0.0))
    cols = np.arange(a.shape[1])[None, :]
    filled = quat_to_aa(slerp(q[i0, cols], q[i1, cols], w[..., None]))
    return np.where(valid[..., None], a, filled).reshape(arr.shape).astype(arr.dtype)


def count_nonfinite(motion: Motion) -> dict[str, int]:
    out = {}
    for key in FRAME_FIELDS:
        bad = int(np.sum(~np.isfinite(np.asarray(getattr(motion, key)))))
        if bad:
            out[key] = bad
    if motion.camera is not None:
        for key in ("world_to_camera", "K"):
            bad = int(np.sum(~np.isfinite(getattr(motion.camera, key))))
            if bad:
                out[f"camera.{key}"] = bad
    return out


def repair_nonfinite(motion: Motion, path=None) -> Motion:
    """Interpolate over NaN/inf frames (slerp for rotations, lerp otherwise) and warn.

    A key with no finite frame at all cannot be repaired and raises MotionError.
    """
    bad = count_nonfinite(motion)
    if not bad:
        return motion
    changes = {}
    for key in bad:
        if key.startswith("camera."):
            continue
        arr = np.asarray(getattr(motion, key))
        if key in POSE_FIELDS:
            usable = np.all(np.isfinite(arr.reshape(arr.shape[0], -1, 3)), axis=2).any(axis=0)
        else:
            usable = np.isfinite(arr.reshape(arr.shape[0], -1)).any(axis=0)
        if not usable.all():
            raise MotionError(path, key, "at least one finite frame per value to interpolate from",
                              "a value that is NaN/inf in every frame")
        changes[key] = _repair_rot(arr) if key in POSE_FIELDS else _repair_lerp(arr)
    if motion.camera is not None and any(k.startswith("camera.") for k in bad):
        cam = motion.camera
        valid = np.all(np.isfinite(cam.world_to_camera.reshape(len(cam.world_to_camera), -1)), axis=1) & \
            np.all(np.isfinite(cam.K.reshape(len(cam.K), -1)), axis=1)
        if not valid.any():
            raise MotionError(path, "camera", "at least one finite camera frame", "none")
        i0, i1, w = _fill_indices(valid[:, None])
        fixed = _interp_camera(cam, valid, i0[:, 0], i1[:, 0], w[:, 0])
        changes["camera"] = fixed
    total = sum(bad.values())
    detail = ", ".join(f"{k}: {v}" for k, v in bad.items())
    warnings.warn(f"{path or '<motion>'}: repaired {total} NaN/inf values by interpolating over "
                  f"neighbouring frames ({detail})", RuntimeWarning, stacklevel=3)
    return motion.replace(**changes)


def _interp_camera(cam, valid, i0, i1, w):
    from .types import CameraTrack
    good = np.nonzero(valid)[0]
    # interpolate only between valid frames: map to a camera made of valid frames
    sub = cam.subset(good)
    pos = np.searchsorted(good, i0)
    pos1 = np.searchsorted(good, i1)
    blended = sub.interpolate(pos, pos1, w)
    w2c = np.where(valid[:, None, None], cam.world_to_camera, blended.world_to_camera)
    K = np.where(valid[:, None, None], cam.K, blended.K)
    return CameraTrack(w2c, K, cam.width, cam.height)
