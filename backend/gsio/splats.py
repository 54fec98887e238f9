"""`Splats`: Gaussians as files hold them, in numpy (no torch), between the readers, the writers
and the renderer's GaussianSet.

Linear values throughout: means (N,3); quats (N,4) wxyz (any norm); scales (N,3) standard
deviations; opacities (N,) in [0,1]; colors (N,3) the degree-0 colour ``0.5 + C0 * f_dc``,
unclipped; sh (N,K,3) the higher SH coefficients (K = 3, 8, 15) in the order of
``backend.render.sh`` (degree, then m), or None. ``up`` is the axis the file's data treats as up
("y", "-y" or "z"), as far as the format says.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..render.sh import MAX_DEGREE, degree_of
from .errors import GaussianFileError

UP_AXES = ("y", "-y", "z")
# each frame's turn to a Z-up world (Blender's): +90° about x for Y up, -90° for -Y up (COLMAP)
TO_Z_UP = {"y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), "-y": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
           "z": np.eye(3)}


@dataclasses.dataclass
class Splats:
    means: np.ndarray
    quats: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    colors: np.ndarray
    sh: np.ndarray | None = None
    up: str = "y"

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return 0 if self.sh is None else int(degree_of(int(self.sh.shape[1])) or 0)

    def validate(self, path: str | Path) -> "Splats":
        """Shapes, finiteness and ranges, or one GaussianFileError naming `path` and the property."""
        n = len(self)
        widths = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "colors": (3,)}
        for name, tail in widths.items():
            a = getattr(self, name)
            if a.shape != (n,) + tail:
                raise GaussianFileError(path, name, f"has shape {a.shape}, expected {(n,) + tail}")
        if self.sh is not None:
            if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3 or degree_of(self.sh.shape[1]) is None:
                raise GaussianFileError(path, "sh", f"has shape {self.sh.shape}, expected (N, 3|8|15, 3) "
                                        f"(SH degree 1 to {MAX_DEGREE})")
        for name in ("means", "quats", "scales", "opacities", "colors", "sh"):
            a = getattr(self, name)
            if a is not None and not np.isfinite(a).all():
                row = int(np.argwhere(~np.isfinite(a.reshape(n, -1)))[0, 0])
                raise GaussianFileError(path, name, f"holds NaN or infinite values (first at Gaussian {row})")
        if (self.scales < 0).any():
            raise GaussianFileError(path, "scales", "holds negative values")
        if ((self.opacities < 0) | (self.opacities > 1)).any():
            raise GaussianFileError(path, "opacities", "holds values outside [0, 1]")
        if self.up not in UP_AXES:
            raise GaussianFileError(path, "up", f"must be one of {', '.join(UP_AXES)}, got {self.up!r}")
        return self

    def unit_quats(self) -> np.ndarray:
        """quats normalised, identity where a quaternion is zero."""
        q = np.asarray(self.quats, np.float64)
        norm = np.linalg.norm(q, axis=1, keepdims=True)
        return np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))

    def turned(self, up: str) -> "Splats":
        """The same Gaussians in the frame whose up axis is `up` (a rotation: positions,
        orientations and SH turn together)."""
        if up not in UP_AXES:
            raise ValueError(f"up must be one of {', '.join(UP_AXES)}, got {up!r}")
        if up == self.up:
            return self
        import torch

        from ..avatar.posing import matrix_to_quaternion, quaternion_multiply
        from ..render.sh import rotate_sh

        R = TO_Z_UP[up].T @ TO_Z_UP[self.up]
        q = matrix_to_quaternion(torch.as_tensor(R)).expand(len(self), 4)
        return Splats(means=self.means @ R.T, quats=quaternion_multiply(q, torch.as_tensor(self.quats, dtype=torch.float64)).numpy(),
                      scales=self.scales, opacities=self.opacities, colors=self.colors,
                      sh=None if self.sh is None else rotate_sh(torch.as_tensor(self.sh), R).numpy(), up=up)

    def to_gaussian_set(self, device=None, dtype=None):
        """A GaussianSet for the renderer. Without SH (or with all-zero SH, INRIA's padding) the
        colour is view-independent, so the clamp at 0 that follows SH evaluation is applied here."""
        import torch

        from ..render import GaussianSet

        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype or torch.float32, device=device)  # noqa: E731
        sh = self.sh if self.sh is not None and self.sh.any() else None  # all-zero f_rest: padding
        colors = self.colors if sh is not None else np.maximum(self.colors, 0.0)
        return GaussianSet(means=t(self.means), quats=t(self.quats), scales=t(self.scales),
                           opacities=t(self.opacities), colors=t(colors), sh=None if sh is None else t(sh))

    @classmethod
    def from_gaussian_set(cls, g, up: str = "y") -> "Splats":
        def a(x):
            return x.detach().cpu().double().numpy()

        return cls(means=a(g.means), quats=a(g.quats), scales=a(g.scales), opacities=a(g.opacities),
                   colors=a(g.colors), sh=None if g.sh is None else a(g.sh), up=up)
