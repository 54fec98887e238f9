"""Coordinate conversions shared by the loaders: up axis, rigid world changes, hand PCA.

Rotating the world of an SMPL-X motion is not just rotating its translation: SMPL-X
rotates the body about the pelvis JOINT, which sits at J0 (the rest pelvis for the body's
betas), not at the origin. For a world rotation R (and translation t):

    orient' = R · orient
    transl' = R · (transl + J0) + t − J0

so the posed body is exactly the old posed body moved by (R, t).
"""

from __future__ import annotations

import numpy as np

from .errors import MotionError
from .rotations import aa_to_mat, mat_to_aa, rot_x
from .types import CameraTrack, Motion

DEFAULT_PELVIS = np.zeros(3)
"""Pelvis rest joint used when no body model is given: the open template's (the origin).

Pass ``body_model=`` to load_motion for any other body: the real SMPL-X's rest pelvis sits
a few decimetres below the origin, and omitting it shifts a converted clip by that much
(the pose is unaffected; only the root translation depends on J0).
"""

_rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

UP_TO_Y = {
    "Y": np.eye(3),
    "Z": rot_x(-np.pi / 2),     # (x, y, z) -> (x, z, -y): AMASS and most mocap
    "-Y": rot_x(np.pi),         # (x, y, z) -> (x, -y, -z): OpenCV camera space (y down)
    "-Z": rot_x(np.pi / 2),
    "X": _rz90,
    "-X": _rz90.T,
}
"""Rotation taking each source up axis to +Y (the X-axis stays "right" where it can)."""


def pelvis_offset(body_model, betas=None) -> np.ndarray:
    """Rest pelvis J0 (3,) of ``body_model`` for ``betas`` (truncated/padded to the model);
    DEFAULT_PELVIS without a body model. torch results are converted without importing torch."""
    if body_model is None:
        return DEFAULT_PELVIS.copy()
    b = None
    if betas is not None:
        n = int(getattr(body_model, "num_betas", len(betas)))
        b = np.zeros(n, np.float32)
        m = min(n, len(betas))
        b[:m] = np.asarray(betas, np.float32).reshape(-1)[:m]
    joints = body_model.rest_joints(b)
    if hasattr(joints, "detach"):
        joints = joints.detach().cpu().numpy()
    return np.asarray(joints, dtype=np.float64)[0].copy()


