"""AMASS-style .npz (SMPL-H 156 and SMPL-X 165 pose layouts, plus BEAT2's variant).

Why each rule:
* ``poses`` holds root(3) + body(63) + then either hands(90) [SMPL-H, 156] or
  jaw(3) + eyes(6) + hands(90) [SMPL-X, 165]. A 72-column (SMPL) layout is accepted too.
* The frame rate is ``mocap_framerate`` (SMPL-H releases) or ``mocap_frame_rate`` (SMPL-X
  releases), sometimes 120.00004 rather than 120: it is kept as stored.
* ``gender`` is a str or bytes array; poses may be float32 or float64.
* Only the needed keys are read, with allow_pickle=False: some files carry a pickled dict
  (``markers_latent_vids``) or NaN-filled marker arrays that must not matter.
* AMASS is Z-up, and its hands are absolute (MANO's mean already in them).
  Files in BEAT2's convention (an ``expressions`` key, as EMAGE/SynTalker write them) are
  Y-up and their hands are relative to the model's hand mean (smplx's flat_hand_mean=False),
  so the mean is added from the body model.
* Betas are kept only for the SMPL-X layout: SMPL-H betas do not shape an SMPL-X body.
"""

from __future__ import annotations

import numpy as np

from ...safe_numpy import open_npz
from ..convert import add_hand_mean, detect_up
from ..errors import MotionError
from ..types import Motion
from ._common import LoadContext, array, frames, require, scalar, text, zeros

FPS_KEYS = ("mocap_framerate", "mocap_frame_rate")
LAYOUTS = {156: "smplh", 165: "smplx", 72: "smpl"}


def is_amass(keys) -> bool:
    return "poses" in keys and ("trans" in keys or any(k in keys for k in FPS_KEYS))


def is_beat2(keys) -> bool:
    return "expressions" in keys


def load(path, ctx: LoadContext) -> Motion:
    with open_npz(path) as z:
        keys = set(z.files)
        poses = array(require(z, "poses", path), "poses", path)
        if poses.ndim == 3:                       # (N, J, 3) spelling
            poses = poses.reshape(poses.shape[0], -1)
        if poses.ndim != 2 or poses.shape[1] not in LAYOUTS:
            raise MotionError(path, "poses", "shape (N, 156) SMPL-H, (N, 165) SMPL-X or (N, 72) SMPL",
                              f"shape {poses.shape}")
        n = poses.shape[0]
        layout = LAYOUTS[poses.shape[1]]
        fps = _fps(z, keys, path, ctx)
        transl = frames(array(z["trans"], "trans", path, ndim=2, last=3), n, "trans", path) \
            if "trans" in keys else zeros(n, 3)
        gender = text(z["gender"]) if "gender" in keys else None
        betas = None
        if layout == "smplx" and "betas" in keys:
            betas = array(z["betas"], "betas", path).reshape(-1)
        expression = zeros(n, 0)
        for k in ("expressions", "expression"):
            if k in keys:
                expression = frames(array(z[k], k, path, ndim=2), n, k, path)
                break
        beat2 = is_beat2(keys)

    orient, body = poses[:, :3], poses[:, 3:66].reshape(n, 21, 3)
    jaw = leye = reye = zeros(n, 3)
    if layout == "smplh":
        lhand, rhand = poses[:, 66:111], poses[:, 111:156]
    elif layout == "smplx":
        jaw, leye, reye = poses[:, 66:69], poses[:, 69:72], poses[:, 72:75]
        lhand, rhand = poses[:, 75:120], poses[:, 120:165]
    else:                                         # SMPL: joints 22/23 are SMPL's hands
        lhand = rhand = zeros(n, 45)
        ctx.notes.append("SMPL 24-joint layout: joints 22-23 have no SMPL-X counterpart and were dropped")
    lhand = lhand.reshape(n, 15, 3)
    rhand = rhand.reshape(n, 15, 3)
    if beat2 and layout == "smplx":
        lhand = add_hand_mean(lhand, ctx.body_model, "left", path, "poses")
        rhand = add_hand_mean(rhand, ctx.body_model, "right", path, "poses")
        ctx.notes.append("BEAT2 convention: Y-up, hands relative to the hand mean (mean added)")
    if layout != "smplx":
        ctx.notes.append(f"{layout.upper()} betas are not SMPL-X betas and were not kept")
    return Motion(fps=fps, global_orient=orient.astype(np.float32), body_pose=body.astype(np.float32),
                  left_hand_pose=lhand.astype(np.float32), right_hand_pose=rhand.astype(np.float32),
                  jaw_pose=np.asarray(jaw, np.float32), leye_pose=np.asarray(leye, np.float32),
                  reye_pose=np.asarray(reye, np.float32), expression=expression.astype(np.float32),
                  transl=transl.astype(np.float32), betas=None if betas is None else betas.astype(np.float32),
                  gender=gender, source_format="amass", source_up_axis="Y" if beat2 else _up_axis(orient, ctx))


def _up_axis(orient: np.ndarray, ctx: LoadContext) -> str:
    """AMASS is Z-up; other SMPL-X exports in its layout are often Y-up: read it off the body."""
    axis = detect_up(orient, default="Z")
    if axis != "Z":
        ctx.notes.append(f"the body stands along {axis}, not Z as in AMASS: read as {axis}-up (the import's "
                         "Up Axis overrides this)")
    return axis


def _fps(z, keys, path, ctx) -> float:
    if ctx.source_fps is not None:
        return float(ctx.source_fps)
    for k in FPS_KEYS:
        if k in keys:
            return scalar(z[k], k, path)
    raise MotionError(path, " or ".join(FPS_KEYS), "the capture frame rate",
                      "neither key; pass source_fps= (CLI: --source-fps)")
