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

import torch
from torch import Tensor

from .core import Camera, GaussianSet, RenderError, RenderOutput

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
    g = gaussians
    if g.means.device.type != "cuda":
        raise RenderError(f"the gsplat backend needs CUDA tensors, got Gaussians on {g.means.device}")
    gsplat = load_gsplat()
    device, dtype = g.means.device, g.means.dtype
    f32 = lambda t: t.to(dtype=torch.float32).contiguous()  # noqa: E731
    viewmats = camera.viewmat(device, torch.float32)[None]
    Ks = camera.intrinsics(device, torch.float32)[None]
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, device=device, dtype=torch.float32).reshape(1, 3)
    colors, alphas, _ = gsplat.rasterization(
        f32(g.means),
        f32(g.quats),
        f32(g.scales),
        f32(g.opacities),
        f32(g.colors),
        viewmats,
        Ks,
        int(camera.width),
        int(camera.height),
        near_plane=float(camera.near),
        far_plane=float(camera.far),
        eps2d=0.3,
        render_mode="RGB+ED",
        rasterize_mode="classic",
        backgrounds=bg,
        packed=False,
    )
    colors = colors[0].to(dtype)
    alpha = alphas[0].to(dtype)
    return RenderOutput(rgb=colors[..., :3], alpha=alpha, depth=colors[..., 3:4])
