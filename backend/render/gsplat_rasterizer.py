"""gsplat (CUDA) rasterizer: ``gsplat.rasterization`` in classic mode with eps2d 0.3.

gsplat is imported lazily, on the first render that asks for it, because importing its
CUDA extension may JIT-compile it (minutes, the first time on a machine). Inputs are cast
to float32 (gsplat's only dtype) and outputs cast back to the Gaussians' dtype.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .core import Camera, GaussianSet, RenderError, RenderOutput, upload
from .sh import C0 as SH_C0

ORTHO_NEAR = 0.01   # metres: the near plane an orthographic camera is moved back to (see below)

_lock = threading.Lock()
_state: dict = {"module": None, "error": None}


def gsplat_installed() -> bool:
    """True if the gsplat package can be found (nothing is imported)."""
    return importlib.util.find_spec("gsplat") is not None


def _toolkit_or_prebuilt() -> bool:
    """True if gsplat ships a prebuilt extension, or a CUDA toolkit (nvcc) is there to JIT it."""
    try:
        if importlib.util.find_spec("gsplat.csrc") is not None:
            return True
    except (ImportError, ValueError):
        pass
    from torch.utils.cpp_extension import CUDA_HOME  # cheap: just a path lookup

    if CUDA_HOME and os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return True
    return shutil.which("nvcc") is not None


def gsplat_usable() -> bool:
    """Cheap check (no compilation): CUDA device, gsplat installed, extension buildable."""
    if _state["error"] is not None:
        return False
    if _state["module"] is not None:
        return True
    return bool(torch.cuda.is_available()) and gsplat_installed() and _toolkit_or_prebuilt()


def load_gsplat():
    """Import gsplat and its CUDA extension (compiling it if needed); RenderError if that fails."""
    with _lock:
        if _state["module"] is not None:
            return _state["module"]
        if _state["error"] is not None:
            raise RenderError(_state["error"])
        if not torch.cuda.is_available():
            raise RenderError("the gsplat backend needs a CUDA GPU, and torch sees none")
        try:
            import gsplat  # noqa: F401
            from gsplat.cuda._backend import _C
        except Exception as e:  # import or JIT-compile failure
            _state["error"] = f"gsplat could not be loaded: {type(e).__name__}: {e}"
            raise RenderError(_state["error"]) from e
        if _C is None:
            _state["error"] = "gsplat is installed but its CUDA extension is unavailable (no CUDA toolkit to build it?)"
            raise RenderError(_state["error"])
        _state["module"] = gsplat
        return gsplat


def rasterize_gsplat(gaussians: GaussianSet, camera: Camera, background: Tensor | None = None) -> RenderOutput:
    bg = None if background is None else torch.as_tensor(background).reshape(1, 3)
    out = rasterize_gsplat_views([gaussians], [camera], bg)
    return RenderOutput(rgb=out.rgb[0], alpha=out.alpha[0], depth=out.depth[0])


def _stacked(sets: Sequence[GaussianSet], name: str) -> Tensor:
    """(C, N, k) float32: gsplat's batch dimension, one Gaussian set per view."""
    tensors = [getattr(g, name) for g in sets]
    if all(t is tensors[0] for t in tensors):
        return tensors[0].to(torch.float32).contiguous().expand(len(tensors), *tensors[0].shape)
    return torch.stack([t.to(torch.float32) for t in tensors])


def rasterize_gsplat_views(sets: Sequence[GaussianSet], cameras: Sequence[Camera],
                           backgrounds: Tensor | None = None, depth: bool = True) -> RenderOutput:
    """Set i through camera i, all in one gsplat call; outputs (C, H, W, k) (depth zeros
    unless `depth`)."""
    first = sets[0]
    models = {c.model for c in cameras}
    if len(models) != 1:
        raise RenderError(f"one gsplat call draws one camera model; got {sorted(models)}")
    if first.means.device.type != "cuda":
        raise RenderError(f"the gsplat backend needs CUDA tensors, got Gaussians on {first.means.device}")
    gsplat = load_gsplat()
    device, dtype = first.means.device, first.means.dtype
    cam = cameras[0]
    near, far, shift = float(cam.near), float(cam.far), 0.0
    if cam.model == "ortho" and near < ORTHO_NEAR:
        # gsplat sorts by the float bits of the depth, which misorders negative depths; an
        # orthographic image does not change when the camera moves back along its axis
        shift = ORTHO_NEAR - near
        near, far = ORTHO_NEAR, far + shift
    w2c = np.stack([np.asarray(c.world_to_camera, dtype=np.float64) for c in cameras])
    w2c[:, 2, 3] += shift
    viewmats = upload(w2c[:, None], device)
    Ks = upload(np.stack([np.asarray(c.K) for c in cameras])[:, None], device)
    bg = None
    if backgrounds is not None:
        bg = torch.as_tensor(backgrounds, device=device, dtype=torch.float32).reshape(len(cameras), 1, 3)
    sh_degree = None
    colors = _stacked(sets, "colors")
    if any(g.sh is not None for g in sets):
        # gsplat's SH path: coefficients (C, N, K+1, 3) with the DC term first; it evaluates
        # them along camera -> Gaussian, adds 0.5 and clamps at 0, as INRIA does
        sh_degree = max(g.sh_degree for g in sets)
        width = (sh_degree + 1) ** 2 - 1
        rest = torch.stack([torch.zeros(len(g), width, 3, device=device) if g.sh is None else
                            torch.nn.functional.pad(g.sh.to(torch.float32), (0, 0, 0, width - g.sh.shape[1]))
                            for g in sets])
        colors = torch.cat([((colors - 0.5) / SH_C0)[:, :, None], rest], 2)
    colors, alphas, _ = gsplat.rasterization(
        _stacked(sets, "means"),
        _stacked(sets, "quats"),
        _stacked(sets, "scales"),
        _stacked(sets, "opacities"),
        colors,
        viewmats,
        Ks,
        int(cam.width),
        int(cam.height),
        near_plane=near,
        far_plane=far,
        eps2d=0.3,
        render_mode="RGB+ED" if depth else "RGB",
        rasterize_mode="classic",
        backgrounds=bg,
        packed=False,
        sh_degree=sh_degree,
        camera_model=cam.model,
    )
    colors = colors[:, 0].to(dtype)
    alpha = alphas[:, 0].to(dtype)
    z = colors[..., 3:4] if depth else torch.zeros_like(alpha)
    if shift and depth:
        z = torch.where(alpha > 0, z - shift, z)
    return RenderOutput(rgb=colors[..., :3], alpha=alpha, depth=z)
