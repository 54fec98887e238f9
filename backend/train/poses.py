"""Training poses: canonical, canonical-R, perturbed canonical and random plausible poses.

Modes (`PoseSampler.sample(rng, mode)`), by the stage that uses them:

* "canonical" (ours): the canonical pose, or half of the time canonical-R (below; or, with
  `perturb="sigma"`, normal noise on every joint);
* "random" (ours): joint-limit sampling (a hand-written table of per-axis ranges for the 21
  body joints, in SMPL-X's local frames: Y up, the body facing +Z, its left at +X) mixed with a
  motion library (the project's own built-in dance, or any motion file the motion loaders read);
* "apose" (DreamWaltz-G's canonical stage): the canonical pose, hands flat;
* "canonical-r" (DreamWaltz-G's canonical-R): shoulders lowered or raised by U(-45, 45) deg,
  hips spread by U(6, 45) deg, hands flat;
* "prior" (DreamWaltz-G's random stage): half of the time canonical-R, otherwise a body pose
  from the pose prior, hands as 12 PCA coefficients ~ N(0, 1) of the body model's hand space
  around its mean and, with expression control, expressions ~ N(0, 1), no jaw.

The pose prior is VPoser v2 when the user supplies its weights (`vposer`), otherwise the
project's own: every body axis independently normal around the rest pose with a standard
deviation of `prior_sigma` times the joint-limit table's extent on that side, truncated to the
limits (see `normal_prior`). All randomness comes from the numpy Generator passed in.
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
    # DreamWaltz-G's "canonical-A-adjust": arms 45 deg down, legs 6 deg apart
    "apose-45": {"left_shoulder": (0.0, 0.0, -np.pi / 4), "right_shoulder": (0.0, 0.0, np.pi / 4),
                 "left_hip": (0.0, 0.0, np.pi / 30), "right_hip": (0.0, 0.0, -np.pi / 30)},
    "tpose": {},
}
POSE_MODES = ("canonical", "random", "apose", "canonical-r", "prior")


@dataclasses.dataclass
class PoseConfig:
    canonical: str = "apose"           # apose | tpose
    perturb_prob: float = 0.5          # canonical stage: chance of a perturbed canonical pose
    perturb: str = "canonical-r"       # the perturbation: "canonical-r" (arm and leg spreads) | "sigma"
    perturb_sigma: float = 0.08        # radians ("sigma": normal noise on every joint)
    library_prob: float = 0.3          # random stage: chance of a library pose (else joint limits)
    library: str | None = "dance"      # "dance" (built-in), a motion file, or None
    limit_scale: tuple[float, float] = (0.2, 0.8)   # how far into the joint ranges to sample
    hand_curl: tuple[float, float] = (0.0, 1.0)     # random finger curl (radians at each joint)
    expression_sigma: float = 0.7      # random-pose stage, with expression control
    expression_clip: float | None = 2.0   # |coefficient| limit (None: unclipped)
    jaw_open: tuple[float, float] = (0.0, 0.35)   # (0, 0): no jaw
    hands: str = "relaxed"             # canonical poses' hands: relaxed (a slight curl) | flat
    hand_pca: int = 0                  # random hands: 0: one curl per hand; K: K PCA coefficients ~ N(0, s)
    hand_pca_sigma: float = 1.0
    canonical_r_shoulder_deg: tuple[float, float] = (-45.0, 45.0)
    canonical_r_hip_deg: tuple[float, float] = (6.0, 45.0)
    canonical_r_prob: float = 0.5      # "prior" mode: chance of a canonical-R pose
    vposer: str | None = None          # VPoser v2 weights for the "prior" mode; None: the project's prior
    prior_sigma: float = 0.5           # the project's prior: sigma per side, as a fraction of the limits

    def __post_init__(self) -> None:
        for name in ("limit_scale", "hand_curl", "jaw_open", "canonical_r_shoulder_deg", "canonical_r_hip_deg"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.canonical not in CANONICAL_POSES:
            raise ValueError(f"canonical pose must be one of {', '.join(CANONICAL_POSES)}; got {self.canonical!r}")
        if self.perturb not in ("canonical-r", "sigma"):
            raise ValueError(f"poses.perturb must be canonical-r or sigma; got {self.perturb!r}")
        if self.hands not in ("relaxed", "flat"):
            raise ValueError(f"poses.hands must be relaxed or flat; got {self.hands!r}")
        if self.hand_pca < 0:
            raise ValueError(f"poses.hand_pca must be >= 0; got {self.hand_pca}")
        if not 0 <= self.canonical_r_prob <= 1:
            raise ValueError(f"poses.canonical_r_prob must lie in [0, 1]; got {self.canonical_r_prob}")


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


def normal_prior(rng: np.random.Generator, sigma: float = 0.5) -> np.ndarray:
    """The project's body-pose prior (21, 3): each axis normal around the rest pose with a
    standard deviation of `sigma` times the joint-limit table's extent on each side of it
    (so the limits sit at 2 sigma with the default; an axis that bends one way only, like a
    knee, draws from the half-normal on that side), truncated to the limits.

    It stands in for VPoser, whose samples (z ~ N(0, I)) are mostly near the rest pose with a
    spread set by real motion capture. Like it, most samples here are moderate poses around
    the rest pose and a few reach the limits of the range; unlike it, the axes are independent
    (no learned coupling between joints)."""
    lo, hi = LIMITS[..., 0], LIMITS[..., 1]
    centre = np.clip(0.0, lo, hi)
    z = rng.normal(0.0, 1.0, lo.shape)
    # an axis that can move one way only (a knee) folds the normal onto that side
    z = np.where(centre - lo <= 0, np.abs(z), np.where(hi - centre <= 0, -np.abs(z), z))
    side = np.where(z > 0, hi - centre, centre - lo)
    return np.clip(centre + z * sigma * side, lo, hi)


class PoseSampler:
    def __init__(self, config: PoseConfig, num_expression: int = 0, expression: bool = False,
                 hand_basis: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        """`hand_basis`: per side the body model's hand space (components (K, 45), mean (45,)),
        needed for PCA hands (`hand_pca` > 0)."""
        self.config = config
        self.expression = expression
        self.num_expression = num_expression
        self.hand_basis = hand_basis
        self._library: np.ndarray | None = None  # (N, 55, 3)
        self._vposer: Any = None
        if config.hand_pca and hand_basis is not None:
            have = min(np.asarray(c).shape[0] for c, _ in hand_basis.values())
            if config.hand_pca > have:
                raise ValueError(f"poses.hand_pca = {config.hand_pca}, but the body model has {have} hand components")

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

    def vposer(self) -> Any:
        """The VPoser decoder (loaded on first use; a VPoserError names a bad file)."""
        if self._vposer is None:
            from .vposer import VPoserDecoder

            self._vposer = VPoserDecoder.load(str(self.config.vposer))
        return self._vposer

    def canonical(self) -> dict[str, np.ndarray]:
        left, right = self._canonical_hands()
        return _params(canonical_body_pose(self.config.canonical), left, right)

    def _canonical_hands(self) -> tuple[np.ndarray, np.ndarray]:
        if self.config.hands == "flat":
            return np.zeros((15, 3)), np.zeros((15, 3))
        return relaxed_hands()

    def canonical_r(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """DreamWaltz-G's canonical-R: the arms at a random angle (lowered or raised), the legs
        spread by a random angle; everything else at rest, hands as the canonical pose's."""
        c = self.config
        shoulder = np.radians(rng.uniform(*c.canonical_r_shoulder_deg))
        hip = np.radians(rng.uniform(*c.canonical_r_hip_deg))
        pose = np.zeros((NUM_BODY, 3))
        pose[BODY_INDEX["left_shoulder"], 2], pose[BODY_INDEX["right_shoulder"], 2] = -shoulder, shoulder
        pose[BODY_INDEX["left_hip"], 2], pose[BODY_INDEX["right_hip"], 2] = hip, -hip
        left, right = self._canonical_hands()
        return _params(pose, left, right)

    def pca_hands(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Hand gestures: `hand_pca` coefficients ~ N(0, hand_pca_sigma) per hand on the body
        model's hand components, around its mean hand."""
        c = self.config
        if self.hand_basis is None:
            raise ValueError("poses.hand_pca needs the body model's hand components (PoseSampler(hand_basis=...))")
        out = []
        for side in ("left", "right"):
            comps, mean = self.hand_basis[side]
            coeffs = rng.normal(0.0, c.hand_pca_sigma, c.hand_pca)
            out.append((coeffs @ np.asarray(comps, np.float64)[:c.hand_pca] + np.asarray(mean, np.float64))
                       .reshape(15, 3))
        return out[0], out[1]

    def _random_hands(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        if c.hand_pca:
            return self.pca_hands(rng)
        curl = rng.uniform(c.hand_curl[0], c.hand_curl[1], 2)
        return relaxed_hands(float(curl[0]))[0], relaxed_hands(float(curl[1]))[1]

    def from_prior(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A body pose of the pose prior (VPoser when configured, else `normal_prior`)."""
        c = self.config
        body = self.vposer().sample(rng)[0] if c.vposer else normal_prior(rng, c.prior_sigma)
        left, right = self._random_hands(rng)
        return _params(body, left, right)

    def _expression(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.config
        n = self.num_expression
        expr = rng.normal(0.0, c.expression_sigma, n) if n else np.zeros(0)
        if c.expression_clip is not None:
            expr = np.clip(expr, -c.expression_clip, c.expression_clip)
        out = {"expression": expr.reshape(1, -1).astype(np.float32)}
        if c.jaw_open[1] > 0:
            jaw = np.array([rng.uniform(*c.jaw_open) if rng.random() < 0.5 else 0.0, 0.0, 0.0])
            out["jaw_pose"] = jaw.reshape(1, 3).astype(np.float32)
        return out

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
        left, right = self._random_hands(rng)
        return _params(pose, left, right)

    def from_library(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        lib = self.library()
        frame = lib[int(rng.integers(0, lib.shape[0]))]
        return _params(frame[1:22], frame[25:40], frame[40:55])

    # ---- per stage -----------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, mode: str) -> dict[str, np.ndarray]:
        """A pose of `mode` (see the module docstring)."""
        c = self.config
        u = float(rng.random())
        random_pose = True
        if mode == "canonical":
            random_pose = False
            if u >= c.perturb_prob:
                params = self.canonical()
            else:
                params = self.perturbed_canonical(rng) if c.perturb == "sigma" else self.canonical_r(rng)
        elif mode == "random":
            use_lib = u < c.library_prob and self.library() is not None
            params = self.from_library(rng) if use_lib else self.from_limits(rng)
        elif mode == "apose":
            params, random_pose = self.canonical(), False
        elif mode == "canonical-r":
            params, random_pose = self.canonical_r(rng), False
        elif mode == "prior":
            if u < c.canonical_r_prob:
                params, random_pose = self.canonical_r(rng), False
            else:
                params = self.from_prior(rng)
        else:
            raise ValueError(f"unknown pose mode {mode!r}; choose one of {', '.join(POSE_MODES)}")
        if self.expression and random_pose:
            params.update(self._expression(rng))
        return params


def to_torch(params: dict[str, Any], device: Any) -> dict[str, Any]:
    import torch

    return {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in params.items()}
