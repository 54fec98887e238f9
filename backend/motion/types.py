"""The motion type every loader returns (DESIGN.md §3, "Motion").

All rotations are axis-angle in the SMPL-X Y-up model frame; translations are SMPL-X
`transl` (added after LBS) in metres. Hand poses are ABSOLUTE joint rotations (the
"flat hand" convention): a dataset's hand mean or PCA has already been applied.

Time convention: frame i is sampled at t_i = i / fps and is shown for 1/fps seconds, so a
clip of N frames lasts ``duration = N / fps`` seconds (an N-frame clip at 30 fps is N/30 s,
the length of the video it came from). Resampling keeps this duration: the new clip has
``round(N * new_fps / fps)`` frames sampled at the same instants in seconds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..limits import MAX_FRAMES
from .errors import MotionError
from .rotations import aa_to_quat, mat_to_quat, quat_to_aa, quat_to_mat, slerp

MIN_FRAMES = 1
"""A motion needs at least one frame (a single frame is a still pose)."""

NUM_BODY_JOINTS = 21
NUM_HAND_JOINTS = 15
NUM_JOINTS = 55

POSE_FIELDS = ("global_orient", "body_pose", "jaw_pose", "leye_pose", "reye_pose",
               "left_hand_pose", "right_hand_pose")
"""Rotation fields, in SMPL-X joint order (see Motion.full_pose)."""

FRAME_FIELDS = POSE_FIELDS + ("expression", "transl")
"""Every per-frame array field."""

_JOINTS_PER_FIELD = {"global_orient": 1, "body_pose": NUM_BODY_JOINTS, "jaw_pose": 1,
                     "leye_pose": 1, "reye_pose": 1, "left_hand_pose": NUM_HAND_JOINTS,
                     "right_hand_pose": NUM_HAND_JOINTS}


@dataclass
class CameraTrack:
    """Per-frame camera in OpenCV form (x right, y down, z forward) in the motion's world.

    The world is the motion's Y-up SMPL-X world, so a point p of the posed body projects to
    pixels with ``K @ (world_to_camera @ [p, 1])[:3]``.
    """

    world_to_camera: np.ndarray   # (N, 4, 4) float64
    K: np.ndarray                 # (N, 3, 3) float64 intrinsics (fx, fy, cx, cy)
    width: int | None = None
    height: int | None = None

    @property
    def num_frames(self) -> int:
        return int(self.world_to_camera.shape[0])

    def validate(self, n: int | None = None, path=None) -> None:
        """Check shapes and finiteness; ``n`` is the motion's frame count."""
        w2c = np.asarray(self.world_to_camera)
        K = np.asarray(self.K)
        if w2c.ndim != 3 or w2c.shape[1:] != (4, 4):
            raise MotionError(path, "camera.world_to_camera", "shape (N, 4, 4)", f"shape {w2c.shape}")
        if K.ndim != 3 or K.shape[1:] != (3, 3):
            raise MotionError(path, "camera.K", "shape (N, 3, 3)", f"shape {K.shape}")
        if K.shape[0] != w2c.shape[0] or (n is not None and w2c.shape[0] != n):
            raise MotionError(path, "camera", f"{n if n is not None else w2c.shape[0]} frames",
                              f"world_to_camera {w2c.shape[0]}, K {K.shape[0]}")
        for key, arr in (("camera.world_to_camera", w2c), ("camera.K", K)):
            if not np.all(np.isfinite(arr)):
                raise MotionError(path, key, "finite values", f"{int(np.sum(~np.isfinite(arr)))} NaN/inf")
        R = w2c[:, :3, :3]
        err = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max() if len(R) else 0.0
        if err > 1e-3:
            raise MotionError(path, "camera.world_to_camera", "a rotation in the upper 3x3",
                              f"R R^T deviating from identity by {err:.3g}")

    def subset(self, idx) -> "CameraTrack":
        return CameraTrack(self.world_to_camera[idx].copy(), self.K[idx].copy(), self.width, self.height)

    def interpolate(self, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> "CameraTrack":
        """Blend frames i0 and i1 with weight w: slerp the camera orientation, lerp the
        camera centre and the intrinsics (so a dolly moves along a straight line)."""
        c2w = np.linalg.inv(self.world_to_camera)
        q = mat_to_quat(c2w[:, :3, :3])
        qn = slerp(q[i0], q[i1], w)
        centre = c2w[i0, :3, 3] * (1 - w)[:, None] + c2w[i1, :3, 3] * w[:, None]
        R_c2w = quat_to_mat(qn)
        w2c = np.zeros((len(i0), 4, 4))
        w2c[:, :3, :3] = np.swapaxes(R_c2w, 1, 2)
        w2c[:, :3, 3] = -np.einsum("nij,nj->ni", w2c[:, :3, :3], centre)
        w2c[:, 3, 3] = 1.0
        K = self.K[i0] * (1 - w)[:, None, None] + self.K[i1] * w[:, None, None]
        return CameraTrack(w2c, K, self.width, self.height)


@dataclass
class Motion:
    """One SMPL-X motion clip, whatever file it came from (see the module docstring)."""

    fps: float
    global_orient: np.ndarray      # (N, 3)
    body_pose: np.ndarray          # (N, 21, 3)
    left_hand_pose: np.ndarray     # (N, 15, 3) absolute (flat-hand convention)
    right_hand_pose: np.ndarray    # (N, 15, 3)
    jaw_pose: np.ndarray           # (N, 3)
    leye_pose: np.ndarray          # (N, 3)
    reye_pose: np.ndarray          # (N, 3)
    expression: np.ndarray         # (N, E), E may be 0
    transl: np.ndarray             # (N, 3) metres, Y-up
    betas: np.ndarray | None = None
    gender: str | None = None
    source_format: str = ""
    source_up_axis: str = "Y"
    camera: CameraTrack | None = None

    # ------------------------------------------------------------------ properties
    @property
    def num_frames(self) -> int:
        return int(np.asarray(self.global_orient).shape[0])

    @property
    def duration(self) -> float:
        """Seconds: num_frames / fps (each frame lasts 1/fps; see the module docstring)."""
        return self.num_frames / float(self.fps)

    @property
    def num_expression(self) -> int:
        return int(np.asarray(self.expression).shape[1])

    @property
    def full_pose(self) -> np.ndarray:
        """(N, 55, 3) in SMPL-X joint order: orient, body 21, jaw, leye, reye, lhand 15, rhand 15."""
        n = self.num_frames
        return np.concatenate([
            self.global_orient.reshape(n, 1, 3), self.body_pose.reshape(n, 21, 3),
            self.jaw_pose.reshape(n, 1, 3), self.leye_pose.reshape(n, 1, 3),
            self.reye_pose.reshape(n, 1, 3), self.left_hand_pose.reshape(n, 15, 3),
            self.right_hand_pose.reshape(n, 15, 3)], axis=1)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_full_pose(cls, fps: float, full_pose: np.ndarray, transl: np.ndarray,
                       expression: np.ndarray | None = None, **kw) -> "Motion":
        """Build from a (N, 55, 3) pose in SMPL-X joint order."""
        fp = np.asarray(full_pose, dtype=np.float32).reshape(-1, NUM_JOINTS, 3)
        n = fp.shape[0]
        if expression is None:
            expression = np.zeros((n, 0), np.float32)
        return cls(fps=float(fps), global_orient=fp[:, 0].copy(), body_pose=fp[:, 1:22].copy(),
                   jaw_pose=fp[:, 22].copy(), leye_pose=fp[:, 23].copy(), reye_pose=fp[:, 24].copy(),
                   left_hand_pose=fp[:, 25:40].copy(), right_hand_pose=fp[:, 40:55].copy(),
                   expression=np.asarray(expression, np.float32), transl=np.asarray(transl, np.float32),
                   **kw)

    def replace(self, **changes) -> "Motion":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ checks
    def validate(self, path=None) -> "Motion":
        """Check shapes, frame counts, fps and finiteness; raise MotionError naming the key.

        Returns self so that loaders can ``return motion.validate(path)``.
        """
        fps = self.fps
        if not isinstance(fps, (int, float, np.floating, np.integer)) or not math.isfinite(float(fps)) or fps <= 0:
            raise MotionError(path, "fps", "a finite frame rate > 0", repr(fps))
        n = self.num_frames
        if n < MIN_FRAMES:
            raise MotionError(path, "global_orient", f"at least {MIN_FRAMES} frame", f"{n} frames")
        if n > MAX_FRAMES:
            raise MotionError(path, "global_orient", f"at most {MAX_FRAMES:,} frames (the limit for one motion)",
                              f"{n:,} frames")
        shapes = {"global_orient": (n, 3), "body_pose": (n, 21, 3), "left_hand_pose": (n, 15, 3),
                  "right_hand_pose": (n, 15, 3), "jaw_pose": (n, 3), "leye_pose": (n, 3),
                  "reye_pose": (n, 3), "transl": (n, 3)}
        for key, shape in shapes.items():
            arr = np.asarray(getattr(self, key))
            if arr.shape != shape:
                raise MotionError(path, key, f"shape {shape}", f"shape {arr.shape}")
        expr = np.asarray(self.expression)
        if expr.ndim != 2 or expr.shape[0] != n:
            raise MotionError(path, "expression", f"shape ({n}, E)", f"shape {expr.shape}")
        for key in FRAME_FIELDS:
            arr = np.asarray(getattr(self, key))
            bad = ~np.isfinite(arr)
            if bad.any():
                frames = np.unique(np.nonzero(bad.reshape(n, -1))[0])
                raise MotionError(path, key, "finite values",
                                  f"{int(bad.sum())} NaN/inf values in {len(frames)} frames "
                                  f"(first at frame {int(frames[0])}); load with repair=True to interpolate")
        if self.betas is not None:
            b = np.asarray(self.betas)
            if b.ndim != 1:
                raise MotionError(path, "betas", "shape (B,)", f"shape {b.shape}")
            if not np.all(np.isfinite(b)):
                raise MotionError(path, "betas", "finite values", "NaN/inf")
        if self.camera is not None:
            self.camera.validate(n, path)
        return self

    # ------------------------------------------------------------------ time
    def _blend(self, i0: np.ndarray, i1: np.ndarray, w: np.ndarray, fps: float) -> "Motion":
        """New motion whose frame k blends source frames i0[k], i1[k] with weight w[k]."""
        n = self.num_frames
        fp = self.full_pose
        exact = w < 1e-9                              # sample falls on a source frame: copy it
        pose = fp[i0].astype(np.float32)
        mix = np.nonzero(~exact)[0]
        if len(mix):
            a, b = i0[mix], i1[mix]
            used, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
            q = aa_to_quat(fp[used])                  # only the frames we need
            j0, j1 = inv[:len(mix)], inv[len(mix):]
            pose[mix] = quat_to_aa(slerp(q[j0], q[j1], w[mix, None, None]))
        wl = w[:, None]

        def lerp(a):
            a = np.asarray(a, dtype=np.float64).reshape(n, -1)
            return (a[i0] * (1 - wl) + a[i1] * wl).astype(np.float32)

        expr = lerp(self.expression) if self.num_expression else np.zeros((len(i0), 0), np.float32)
        cam = self.camera.interpolate(i0, i1, w) if self.camera is not None else None
        return Motion.from_full_pose(fps, pose, lerp(self.transl), expr, betas=self.betas,
                                     gender=self.gender, source_format=self.source_format,
                                     source_up_axis=self.source_up_axis, camera=cam)

    def resample(self, fps: float) -> "Motion":
        """Resample to `fps` keeping duration and speed (never by dropping whole frames).

        Frame k of the result is the pose at t = k / fps seconds: rotations are slerped
        between the two nearest source frames, translation and expression are lerped. The
        result has round(N * fps / self.fps) frames (at least one); times beyond the last
        source frame hold that frame.
        """
        fps = float(fps)
        if not math.isfinite(fps) or fps <= 0:
            raise MotionError(None, "fps", "a finite frame rate > 0", repr(fps))
        n = self.num_frames
        if abs(fps - self.fps) < 1e-9 * max(fps, 1.0):
            return self.replace(fps=fps)
        frames = n * fps / self.fps
        if not frames <= MAX_FRAMES:
            raise MotionError(None, "fps", f"a rate giving at most {MAX_FRAMES:,} frames (the limit for one motion)",
                              f"{fps:g} fps: {frames:,.0f} frames from {n:,} at {self.fps:g} fps")
        m = max(MIN_FRAMES, int(round(frames)))
        src = np.arange(m, dtype=np.float64) * (self.fps / fps)
        src = np.clip(src, 0.0, n - 1)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        w = src - i0
        return self._blend(i0, i1, w, fps)

    def trim(self, start=None, end=None, unit: str = "frames") -> "Motion":
        """Keep [start, end) in frames or seconds (unit="frames" | "seconds").

        None means the clip's start / end; seconds are rounded to the nearest frame.
        Negative values or an empty range raise MotionError.
        """
        if unit not in ("frames", "seconds"):
            raise MotionError(None, "unit", "'frames' or 'seconds'", repr(unit))
        n = self.num_frames

        def to_frame(v, default):
            if v is None:
                return default
            f = float(v) * self.fps if unit == "seconds" else float(v)
            if not math.isfinite(f) or f < 0:
                raise MotionError(None, "trim", "a start/end >= 0", repr(v))
            return int(round(f))

        s, e = to_frame(start, 0), min(to_frame(end, n), n)
        if s >= e:
            raise MotionError(None, "trim", f"a non-empty range inside 0..{n} frames",
                              f"start {s}, end {e} (frames)")
        sl = slice(s, e)
        changes = {k: np.asarray(getattr(self, k))[sl].copy() for k in FRAME_FIELDS}
        if self.camera is not None:
            changes["camera"] = self.camera.subset(sl)
        return self.replace(**changes)
