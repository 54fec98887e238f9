"""Training poses: the canonical pose, perturbed canonical poses and random plausible poses.

Random poses come from joint-limit sampling (a hand-written table of per-axis ranges for the
21 body joints, in SMPL-X's local frames: Y up, the body facing +Z, its left at +X) and, mixed
in, from a motion library: the project's own built-in dance, or any motion file the motion
loaders read (AMASS, AIST++, ...). No licensed pose prior is needed. All randomness comes from
the numpy Generator passed in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

NUM_BODY = 21
BODY_INDEX = {name: i for i, name in enumerate((
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle",
    "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist"))}

# (x, y, z) ranges in radians. Signs: hip x < 0 swings the leg forward, knee x > 0 bends it;
# spine/neck x > 0 bends forward; left shoulder z < 0 lowers the arm (right: z > 0); left elbow
# y < 0 bends the forearm forward (right: y > 0).
JOINT_LIMITS: dict[str, tuple[tuple[float, float], ...]] = {
    "left_hip": ((-1.6, 0.4), (-0.5, 0.5), (-0.2, 0.8)),
    "right_hip": ((-1.6, 0.4), (-0.5, 0.5), (-0.8, 0.2)),
    "spine1": ((-0.3, 0.6), (-0.4, 0.4), (-0.3, 0.3)),
    "left_knee": ((0.0, 2.0), (0.0, 0.0), (0.0, 0.0)),
    "right_knee": ((0.0, 2.0), (0.0, 0.0), (0.0, 0.0)),
    "spine2": ((-0.2, 0.4), (-0.3, 0.3), (-0.2, 0.2)),
    "left_ankle": ((-0.4, 0.7), (-0.2, 0.2), (-0.3, 0.3)),
    "right_ankle": ((-0.4, 0.7), (-0.2, 0.2), (-0.3, 0.3)),
    "spine3": ((-0.2, 0.3), (-0.3, 0.3), (-0.2, 0.2)),
    "left_foot": ((-0.3, 0.3), (0.0, 0.0), (0.0, 0.0)),
    "right_foot": ((-0.3, 0.3), (0.0, 0.0), (0.0, 0.0)),
    "neck": ((-0.3, 0.4), (-0.5, 0.5), (-0.3, 0.3)),
    "left_collar": ((-0.1, 0.1), (-0.2, 0.2), (-0.3, 0.2)),
    "right_collar": ((-0.1, 0.1), (-0.2, 0.2), (-0.2, 0.3)),
    "head": ((-0.4, 0.4), (-0.6, 0.6), (-0.3, 0.3)),
    "left_shoulder": ((-0.8, 0.8), (-1.2, 0.6), (-1.4, 0.8)),
    "right_shoulder": ((-0.8, 0.8), (-0.6, 1.2), (-0.8, 1.4)),
    "left_elbow": ((-0.4, 0.4), (-2.3, 0.0), (0.0, 0.0)),
    "right_elbow": ((-0.4, 0.4), (0.0, 2.3), (0.0, 0.0)),
    "left_wrist": ((-0.6, 0.6), (-0.3, 0.3), (-0.8, 0.8)),
    "right_wrist": ((-0.6, 0.6), (-0.3, 0.3), (-0.8, 0.8)),
}
LIMITS = np.array([JOINT_LIMITS[name] for name in BODY_INDEX], dtype=np.float64)  # (21, 3, 2)

CANONICAL_POSES = {
    "apose": {"left_shoulder": (0.0, 0.0, -0.85), "right_shoulder": (0.0, 0.0, 0.85),
              "left_hip": (0.0, 0.0, 0.12), "right_hip": (0.0, 0.0, -0.12)},
    "tpose": {},
}


@dataclasses.dataclass
class PoseConfig:
    canonical: str = "apose"           # apose | tpose
    perturb_prob: float = 0.5          # canonical stage: chance of a perturbed canonical pose
    perturb_sigma: float = 0.08        # radians
    library_prob: float = 0.3          # random stage: chance of a library pose (else joint limits)
    library: str | None = "dance"      # "dance" (built-in), a motion file, or None
    limit_scale: tuple[float, float] = (0.2, 0.8)   # how far into the joint ranges to sample
    hand_curl: tuple[float, float] = (0.0, 1.0)     # random finger curl (radians at each joint)
    expression_sigma: float = 0.7      # random-pose stage, with expression control
    jaw_open: tuple[float, float] = (0.0, 0.35)

    def __post_init__(self) -> None:
        self.limit_scale = tuple(float(v) for v in self.limit_scale)
        self.hand_curl = tuple(float(v) for v in self.hand_curl)
        self.jaw_open = tuple(float(v) for v in self.jaw_open)
        if self.canonical not in CANONICAL_POSES:
            raise ValueError(f"canonical pose must be one of {', '.join(CANONICAL_POSES)}; got {self.canonical!r}")


def _params(body_pose: np.ndarray, left: np.ndarray | None = None, right: np.ndarray | None = None,
            jaw: np.ndarray | None = None, expression: np.ndarray | None = None) -> dict[str, np.ndarray]:
    out = {"global_orient": np.zeros((1, 3), np.float32),
           "body_pose": body_pose.reshape(1, 63).astype(np.float32),
           "left_hand_pose": (np.zeros((15, 3)) if left is None else left).reshape(1, 45).astype(np.float32),
           "right_hand_pose": (np.zeros((15, 3)) if right is None else right).reshape(1, 45).astype(np.float32)}
    if jaw is not None:
        out["jaw_pose"] = jaw.reshape(1, 3).astype(np.float32)
    if expression is not None:
        out["expression"] = expression.reshape(1, -1).astype(np.float32)
    return out


def canonical_body_pose(name: str = "apose") -> np.ndarray:
    pose = np.zeros((NUM_BODY, 3))
    for joint, value in CANONICAL_POSES[name].items():
        pose[BODY_INDEX[joint]] = value
    return pose


def relaxed_hands(curl: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Fingers curled a little at every joint (the thumb less), like a relaxed hand.
    Finger order: index, middle, pinky, ring (3 joints each), thumb (the last 3)."""
    left = np.zeros((15, 3))
    right = np.zeros((15, 3))
    left[:12, 2] = -curl
    right[:12, 2] = curl
    left[12:, 1] = -0.3 * curl
    right[12:, 1] = 0.3 * curl
    return left, right


