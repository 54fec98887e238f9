"""The 265-column SMPL-X layout of TalkSHOW's outputs and DreamWaltz-G's demo motions.

Columns: jaw 0:3, left eye 3:6, right eye 6:9, global orient 9:12, body 12:75, left hand
75:120, right hand 120:165, expression 165:265 (100). No translation, no frame rate:
the rate defaults to 30 fps (TalkSHOW); DreamWaltz-G's AIST++ demo (aist.npy) is 60 fps,
pass source_fps=60 for it. Hands are full axis-angles relative to the hand mean (both
projects build SMPL-X with flat_hand_mean=False), so the body model's mean is added.
TalkSHOW writes them in its camera's frame (y down, the body upside down in Y-up);
DreamWaltz-G's are already Y-up: the up axis is read off the body (convert.detect_vertical).
"""

from __future__ import annotations

import numpy as np

from ..convert import add_hand_mean, detect_vertical
from ..types import Motion
from ._common import LoadContext, zeros

DEFAULT_FPS = 30.0
COLUMNS = 265


def load_array(a: np.ndarray, path, ctx: LoadContext) -> Motion:
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    fps = float(ctx.source_fps) if ctx.source_fps is not None else DEFAULT_FPS
    if ctx.source_fps is None:
        ctx.notes.append("265-column files carry no frame rate: assumed 30 fps (DreamWaltz-G's aist.npy is 60)")
    lhand = add_hand_mean(a[:, 75:120], ctx.body_model, "left", path, "columns 75:120")
    rhand = add_hand_mean(a[:, 120:165], ctx.body_model, "right", path, "columns 120:165")
    orient = a[:, 9:12]
    return Motion(fps=fps, global_orient=orient.astype(np.float32),
                  body_pose=a[:, 12:75].reshape(n, 21, 3).astype(np.float32),
                  left_hand_pose=lhand.astype(np.float32), right_hand_pose=rhand.astype(np.float32),
                  jaw_pose=a[:, 0:3].astype(np.float32), leye_pose=a[:, 3:6].astype(np.float32),
                  reye_pose=a[:, 6:9].astype(np.float32), expression=a[:, 165:265].astype(np.float32),
                  transl=zeros(n, 3), source_format="smplx265",
                  source_up_axis=detect_vertical(orient, default="Y"))
