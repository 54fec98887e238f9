"""Blender cameras <-> OpenCV cameras (DESIGN.md §3): the one conversion both directions use.

OpenCV form: world_to_camera maps Blender world points to a camera frame with x right, y down,
z forward; K holds fx, fy, cx, cy in pixels with (0, 0) at the top-left corner of the image.
Everything Blender does to the frame (lens, sensor fit, shift, pixel aspect, resolution
percentage) is read from the camera's own view frame, and everything a 3D viewport does (its
lens, camera view zoom and pan, orthographic views) from its projection matrix, so no case is
re-derived by hand. Orthographic cameras keep the same form with `ortho` set: K then maps
camera-space x, y (metres) to pixels without the division by z.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclasses.dataclass
class CameraCV:
    world_to_camera: np.ndarray  # (4, 4)
    K: np.ndarray                # (3, 3)
    width: int
    height: int
    near: float
    far: float
    ortho: bool = False

    def as_message(self) -> dict:
        message = {"world_to_camera": self.world_to_camera.tolist(), "K": self.K.tolist(),
                   "near": self.near, "far": self.far}
        if self.ortho:
            message["model"] = "ortho"
        return message

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) pixel u, v and depth z."""
        p = np.c_[points, np.ones(len(points))] @ self.world_to_camera.T
        if self.ortho:
            return np.c_[p[:, :2] @ self.K[:2, :2].T + self.K[:2, 2], p[:, 2]]
        uv = p[:, :3] @ self.K.T
        return np.c_[uv[:, :2] / uv[:, 2:3], p[:, 2]]


def render_size(scene: Any) -> tuple[int, int]:
    r = scene.render
    scale = r.resolution_percentage / 100.0
    return max(1, int(r.resolution_x * scale)), max(1, int(r.resolution_y * scale))


def render_region(scene: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The Render Region (border) in pixels as Blender cuts it: (x, y from the bottom-left, w, h);
    None when the whole frame renders."""
    r = scene.render
    if not r.use_border:
        return None
    x0, x1 = int(r.border_min_x * width), int(r.border_max_x * width)
    y0, y1 = int(r.border_min_y * height), int(r.border_max_y * height)
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return None
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def crop_camera(camera: CameraCV, region: tuple[int, int, int, int]) -> CameraCV:
    """The same camera seeing only `region` (Blender pixels, bottom-left origin) of its frame."""
    x0, y0, w, h = region
    K = camera.K.copy()
    K[0, 2] -= x0
    K[1, 2] -= camera.height - (y0 + h)
    return dataclasses.replace(camera, K=K, width=int(w), height=int(h))


def _rigid_inverse(matrix_world: Any) -> np.ndarray:
    m = np.array(matrix_world, dtype=np.float64)
    rot = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0, keepdims=True)  # drop object scale
    inv = np.eye(4)
    inv[:3, :3] = rot.T
    inv[:3, 3] = -rot.T @ m[:3, 3]
    return inv


def camera_to_opencv(scene: Any, camera_obj: Any, width: int | None = None, height: int | None = None) -> CameraCV:
    """The scene camera (or any camera object) as an OpenCV camera for the render size."""
    if width is None or height is None:
        width, height = render_size(scene)
    data = camera_obj.data
    if data.type not in ("PERSP", "ORTHO"):
        raise ValueError(f"camera {camera_obj.name!r} is {data.type.lower()}; DreamWaltz renders perspective and "
                         "orthographic cameras")
    ortho = data.type == "ORTHO"
    frame = [tuple(v) for v in data.view_frame(scene=scene)]
    xs, ys = [v[0] for v in frame], [v[1] for v in frame]
    d = 1.0 if ortho else -frame[0][2]  # an orthographic frame's x, y are already metres
    xmin, xmax, ymin, ymax = min(xs), max(xs), min(ys), max(ys)
    K = np.array([[d * width / (xmax - xmin), 0.0, -xmin * width / (xmax - xmin)],
                  [0.0, d * height / (ymax - ymin), ymax * height / (ymax - ymin)],
                  [0.0, 0.0, 1.0]])
    w2c = BLENDER_TO_OPENCV @ _rigid_inverse(camera_obj.matrix_world)
    return CameraCV(w2c, K, int(width), int(height), float(data.clip_start), float(data.clip_end), ortho)


def view_to_opencv(window_matrix: Any, view_matrix: Any, width: int, height: int) -> CameraCV:
    """A 3D viewport's own camera from its OpenGL matrices (`region_3d.window_matrix`,
    `view_matrix`) and region size: perspective, orthographic and camera views alike, with the
    camera view's zoom, pan and lens shift, as Blender itself projects the scene there."""
    P = np.array(window_matrix, dtype=np.float64)
    ortho = abs(P[3, 3] - 1.0) < 1e-9 and abs(P[3, 2]) < 1e-12
    w, h = float(width), float(height)
    if ortho:
        # ndc = P00 x_view + P03; camera x = view x, camera y = -view y, camera z = -view z
        K = np.array([[P[0, 0] * w / 2, 0.0, (1 + P[0, 3]) * w / 2],
                      [0.0, P[1, 1] * h / 2, (1 - P[1, 3]) * h / 2], [0.0, 0.0, 1.0]])
        near, far = (P[2, 3] + 1) / P[2, 2], (P[2, 3] - 1) / P[2, 2]
    else:
        # ndc = (P00 x_view + P02 z_view) / -z_view
        K = np.array([[P[0, 0] * w / 2, 0.0, (1 - P[0, 2]) * w / 2],
                      [0.0, P[1, 1] * h / 2, (1 + P[1, 2]) * h / 2], [0.0, 0.0, 1.0]])
        near, far = P[2, 3] / (P[2, 2] - 1), P[2, 3] / (P[2, 2] + 1)
    w2c = BLENDER_TO_OPENCV @ np.array(view_matrix, dtype=np.float64)
    return CameraCV(w2c, K, int(width), int(height), float(near), float(far), ortho)


def apply_opencv(camera_obj: Any, scene: Any, world_to_camera: np.ndarray, K: np.ndarray,
                 width: int, height: int) -> None:
    """Set a Blender camera (pose, lens, shift, sensor, pixel aspect) from an OpenCV camera, so
    that `camera_to_opencv` gives the same camera back. Sets the scene's resolution too."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = int(width), int(height), 100
    r.pixel_aspect_x, r.pixel_aspect_y = (1.0, fx / fy) if fx >= fy else (fy / fx, 1.0)
    data = camera_obj.data
    data.type = "PERSP"
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    data.lens = fx / width * data.sensor_width
    aspect_w = width * r.pixel_aspect_x
    data.shift_x = 0.5 - cx / width
    data.shift_y = (cy - height / 2) / height * (height * r.pixel_aspect_y) / aspect_w
    c2w = np.linalg.inv(BLENDER_TO_OPENCV @ np.asarray(world_to_camera, dtype=np.float64))
    import mathutils

    camera_obj.matrix_world = mathutils.Matrix(c2w.tolist())
