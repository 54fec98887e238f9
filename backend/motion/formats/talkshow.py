"""TalkSHOW / SHOW .pkl: SMPL-X fits of talking people, 30 fps, in camera coordinates.

Keys: body_pose_axis (N, 63), global_orient (N, 1, 3), transl, jaw_pose, leye_pose,
reye_pose, expression (N, 100), betas (1, 300), and hands as 12 PCA coefficients each
(SHOW fits SMPL-X with use_pca=True, num_pca_comps=12, flat_hand_mean=False, so the full
hand pose is coeffs @ components[:12] + hand_mean of the body model). The files also
hold CUDA torch tensors under ``losses_to_log``: the restricted unpickler turns them into
inert stubs, so neither torch nor a GPU is needed. The body is in the camera's frame
(OpenCV, y down): the up axis is read off the body.
"""

from __future__ import annotations

import numpy as np

from ..convert import add_hand_mean, detect_vertical, hands_from_pca
from ..errors import MotionError
from ..types import Motion
from ._common import LoadContext, array, frames, require, zeros

TALKSHOW_FPS = 30.0


def is_talkshow(obj) -> bool:
    return isinstance(obj, dict) and "body_pose_axis" in obj and "global_orient" in obj


def load_dict(d: dict, path, ctx: LoadContext) -> Motion:
    body = array(require(d, "body_pose_axis", path), "body_pose_axis", path)
    n = body.shape[0]
    if body.size != n * 63:
        raise MotionError(path, "body_pose_axis", "shape (N, 63)", f"shape {body.shape}")
    body = body.reshape(n, 21, 3)
    orient = array(require(d, "global_orient", path), "global_orient", path)
    if orient.size != n * 3:
        raise MotionError(path, "global_orient", f"shape ({n}, 1, 3) or ({n}, 3)", f"shape {orient.shape}")
    orient = orient.reshape(n, 3)

    def per_frame(key, width, default_zero=True):
        if key not in d or d[key] is None:
            if default_zero:
                return zeros(n, width)
            require(d, key, path)
        a = array(d[key], key, path)
        a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
        if a.shape[0] == 1 and n > 1:
            a = np.repeat(a, n, axis=0)
        frames(a, n, key, path)
        if width is not None and a.shape[1] != width:
            raise MotionError(path, key, f"shape ({n}, {width})", f"shape {a.shape}")
        return a

    transl = per_frame("transl", 3)
    jaw, leye, reye = per_frame("jaw_pose", 3), per_frame("leye_pose", 3), per_frame("reye_pose", 3)
    expression = per_frame("expression", None) if "expression" in d else zeros(n, 0)
    hands = []
    for side in ("left", "right"):
        key = f"{side}_hand_pose"
        h = per_frame(key, None, default_zero=False)
        if h.shape[1] == 45:
            hands.append(add_hand_mean(h, ctx.body_model, side, path, key))
        else:
            hands.append(hands_from_pca(h, ctx.body_model, side, path, key))
    betas = None
    if "betas" in d and d["betas"] is not None:
        b = array(d["betas"], "betas", path)
        betas = b.reshape(-1, b.shape[-1])[0] if b.ndim else b.reshape(1)     # (1, 300) -> (300,)
    fps = float(ctx.source_fps) if ctx.source_fps is not None else TALKSHOW_FPS
    return Motion(fps=fps, global_orient=orient.astype(np.float32), body_pose=body.astype(np.float32),
                  left_hand_pose=hands[0].astype(np.float32), right_hand_pose=hands[1].astype(np.float32),
                  jaw_pose=jaw.astype(np.float32), leye_pose=leye.astype(np.float32),
                  reye_pose=reye.astype(np.float32), expression=expression.astype(np.float32),
                  transl=transl.astype(np.float32), betas=None if betas is None else betas.astype(np.float32),
                  source_format="talkshow", source_up_axis=detect_vertical(orient, default="-Y"))
