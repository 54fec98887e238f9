"""A torch-free stand-in for the body model, read from an SMPL-X .npz with numpy.

load_motion needs two things from a body model: the hand space (PCA components and mean,
for TalkSHOW / the 265 layout / BEAT2 hands) and the rest pelvis (the pivot when a world is
turned upright). Inside Blender there is no torch, so the add-on can pass ``NpzBody(path)``
for the same SMPL-X file (real or the open template) that the backend's BodyModel loads.
"""

from __future__ import annotations

import numpy as np

from ..safe_numpy import ArrayFileError, open_npz
from .errors import MotionError

SHAPE_SPACE_DIM = 300       # as in smplx: shapedirs beyond this many columns are expressions


class NpzBody:
    """hand_pca / rest_joints / num_betas of an SMPL-X .npz, numpy only (allow_pickle=False)."""

    def __init__(self, path):
        try:
            with open_npz(path) as z:
                self._hands = {side: (np.asarray(z[f"hands_components{side[0]}"], np.float64),
                                      np.asarray(z[f"hands_mean{side[0]}"], np.float64).reshape(-1))
                               for side in ("left", "right")}
                self._J = np.asarray(z["J_regressor"], np.float64)
                self._v = np.asarray(z["v_template"], np.float64)
                dirs = np.asarray(z["shapedirs"], np.float64)
        except ArrayFileError as exc:
            raise MotionError(exc.path, exc.key, message=exc.problem) from None
        except (OSError, ValueError, KeyError) as exc:
            raise MotionError(path, None, "an SMPL-X .npz (hands_components*, hands_mean*, "
                              "J_regressor, v_template, shapedirs)", str(exc)) from None
        nv = self._v.shape[0] if self._v.ndim == 2 else -1
        checks = {"v_template": (self._v, self._v.shape == (nv, 3)),
                  "J_regressor": (self._J, self._J.shape == (55, nv)),
                  "shapedirs": (dirs, dirs.ndim == 3 and dirs.shape[:2] == (nv, 3))}
        for side, (comps, mean) in self._hands.items():
            checks[f"hands_components{side[0]}"] = (comps, comps.ndim == 2 and comps.shape[1] == 45)
            checks[f"hands_mean{side[0]}"] = (mean, mean.shape == (45,))
        for key, (value, ok) in checks.items():
            if not ok or not np.isfinite(value).all():
                raise MotionError(path, key, "an SMPL-X array of matching shape with finite values",
                                  f"shape {value.shape}")
        n_shape = SHAPE_SPACE_DIM if dirs.shape[-1] > SHAPE_SPACE_DIM else min(10, dirs.shape[-1])
        self._shapedirs = dirs[:, :, :n_shape]
        self.num_betas = int(n_shape)
        self.path = path

    def hand_pca(self, side: str):
        return self._hands[side]

    def rest_joints(self, betas=None) -> np.ndarray:
        v = self._v
        if betas is not None:
            b = np.zeros(self.num_betas)
            src = np.asarray(betas, np.float64).reshape(-1)[: self.num_betas]
            b[: len(src)] = src
            v = v + self._shapedirs @ b
        return self._J @ v