def hand_pca(body_model, side: str, path, key: str):
    """(components (K, 45), mean (45,)) of the body model's hand space, or a MotionError
    saying that this file needs one (its hands are PCA coefficients or mean-relative)."""
    if body_model is None:
        raise MotionError(path, key, message=(
            "the hands in this file are stored relative to the body model's hand space "
            "(PCA coefficients and/or the hand mean); pass body_model= (or use the CLI, which "
            "loads the configured body model) to turn them into joint rotations"),
            needs_body_model=True)
    comps, mean = body_model.hand_pca(side)
    comps = np.asarray(comps, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    if comps.ndim != 2 or comps.shape[1] != 45 or mean.shape != (45,):
        raise MotionError(path, key, "body model hand components (K, 45) and mean (45,)",
                          f"{comps.shape} and {mean.shape}")
    return comps, mean


def hands_from_pca(coeffs: np.ndarray, body_model, side: str, path, key: str,
                   add_mean: bool = True) -> np.ndarray:
    """(N, K) PCA coefficients -> (N, 15, 3) absolute hand rotations (coeffs @ comps[:K] + mean)."""
    comps, mean = hand_pca(body_model, side, path, key)
    k = coeffs.shape[1]
    if k > comps.shape[0]:
        raise MotionError(path, key, f"at most {comps.shape[0]} PCA coefficients (the body model's)", f"{k}")
    full = np.asarray(coeffs, np.float64) @ comps[:k]
    if add_mean:
        full = full + mean
    return full.reshape(-1, 15, 3)


def add_hand_mean(hand: np.ndarray, body_model, side: str, path, key: str) -> np.ndarray:
    """Mean-relative (flat_hand_mean=False) hand rotations -> absolute ones."""
    _, mean = hand_pca(body_model, side, path, key)
    return (np.asarray(hand, np.float64).reshape(-1, 45) + mean).reshape(-1, 15, 3)


def transform_world(motion: Motion, R: np.ndarray, t=None, pelvis=None) -> Motion:
    """Move the motion's world by x' = R x + t (R may be (3,3) or per-frame (N,3,3)).

    The body turns about its pelvis joint (see the module docstring); a camera track is
    carried along so that it still sees the same image.
    """
    R = np.asarray(R, dtype=np.float64)
    n = motion.num_frames
    t = np.zeros(3) if t is None else np.asarray(t, dtype=np.float64)
    J0 = DEFAULT_PELVIS if pelvis is None else np.asarray(pelvis, dtype=np.float64)
    Rn = np.broadcast_to(R, (n, 3, 3)) if R.ndim == 2 else R
    orient = mat_to_aa(Rn @ aa_to_mat(motion.global_orient)).astype(np.float32)
    transl = (np.einsum("nij,nj->ni", Rn, motion.transl.astype(np.float64) + J0) + t - J0).astype(np.float32)
    camera = motion.camera
    if camera is not None:
        # old world x = R^T (x' - t); w2c' = w2c · [[R^T, -R^T t], [0, 1]]
        inv = np.zeros((n, 4, 4))
        RT = np.swapaxes(Rn, 1, 2)
        inv[:, :3, :3] = RT
        inv[:, :3, 3] = -np.einsum("nij,nj->ni", RT, np.broadcast_to(t, (n, 3)))
        inv[:, 3, 3] = 1.0
        camera = CameraTrack(camera.world_to_camera @ inv, camera.K, camera.width, camera.height)
    return motion.replace(global_orient=orient, transl=transl, camera=camera)


def to_y_up(motion: Motion, pelvis=None, up_axis: str | None = None) -> Motion:
    """Rotate a motion whose world is `up_axis`-up (default: motion.source_up_axis) to Y-up."""
    axis = (up_axis or motion.source_up_axis or "Y").upper()
    if axis not in UP_TO_Y:
        raise MotionError(None, "up_axis", f"one of {', '.join(UP_TO_Y)}", repr(axis))
    out = motion if axis == "Y" else transform_world(motion, UP_TO_Y[axis], pelvis=pelvis)
    return out.replace(source_up_axis=axis)


def body_up_vectors(global_orient: np.ndarray) -> np.ndarray:
    """(N, 3) world direction of the body's up axis (the rest pose's +Y) per frame."""
    return aa_to_mat(global_orient)[:, :, 1]


def detect_up(global_orient: np.ndarray, default: str = "Z") -> str:
    """The world axis the body stands along ("Y", "-Y", "Z", "-Z", "X", "-X"), from the median
    over the clip of its up vector; a clip that stands along none of them keeps `default`.

    For files whose convention is not reliable (AMASS-layout .npz: AMASS itself is Z-up, but
    many SMPL-X exports in the same layout are Y-up and would import lying down)."""
    finite = np.all(np.isfinite(global_orient), axis=1)
    if not finite.any():
        return default
    up = np.median(body_up_vectors(global_orient[finite]), axis=0)
    k = int(np.argmax(np.abs(up)))
    if abs(up[k]) < 0.7:
        return default
    return ("-" if up[k] < 0 else "") + "XYZ"[k]


def detect_vertical(global_orient: np.ndarray, default: str = "Y") -> str:
    """'Y' or '-Y' from the sign of the body's median up vector along Y.

    For files in camera coordinates (TalkSHOW, the 265 demo layout, TRAM, ReEnact) the up
    axis is whatever the camera made it: OpenCV cameras look with y down, so a person
    filmed upright stands along -Y there, while files already converted to SMPL-X's frame
    stand along +Y. The median over the clip is robust to a few wild frames; a clip whose
    body is mostly horizontal keeps `default`.
    """
    finite = np.all(np.isfinite(global_orient), axis=1)
    if not finite.any():
        return default
    y = float(np.median(body_up_vectors(global_orient[finite])[:, 1]))
    if y > 0.5:
        return "Y"
    if y < -0.5:
        return "-Y"
    return default
