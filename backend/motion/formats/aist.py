"""AIST++ .pkl: SMPL poses (N, 72), translation, optional scaling; 60 fps, Y-up.

SMPL's 24 joints: 0 is the root, 1-21 are the same body joints as SMPL-X's body_pose, and
22-23 are SMPL's hand joints, which SMPL-X replaces by full hands (left flat here).
``smpl_trans`` is in the capture's units and ``smpl_scaling`` (when present) divides it to
metres; some redistributed files have already divided it and dropped the key. The
pickle is read with the restricted unpickler.
"""

from __future__ import annotations

import numpy as np

from ..errors import MotionError
from ..types import Motion
from ._common import LoadContext, array, frames, require, scalar, zeros

AIST_FPS = 60.0


def is_aist(obj) -> bool:
    return isinstance(obj, dict) and "smpl_poses" in obj


def load_dict(d: dict, path, ctx: LoadContext) -> Motion:
    poses = array(require(d, "smpl_poses", path), "smpl_poses", path)
    if poses.ndim == 3:
        poses = poses.reshape(poses.shape[0], -1)
    if poses.ndim != 2 or poses.shape[1] != 72:
        raise MotionError(path, "smpl_poses", "shape (N, 72) (SMPL, 24 joints)", f"shape {poses.shape}")
    n = poses.shape[0]
    transl = frames(array(require(d, "smpl_trans", path), "smpl_trans", path, ndim=2, last=3), n, "smpl_trans", path)
    if "smpl_scaling" in d and d["smpl_scaling"] is not None:
        scale = scalar(d["smpl_scaling"], "smpl_scaling", path)
        if not np.isfinite(scale) or scale <= 0:
            raise MotionError(path, "smpl_scaling", "a positive scale", repr(scale))
        transl = transl / scale
    else:
        ctx.notes.append("no smpl_scaling: smpl_trans taken as metres")
    ctx.notes.append("SMPL joints 22-23 (hands) have no SMPL-X counterpart and were dropped")
    fps = float(ctx.source_fps) if ctx.source_fps is not None else AIST_FPS
    return Motion(fps=fps, global_orient=poses[:, :3].astype(np.float32),
                  body_pose=poses[:, 3:66].reshape(n, 21, 3).astype(np.float32),
                  left_hand_pose=zeros(n, 15, 3), right_hand_pose=zeros(n, 15, 3),
                  jaw_pose=zeros(n, 3), leye_pose=zeros(n, 3), reye_pose=zeros(n, 3),
                  expression=zeros(n, 0), transl=transl.astype(np.float32),
                  source_format="aist", source_up_axis="Y")