class PoseSampler:
    def __init__(self, config: PoseConfig, num_expression: int = 0, expression: bool = False) -> None:
        self.config = config
        self.expression = expression
        self.num_expression = num_expression
        self._library: np.ndarray | None = None  # (N, 55, 3)

    # ---- sources -----------------------------------------------------------------------------
    def library(self) -> np.ndarray | None:
        if self._library is None and self.config.library:
            if self.config.library == "dance":
                from ..dance import dance

                motion = dance(seconds=8.0, fps=15.0, num_expression=max(self.num_expression, 1))
            else:
                from ..motion import load_motion

                motion = load_motion(self.config.library)
            self._library = np.asarray(motion.full_pose, dtype=np.float64)
        return self._library

    def canonical(self) -> dict[str, np.ndarray]:
        left, right = relaxed_hands()
        return _params(canonical_body_pose(self.config.canonical), left, right)

    def _expression(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        n = self.num_expression
        expr = np.clip(rng.normal(0.0, c.expression_sigma, n), -2.0, 2.0) if n else np.zeros(0)
        jaw = np.array([rng.uniform(*c.jaw_open) if rng.random() < 0.5 else 0.0, 0.0, 0.0])
        return {"expression": expr.reshape(1, -1).astype(np.float32), "jaw_pose": jaw.reshape(1, 3).astype(np.float32)}

    def perturbed_canonical(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        pose = canonical_body_pose(c.canonical) + rng.normal(0.0, c.perturb_sigma, (NUM_BODY, 3))
        pose = np.clip(pose, LIMITS[..., 0] - 0.1, LIMITS[..., 1] + 0.1)
        left, right = relaxed_hands(float(rng.uniform(0.0, 0.5)))
        return _params(pose, left, right)

    def from_limits(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        scale = rng.uniform(*c.limit_scale)
        lo, hi = LIMITS[..., 0], LIMITS[..., 1]
        pose = rng.uniform(lo, hi) * scale
        curl = rng.uniform(c.hand_curl[0], c.hand_curl[1], 2)
        left, _ = relaxed_hands(float(curl[0]))
        _, right = relaxed_hands(float(curl[1]))
        return _params(pose, left, right)

    def from_library(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        lib = self.library()
        frame = lib[int(rng.integers(0, lib.shape[0]))]
        return _params(frame[1:22], frame[25:40], frame[40:55])

    # ---- per stage -----------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, mode: str) -> dict[str, np.ndarray]:
        """mode: "canonical" (canonical or perturbed canonical) or "random"."""
        c = self.config
        u = float(rng.random())
        if mode == "canonical":
            params = self.perturbed_canonical(rng) if u < c.perturb_prob else self.canonical()
        elif mode == "random":
            use_lib = u < c.library_prob and self.library() is not None
            params = self.from_library(rng) if use_lib else self.from_limits(rng)
        else:
            raise ValueError(f"unknown pose mode {mode!r}")
        if self.expression and mode == "random":
            params.update(self._expression(rng))
        return params


def to_torch(params: dict[str, Any], device: Any) -> dict[str, Any]:
    import torch

    return {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in params.items()}
