"""Training cameras: views around the avatar plus face and hand close-ups.

Every camera looks at a target on the posed body from an azimuth measured from the direction
the body (or head) faces, so 0 deg is a front view, +90 deg a view of the body's left side and
180 deg a back view. Two modes:

* "framing" (ours): full-body views whose distance frames the whole posed body at the sampled
  field of view, face close-ups and hand close-ups framed the same way;
* "orbit" (DreamWaltz-G's RandomCamera4Avatar): body views at 1-2 m, polar angle 60-120 deg,
  any azimuth, field of view 40-70 deg, looking at a point above the pelvis at a height drawn
  uniformly between the ankles and the shoulders, so that many views are partial-body close-ups;
  face views within +-90 deg of the front, +-15 deg of elevation, 0.5-1 m from the midpoint of
  the ears.

All randomness comes from the numpy Generator passed in (a pure function of seed and step).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..guidance.sds import LABEL_SCHEMES, view_label
from ..body.joints import JOINT_INDEX
from ..render import Camera

HEAD, LEFT_WRIST, RIGHT_WRIST, PELVIS = 15, 20, 21, 0
LEFT_ANKLE, RIGHT_ANKLE, LEFT_SHOULDER, RIGHT_SHOULDER = (JOINT_INDEX[n] for n in (
    "left_ankle", "right_ankle", "left_shoulder", "right_shoulder"))
RIGHT_EAR_KP, LEFT_EAR_KP = 58, 59   # in the body's 127 keypoints (see skeleton.py)
CAMERA_MODES = ("framing", "orbit")


@dataclasses.dataclass
class CameraConfig:
    p_face: float = 0.15            # probability of a face close-up
    p_hands: float = 0.10           # probability of a hand close-up (the rest: full body)
    p_overhead: float = 0.05        # full-body views from high above
    fov_deg: tuple[float, float] = (35.0, 45.0)
    margin: tuple[float, float] = (1.05, 1.35)          # full body: framing slack (1 = tight)
    elevation_deg: tuple[float, float] = (-10.0, 35.0)
    overhead_elevation_deg: tuple[float, float] = (60.0, 80.0)
    face_azimuth_deg: float = 75.0  # face close-ups within +- this of the face's direction
    face_extent: float = 0.16       # metres: half the size of what a face close-up frames
    face_margin: tuple[float, float] = (1.2, 1.8)
    hand_extent: float = 0.12
    hand_margin: tuple[float, float] = (1.3, 2.2)
    target_jitter: float = 0.04     # fraction of the framed extent
    close_ups: bool = True
    mode: str = "framing"           # "framing" | "orbit" (see the module docstring)
    labels: str = "ours"            # view words: "ours" | "dreamwaltz-g" (guidance.sds.view_label)
    radius_m: tuple[float, float] = (1.0, 2.0)          # orbit: body views' distance to the look-at point
    face_elevation_deg: tuple[float, float] = (-15.0, 15.0)   # orbit: face views
    face_radius_m: tuple[float, float] = (0.5, 1.0)           # orbit: face views' distance to the ears' midpoint

    def __post_init__(self) -> None:
        for name in ("fov_deg", "margin", "elevation_deg", "overhead_elevation_deg", "face_margin", "hand_margin",
                     "radius_m", "face_elevation_deg", "face_radius_m"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        if not (0 <= self.p_face + self.p_hands <= 1):
            raise ValueError("p_face + p_hands must lie in [0, 1]")
        if self.mode not in CAMERA_MODES:
            raise ValueError(f"cameras.mode must be one of {', '.join(CAMERA_MODES)}; got {self.mode!r}")
        if self.labels not in LABEL_SCHEMES:
            raise ValueError(f"cameras.labels must be one of {', '.join(LABEL_SCHEMES)}; got {self.labels!r}")


@dataclasses.dataclass
class View:
    camera: Camera
    kind: str          # body | face | hands
    view: str          # the view word: front | side | back | overhead (or left side / right side)
    azimuth: float     # degrees from the facing direction
    elevation: float   # degrees
    distance: float = 0.0   # metres from the camera to the point it looks at

    @property
    def spatial_scale(self) -> float:
        """distance x tan(fov_y / 2): half the height the view frames at its target (DreamWaltz-G's
        `spatial_scale`, which scales its position and scale learning rates)."""
        fy = float(np.asarray(self.camera.K, dtype=np.float64)[1, 1])
        return self.distance * 0.5 * float(self.camera.height) / fy


def _facing(transform: np.ndarray) -> float:
    """Yaw (radians, about +Y) of a joint's forward (+Z) axis in the world."""
    f = transform[:3, :3] @ np.array([0.0, 0.0, 1.0])
    return math.atan2(f[0], f[2])


def _eye(target: np.ndarray, yaw: float, elevation: float, distance: float) -> np.ndarray:
    ce = math.cos(elevation)
    return target + distance * np.array([ce * math.sin(yaw), math.sin(elevation), ce * math.cos(yaw)])


