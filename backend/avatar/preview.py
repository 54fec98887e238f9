"""Preview image of an avatar in its rest pose, from the front (for avatar.json's folder)."""

from __future__ import annotations

import numpy as np
import torch

from ..render import Camera, rasterize
from .gaussians import Avatar
from .posing import pose_with_params


def framing_camera(points: torch.Tensor, width: int, height: int, fov_y_deg: float = 30.0,
                   direction: tuple[float, float, float] = (0.0, 0.0, 1.0), margin: float = 1.15) -> Camera:
    """A camera looking at the points' bounding box from `direction`, far enough to fit it."""
    lo, hi = points.min(0).values, points.max(0).values
    centre = 0.5 * (lo + hi)
    radius = float(torch.linalg.norm(hi - lo)) * 0.5
    fov = np.deg2rad(fov_y_deg) * min(1.0, width / height)
    distance = radius * margin / np.tan(fov / 2)
    d = torch.tensor(direction, dtype=torch.float32)
    eye = centre.cpu() + d / torch.linalg.norm(d) * distance
    return Camera.look_at(eye.tolist(), centre.cpu().tolist(), (0.0, 1.0, 0.0), fov_y_deg, width, height)


def render_preview(avatar: Avatar, size: int = 256) -> np.ndarray:
    """(size, size, 3) uint8 front view over a light grey background."""
    with torch.no_grad():
        g = pose_with_params(avatar)
        cam = framing_camera(g.means, size, size)
        out = rasterize(g, cam, backend="torch")
        bg = 0.92
        rgb = out.rgb + bg * (1 - out.alpha)
    return (rgb.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
