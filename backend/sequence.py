"""Rendering a motion clip: per-frame pose parameters, a camera that frames the whole clip, and
the frame loop. Shared by the render CLI, the server's batch-render job and the demo."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .avatar import Avatar, pose_with_params
from .motion.types import POSE_FIELDS, Motion
from .render import Camera, RenderOutput, rasterize


def frame_params(motion: Motion, i: int) -> dict[str, np.ndarray]:
    """SMPL-X keyword arguments for frame `i` (hands as full axis-angles)."""
    params = {name: np.asarray(getattr(motion, name)[i], dtype=np.float32).reshape(-1) for name in POSE_FIELDS}
    params["transl"] = np.asarray(motion.transl[i], dtype=np.float32)
    if motion.expression.shape[1]:
        params["expression"] = np.asarray(motion.expression[i], dtype=np.float32)
    return params


def posed_joints(avatar: Avatar, motion: Motion, batch: int = 512, betas: Any = None) -> torch.Tensor:
    """(N, 55, 3) joints of the avatar's body over the clip (for framing and checks)."""
    out = []
    with torch.no_grad():
        for s in range(0, motion.num_frames, batch):
            idx = slice(s, min(s + batch, motion.num_frames))
            kwargs = {name: np.asarray(getattr(motion, name)[idx], dtype=np.float32).reshape(idx.stop - s, -1)
                      for name in POSE_FIELDS}
            kwargs["transl"] = np.asarray(motion.transl[idx], dtype=np.float32)
            out.append(avatar.body.forward(betas=avatar.betas if betas is None else betas, **kwargs).joints)
    return torch.cat(out)


def clip_cameras(avatar: Avatar, motion: Motion, width: int, height: int, mode: str = "front",
                 fov_y_deg: float = 35.0, betas: Any = None) -> list[Camera]:
    """One camera per frame: `front` looks at the clip from +Z, `orbit` circles it once."""
    if mode not in ("front", "orbit"):
        raise ValueError(f"unknown camera mode {mode!r}: use front or orbit")
    joints = posed_joints(avatar, motion, betas=betas).cpu()
    lo = joints.reshape(-1, 3).min(0).values.numpy() - 0.15
    hi = joints.reshape(-1, 3).max(0).values.numpy() + 0.15
    centre = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    aspect = width / height
    tan_y = math.tan(math.radians(fov_y_deg) / 2)
    reach = max(half[1] / tan_y, max(half[0], half[2]) / (tan_y * aspect))
    distance = reach * 1.05 + float(max(half[0], half[2])) * (1.0 if mode == "orbit" else 0.5)
    cams = []
    for i in range(motion.num_frames):
        angle = 2 * math.pi * i / max(motion.num_frames, 1) if mode == "orbit" else 0.0
        eye = centre + distance * np.array([math.sin(angle), 0.08, math.cos(angle)])
        cams.append(Camera.look_at(eye.tolist(), centre.tolist(), (0.0, 1.0, 0.0), fov_y_deg, width, height))
    return cams


def render_frames(avatar: Avatar, motion: Motion, cameras: list[Camera], backend: str = "auto",
                  frames: range | None = None, extra: Any = None, betas: Any = None) -> Iterator[tuple[int, RenderOutput]]:
    """Yield (frame index, render) for each frame; `extra` is a GaussianSet drawn with the
    avatar; `betas` poses the avatar with another body shape."""
    from .render import GaussianSet

    for i in frames if frames is not None else range(motion.num_frames):
        with torch.no_grad():
            g = pose_with_params(avatar, betas=betas, **frame_params(motion, i))
            if extra is not None:
                g = GaussianSet.concat([g, extra])
            yield i, rasterize(g, cameras[i], backend=backend)