class CameraSampler:
    def __init__(self, config: CameraConfig, width: int, height: int) -> None:
        self.config = config
        self.width, self.height = int(width), int(height)

    def _uniform(self, rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(lo_hi[0], lo_hi[1]))

    def _distance(self, extent: float, fov_deg: float, margin: float) -> float:
        fov = math.radians(fov_deg) * min(1.0, self.width / self.height)
        return extent * margin / math.tan(fov / 2)

    def sample(self, rng: np.random.Generator, vertices: torch.Tensor, joints: torch.Tensor,
               transforms: torch.Tensor, keypoints: torch.Tensor | None = None,
               kind: str | None = None) -> View:
        """One view of a posed body: vertices (V,3), joints (55,3), skinning transforms (55,4,4),
        keypoints (127,3) for the face target (optional)."""
        c = self.config
        u = float(rng.random())
        if kind is None:
            kind = "body"
            if c.close_ups:
                if u < c.p_face:
                    kind = "face"
                elif u < c.p_face + c.p_hands:
                    kind = "hands"
        fov = self._uniform(rng, c.fov_deg)
        tr = transforms.detach().cpu().double().numpy()
        j = joints.detach().cpu().double().numpy()
        if c.mode == "orbit":
            return self._orbit(rng, kind, fov, tr, j, keypoints)
        if kind == "body":
            v = vertices.detach().cpu().double().numpy()
            lo, hi = v.min(0), v.max(0)
            target = 0.5 * (lo + hi)
            extent = 0.5 * float(np.linalg.norm(hi - lo))
            facing = _facing(tr[PELVIS])
            azimuth = self._uniform(rng, (-180.0, 180.0))
            overhead = float(rng.random()) < c.p_overhead
            elevation = self._uniform(rng, c.overhead_elevation_deg if overhead else c.elevation_deg)
            margin = self._uniform(rng, c.margin)
        elif kind == "face":
            if keypoints is not None:
                kp = keypoints.detach().cpu().double().numpy()
                target = kp[[55, 56, 57]].mean(0)       # nose and eyes
            else:
                target = j[HEAD] + tr[HEAD, :3, :3] @ np.array([0.0, 0.05, 0.06])
            extent = c.face_extent
            facing = _facing(tr[HEAD])
            azimuth = self._uniform(rng, (-c.face_azimuth_deg, c.face_azimuth_deg))
            elevation = self._uniform(rng, c.elevation_deg)
            margin = self._uniform(rng, c.face_margin)
        elif kind == "hands":
            side = LEFT_WRIST if rng.random() < 0.5 else RIGHT_WRIST
            first = 25 if side == LEFT_WRIST else 40   # the hand's 15 finger joints follow
            target = 0.5 * (j[side] + j[first:first + 15].mean(0))
            extent = c.hand_extent
            facing = _facing(tr[PELVIS])
            azimuth = self._uniform(rng, (-180.0, 180.0))
            elevation = self._uniform(rng, (-30.0, 60.0))
            margin = self._uniform(rng, c.hand_margin)
        else:
            raise ValueError(f"unknown view kind {kind!r}")
        target = target + rng.normal(0.0, c.target_jitter * extent, 3)
        distance = self._distance(extent, fov, margin)
        eye = _eye(target, facing + math.radians(azimuth), math.radians(elevation), distance)
        camera = Camera.look_at(eye, target, (0.0, 1.0, 0.0), fov, self.width, self.height,
                                near=0.01, far=100.0)
        label = view_label(azimuth, elevation, c.labels)
        if kind == "hands" and label == "overhead":
            label = "front"
        return View(camera=camera, kind=kind, view=label, azimuth=azimuth, elevation=elevation, distance=distance)

    def _orbit(self, rng: np.random.Generator, kind: str, fov: float, tr: np.ndarray, j: np.ndarray,
               keypoints: torch.Tensor | None) -> View:
        """DreamWaltz-G's cameras: a distance in metres around a look-at point (see the module
        docstring). Its azimuths are the world's, in which the body faces +Z; here they are
        measured from the pelvis's facing direction, which is the same when the pose has no
        global rotation (the training poses have none)."""
        c = self.config
        facing = _facing(tr[PELVIS])
        if kind == "face":
            if keypoints is None:
                raise ValueError("orbit face views need the body's keypoints (the ears)")
            kp = keypoints.detach().cpu().double().numpy()
            target = 0.5 * (kp[RIGHT_EAR_KP] + kp[LEFT_EAR_KP])
            azimuth = self._uniform(rng, (-c.face_azimuth_deg, c.face_azimuth_deg))
            elevation = self._uniform(rng, c.face_elevation_deg)
            distance = self._uniform(rng, c.face_radius_m)
        elif kind == "body":
            low = 0.5 * (j[LEFT_ANKLE, 1] + j[RIGHT_ANKLE, 1])
            high = 0.5 * (j[LEFT_SHOULDER, 1] + j[RIGHT_SHOULDER, 1])
            target = np.array([j[PELVIS, 0], float(rng.uniform(low, high)), j[PELVIS, 2]])
            azimuth = self._uniform(rng, (0.0, 360.0))
            elevation = self._uniform(rng, c.elevation_deg)
            distance = self._uniform(rng, c.radius_m)
        else:
            raise ValueError(f"orbit cameras make body and face views, not {kind!r} (set cameras.p_hands = 0)")
        eye = _eye(target, facing + math.radians(azimuth), math.radians(elevation), distance)
        camera = Camera.look_at(eye, target, (0.0, 1.0, 0.0), fov, self.width, self.height, near=0.01, far=100.0)
        return View(camera=camera, kind=kind, view=view_label(azimuth, elevation, c.labels),
                    azimuth=azimuth, elevation=elevation, distance=distance)


def front_camera(vertices: torch.Tensor, width: int, height: int, fov_deg: float = 40.0,
                 margin: float = 1.1) -> Camera:
    """A fixed front view framing the body (previews, tests)."""
    v = vertices.detach().cpu().double().numpy()
    lo, hi = v.min(0), v.max(0)
    target = 0.5 * (lo + hi)
    extent = 0.5 * float(np.linalg.norm(hi - lo))
    fov = math.radians(fov_deg) * min(1.0, width / height)
    distance = extent * margin / math.tan(fov / 2)
    return Camera.look_at(target + np.array([0.0, 0.0, distance]), target, (0.0, 1.0, 0.0), fov_deg,
                          width, height)
