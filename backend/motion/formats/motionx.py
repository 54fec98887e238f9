"""Motion-X .npy with 322 columns per frame (the ``smplx_322`` layout), 30 fps, Y-up.

Columns: root 0:3, body 3:66, hands 66:156 (left 45, right 45), jaw 156:159, expression
159:209 (50), face shape 209:309 (100, FLAME shape: not used by SMPL-X posing), translation
309:312, betas 312:322. Motion-X converts its mocap sources to Y-up and stores absolute
(flat-hand) finger rotations. Betas are per frame in the file; the first frame's are kept.
"""

from __future__ import annotations

import numpy as np

from ..types import Motion
from ._common import LoadContext, zeros

MOTIONX_FPS = 30.0
COLUMNS = 322


def load_array(a: np.ndarray, path, ctx: LoadContext) -> Motion:
    a = np.asarray(a, dtype=np.float64)
    n = a.shape[0]
    fps = float(ctx.source_fps) if ctx.source_fps is not None else MOTIONX_FPS
    betas = a[0, 312:322] if n else None
    return Motion(fps=fps, global_orient=a[:, 0:3].astype(np.float32),
                  body_pose=a[:, 3:66].reshape(n, 21, 3).astype(np.float32),
                  left_hand_pose=a[:, 66:111].reshape(n, 15, 3).astype(np.float32),
                  right_hand_pose=a[:, 111:156].reshape(n, 15, 3).astype(np.float32),
                  jaw_pose=a[:, 156:159].astype(np.float32), leye_pose=zeros(n, 3), reye_pose=zeros(n, 3),
                  expression=a[:, 159:209].astype(np.float32), transl=a[:, 309:312].astype(np.float32),
                  betas=None if betas is None else betas.astype(np.float32),
                  source_format="motionx", source_up_axis="Y")
