"""Data types shared by both rasterizers: Gaussians, cameras, render outputs.

Conventions (the single source of truth for ``backend.render``):

* **Camera space is OpenCV's**: x right, y down, z forward (into the scene).
  ``Camera.world_to_camera`` maps homogeneous world points to camera space.
* **Pixel centres sit at +0.5** (gsplat's convention): pixel column ``i``, row ``j``
  covers ``[i, i+1) x [j, j+1)`` and its centre is ``(i + 0.5, j + 0.5)``. A camera-space
  point ``(x, y, z)`` projects to ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` in those
  continuous pixel coordinates, so ``cx = width / 2, cy = height / 2`` is the exact image
  centre (the corner shared by the four middle pixels of an even-sized image).
* **Depth** is camera-space z (distance along the optical axis, not along the ray), which is
  Blender's Z pass convention too.
* **Orthographic cameras** (``model="ortho"``) project ``u = fx * x + cx``, ``v = fy * y + cy``:
  fx, fy are pixels per world unit; their near plane may lie behind the camera (z < 0).
* Gaussian quaternions are ``wxyz`` (gsplat's order); scales are linear standard
  deviations along the Gaussian's local axes; opacities lie in ``[0, 1]``; colours are
  linear RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..protocol import CAMERA_MODELS

ArrayLike = Union[Tensor, np.ndarray]


class RenderError(RuntimeError):
    """A rasterization request that cannot be carried out (bad input, missing backend)."""


# --------------------------------------------------------------------------------------
# Gaussians
# --------------------------------------------------------------------------------------


@dataclass
class GaussianSet:
    """World-space 3D Gaussians ready to draw. All tensors on one device, one float dtype.

    means (N,3); quats (N,4) wxyz, need not be normalised; scales (N,3) linear (not log);
    opacities (N,) in [0,1]; colors (N,3) linear RGB in [0,1]. Scenes with view-dependent
    colour (static 3DGS captures) also carry ``sh`` (N,K,3), the spherical-harmonic coefficients
    of degree 1 up to 3 (K = 3, 8, 15; see ``backend.render.sh``); their ``colors`` are then the
    degree-0 term, unclipped, and the drawn colour is clamped at 0 after SH evaluation.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor
    sh: Tensor | None = None

    _WIDTHS = {"means": 3, "quats": 4, "scales": 3, "colors": 3}

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        from .sh import degree_of

        return 0 if self.sh is None else int(degree_of(int(self.sh.shape[1])) or 0)

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def validate(self, check_finite: bool = True) -> None:
        """Raise RenderError if shapes, devices or dtypes disagree, or values are not finite."""
        n = None
        dev = None
        for name, t in self._tensors().items():
            if not isinstance(t, Tensor):
                raise RenderError(f"GaussianSet.{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise RenderError(f"GaussianSet.{name} must be a floating-point tensor, got {t.dtype}")
            if name == "opacities":
                ok = t.dim() == 1
                want = "(N,)"
            elif name == "sh":
                ok = t.dim() == 3 and t.shape[1] in (3, 8, 15) and t.shape[2] == 3
                want = "(N,K,3) with K = 3, 8 or 15 (SH degree 1 to 3)"
            else:
                ok = t.dim() == 2 and t.shape[1] == self._WIDTHS[name]
                want = f"(N,{self._WIDTHS[name]})"
            if not ok:
                raise RenderError(f"GaussianSet.{name} must have shape {want}, got {tuple(t.shape)}")
            if n is None:
                n, dev = t.shape[0], t.device
            elif t.shape[0] != n:
                raise RenderError(
                    f"GaussianSet.{name} has {t.shape[0]} rows but means has {n}"
                )
            elif t.device != dev:
                raise RenderError(f"GaussianSet.{name} is on {t.device} but means is on {dev}")
        if check_finite and n:
            for name, t in self._tensors().items():
                if not bool(torch.isfinite(t).all()):
                    raise RenderError(f"GaussianSet.{name} contains NaN or infinite values")

    @classmethod
    def empty(cls, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "GaussianSet":
        z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
        return cls(z(0, 3), z(0, 4), z(0, 3), z(0), z(0, 3))

    @classmethod
    def concat(cls, sets: Iterable["GaussianSet"]) -> "GaussianSet":
        """Concatenate sets (same device and dtype) into one; order is preserved."""
        sets = list(sets)
        if not sets:
            raise ValueError("GaussianSet.concat needs at least one set")
        if len(sets) == 1:
            return sets[0]
        width = max(0 if s.sh is None else int(s.sh.shape[1]) for s in sets)
        sh = None
        if width:  # sets without SH (avatars) or of a lower degree get zero coefficients
            sh = torch.cat([torch.nn.functional.pad(s.sh, (0, 0, 0, width - s.sh.shape[1])) if s.sh is not None
                            else s.means.new_zeros(len(s), width, 3) for s in sets], 0)
        return cls(**{f.name: torch.cat([getattr(s, f.name) for s in sets], 0) for f in fields(cls) if f.name != "sh"},
                   sh=sh)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "GaussianSet":
        return GaussianSet(**{k: v.to(device=device, dtype=dtype) for k, v in self._tensors().items()})

    def detach(self) -> "GaussianSet":
        return GaussianSet(**{k: v.detach() for k, v in self._tensors().items()})

    def __getitem__(self, index) -> "GaussianSet":
        """Select Gaussians by index, slice or boolean mask."""
        return GaussianSet(**{k: v[index] for k, v in self._tensors().items()})


# --------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------


def _as_float_tensor(x: ArrayLike, device=None, dtype=torch.float32) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass
class Camera:
    """A pinhole (or orthographic) camera in OpenCV form (x right, y down, z forward).

    world_to_camera (4,4) maps world points to camera space; K (3,3) holds fx, fy, cx, cy
    in pixels with pixel centres at +0.5 (see the module docstring). Gaussians whose
    centre has camera z outside [near, far] are not drawn.
    """

    world_to_camera: ArrayLike
    K: ArrayLike
    width: int
    height: int
    near: float = 0.01
    far: float = 1000.0
    model: str = "pinhole"

    @property
    def is_ortho(self) -> bool:
        return self.model == "ortho"

    def validate(self) -> None:
        w2c = _as_numpy(self.world_to_camera)
        k = _as_numpy(self.K)
        if w2c.shape != (4, 4):
            raise RenderError(f"Camera.world_to_camera must be 4x4, got shape {w2c.shape}")
        if k.shape != (3, 3):
            raise RenderError(f"Camera.K must be 3x3, got shape {k.shape}")
        if not (np.isfinite(w2c).all() and np.isfinite(k).all()):
            raise RenderError("Camera matrices contain NaN or infinite values")
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise RenderError(f"Camera focal lengths must be positive, got fx={k[0, 0]}, fy={k[1, 1]}")
        if int(self.width) != self.width or int(self.height) != self.height or self.width <= 0 or self.height <= 0:
            raise RenderError(f"Camera size must be positive integers, got {self.width}x{self.height}")
        if self.model not in CAMERA_MODELS:
            raise RenderError(f"Camera.model must be one of {list(CAMERA_MODELS)}, got {self.model!r}")
        if self.is_ortho and not self.near < self.far:
            raise RenderError(f"an orthographic Camera needs near < far, got near={self.near}, far={self.far}")
        if not self.is_ortho and not 0 < self.near < self.far:
            raise RenderError(f"Camera needs 0 < near < far, got near={self.near}, far={self.far}")

    # ---- construction -----------------------------------------------------------------

    @classmethod
    def look_at(
        cls,
        eye: Sequence[float],
        target: Sequence[float],
        up: Sequence[float] = (0.0, 1.0, 0.0),
        fov_y_deg: float = 40.0,
        width: int = 512,
        height: int = 512,
        near: float = 0.01,
        far: float = 1000.0,
    ) -> "Camera":
        """A camera at ``eye`` looking at ``target`` with ``up`` pointing up in the image.

        Square pixels (fx == fy) and the principal point at the exact image centre, so
        ``target`` projects to ``(width/2, height/2)``. If ``up`` is parallel to the view
        direction another world axis is used for it.
        """
        eye = np.asarray(eye, dtype=np.float64).reshape(3)
        target = np.asarray(target, dtype=np.float64).reshape(3)
        up = np.asarray(up, dtype=np.float64).reshape(3)
        fwd = target - eye
        dist = np.linalg.norm(fwd)
        if not np.isfinite(dist) or dist < 1e-12:
            raise RenderError("Camera.look_at: eye and target coincide")
        fwd = fwd / dist
        right = np.cross(fwd, up)
        if np.linalg.norm(right) < 1e-9 * max(1.0, np.linalg.norm(up)):
            for alt in ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)):
                right = np.cross(fwd, np.asarray(alt))
                if np.linalg.norm(right) > 1e-6:
                    break
        right = right / np.linalg.norm(right)
        down = np.cross(fwd, right)
        R = np.stack([right, down, fwd], 0)  # rows: camera axes in world coordinates
        w2c = np.eye(4)
        w2c[:3, :3] = R
        w2c[:3, 3] = -R @ eye
        fy = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
        K = np.array([[fy, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(world_to_camera=w2c, K=K, width=int(width), height=int(height), near=near, far=far)

    # ---- helpers ----------------------------------------------------------------------

    def viewmat(self, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """world_to_camera as a (4,4) tensor."""
        return _as_float_tensor(self.world_to_camera, device, dtype)

    def intrinsics(self, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """K as a (3,3) tensor."""
        return _as_float_tensor(self.K, device, dtype)

    @property
    def fx(self) -> float:
        return float(_as_numpy(self.K)[0, 0])

    @property
    def fy(self) -> float:
        return float(_as_numpy(self.K)[1, 1])

    @property
    def cx(self) -> float:
        return float(_as_numpy(self.K)[0, 2])

    @property
    def cy(self) -> float:
        return float(_as_numpy(self.K)[1, 2])

    @property
    def position(self) -> np.ndarray:
        """Camera centre in world coordinates, (3,) float64."""
        w2c = _as_numpy(self.world_to_camera)
        R, t = w2c[:3, :3], w2c[:3, 3]
        return np.linalg.solve(R, -t)

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(_as_numpy(self.world_to_camera))

    def to_camera(self, points: ArrayLike) -> ArrayLike:
        """World points (...,3) to camera space (...,3); Tensor in, Tensor out."""
        if isinstance(points, Tensor):
            m = self.viewmat(points.device, points.dtype if points.is_floating_point() else torch.float32)
            return points @ m[:3, :3].T + m[:3, 3]
        m = _as_numpy(self.world_to_camera)
        return np.asarray(points, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]

    def project(self, points: ArrayLike):
        """Project world points (...,3) to pixels: returns (uv (...,2), z (...)).

        uv uses the +0.5 pixel-centre convention; z is camera-space depth. Through a pinhole,
        points with z <= 0 get meaningless uv (check z). Tensor in, Tensor out; otherwise numpy.
        """
        pc = self.to_camera(points)
        if isinstance(pc, Tensor):
            k = self.intrinsics(pc.device, pc.dtype)
            z = pc[..., 2]
            scale = torch.ones_like(z) if self.is_ortho else 1.0 / z
            u = k[0, 0] * pc[..., 0] * scale + k[0, 2]
            v = k[1, 1] * pc[..., 1] * scale + k[1, 2]
            return torch.stack([u, v], -1), z
        k = _as_numpy(self.K)
        z = pc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.ones_like(z) if self.is_ortho else 1.0 / z
            u = k[0, 0] * pc[..., 0] * scale + k[0, 2]
            v = k[1, 1] * pc[..., 1] * scale + k[1, 2]
        return np.stack([u, v], -1), z


def upload(array: ArrayLike, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A host array on `device` without waiting for the GPU to finish its queue (a plain copy
    from pageable memory would): through pinned memory, asynchronously."""
    t = torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array, dtype=dtype)
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


@dataclass
class RenderOutput:
    """rgb (H,W,3): composite over the background (premultiplied colour + (1-alpha)*bg);
    alpha (H,W,1); depth (H,W,1): expected camera z, sum(w_i z_i)/alpha where alpha > 0, else 0."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor

    def numpy(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).detach().cpu().numpy() for k in ("rgb", "alpha", "depth")}


def srgb_to_linear(rgb: Tensor, alpha: Tensor | None = None) -> Tensor:
    """Display (sRGB-encoded) colour to scene-linear, the space Blender's Combined pass holds.
    With `alpha` (H, W, 1), `rgb` is premultiplied: the colour is un-premultiplied, converted and
    premultiplied again, so edges keep their coverage; only the box around what is drawn is
    converted (the rest is transparent black)."""
    if alpha is None:
        c = rgb.clamp(0.0, 1.0)
        return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    out = torch.zeros_like(rgb)
    covered = alpha[..., 0] > 0
    rows, cols = covered.any(1).nonzero(), covered.any(0).nonzero()
    if len(rows) == 0:
        return out
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    a = alpha[box]
    out[box] = srgb_to_linear(rgb[box] / a.clamp_min(1e-12)) * a
    return out
