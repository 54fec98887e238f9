"""``rasterize``: one entry point, two implementations (gsplat on CUDA, the torch reference)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor

from . import gsplat_rasterizer
from .core import Camera, GaussianSet, RenderError, RenderOutput
from .torch_rasterizer import rasterize_torch

log = logging.getLogger(__name__)

BACKENDS = ("gsplat", "torch")


def available_backends() -> list[str]:
    """Backends that can be used here, best first: ``["gsplat", "torch"]`` or ``["torch"]``.

    "gsplat" is listed when torch sees a CUDA device, the gsplat package is installed, and
    either it ships a prebuilt extension or a CUDA toolkit (nvcc) is there to JIT-compile
    it. Nothing is imported or compiled here: a build failure surfaces (as RenderError) on
    the first gsplat render, after which "gsplat" is no longer listed.
    """
    out = []
    if gsplat_rasterizer.gsplat_usable():
        out.append("gsplat")
    out.append("torch")
    return out


def _empty(camera: Camera, device, dtype, background) -> RenderOutput:
    H, W = int(camera.height), int(camera.width)
    rgb = torch.zeros(H, W, 3, device=device, dtype=dtype)
    if background is not None:
        rgb = rgb + torch.as_tensor(background, device=device, dtype=dtype).reshape(1, 1, 3)
    z = torch.zeros(H, W, 1, device=device, dtype=dtype)
    return RenderOutput(rgb=rgb, alpha=z, depth=z.clone())


def rasterize(
    gaussians: GaussianSet,
    camera: Camera,
    *,
    backend: str = "auto",
    background: Tensor | None = None,
) -> RenderOutput:
    """Render Gaussians through a camera; returns RGB (over ``background``, default black),
    alpha and expected depth, each (H, W, C) on the Gaussians' device.

    backend: "gsplat" (CUDA only), "torch" (any device, differentiable) or "auto" (gsplat
    when the tensors are on CUDA and gsplat loads, else torch).
    """
    backend, background = _prepare(gaussians, [camera], backend, background)
    if len(gaussians) == 0:
        return _empty(camera, gaussians.device, gaussians.dtype, background)
    if backend == "gsplat":
        return gsplat_rasterizer.rasterize_gsplat(gaussians, camera, background)
    return rasterize_torch(gaussians, camera, background)


def rasterize_views(
    gaussians: Sequence[GaussianSet],
    cameras: Sequence[Camera],
    *,
    backend: str = "auto",
    backgrounds: Tensor | None = None,
    depth: bool = True,
) -> RenderOutput:
    """Render several views at once: Gaussian set i through camera i (the sets may share
    tensors; separate ones keep separate gradients, e.g. per-view screen-space gradients for
    densification). All cameras must have one size. Returns RGB, alpha and depth as (C, H, W, k);
    ``backgrounds`` is (C, 3) or None (black). gsplat draws all views in one call, without the
    depth channel (then zeros) when ``depth`` is False, which training does not need."""
    if len(gaussians) != len(cameras) or not cameras:
        raise RenderError(f"rasterize_views needs one Gaussian set per camera; got {len(gaussians)} sets "
                          f"for {len(cameras)} cameras")
    sizes = {(int(c.width), int(c.height)) for c in cameras}
    if len(sizes) != 1:
        raise RenderError(f"rasterize_views needs cameras of one size; got {sorted(sizes)}")
    first = gaussians[0]
    if any(len(g) != len(first) for g in gaussians):
        raise RenderError("rasterize_views needs Gaussian sets of equal length")
    if backgrounds is not None:
        backgrounds = torch.as_tensor(backgrounds, device=first.device, dtype=first.dtype)
        if tuple(backgrounds.shape) != (len(cameras), 3):
            raise RenderError(f"backgrounds must be ({len(cameras)}, 3); got {tuple(backgrounds.shape)}")
    backend, _ = _prepare(first, cameras, backend, None)
    for g in gaussians[1:]:
        g.validate(check_finite=g.device.type != "cuda")
    if len(first) == 0:
        outs = [_empty(c, first.device, first.dtype, None if backgrounds is None else backgrounds[i])
                for i, c in enumerate(cameras)]
    elif backend == "gsplat":
        return gsplat_rasterizer.rasterize_gsplat_views(gaussians, cameras, backgrounds, depth)
    else:
        outs = [rasterize_torch(g, c, None if backgrounds is None else backgrounds[i])
                for i, (g, c) in enumerate(zip(gaussians, cameras))]
    return RenderOutput(*(torch.stack([getattr(o, k) for o in outs]) for k in ("rgb", "alpha", "depth")))


def _prepare(gaussians: GaussianSet, cameras: Sequence[Camera], backend: str,
             background: Tensor | None) -> tuple[str, Tensor | None]:
    """Validate the inputs and pick the backend ("auto" -> gsplat where it loads)."""
    if backend not in ("auto",) + BACKENDS:
        raise RenderError(f"unknown rasterizer backend {backend!r}; choose from auto, gsplat, torch")
    if not isinstance(gaussians, GaussianSet):
        raise RenderError(f"rasterize expects a GaussianSet, got {type(gaussians).__name__}")
    for camera in cameras:
        if not isinstance(camera, Camera):
            raise RenderError(f"rasterize expects a Camera, got {type(camera).__name__}")
        camera.validate()
    # NaN checks on CUDA tensors would stall the GPU every frame; posing checks its host inputs.
    gaussians.validate(check_finite=gaussians.device.type != "cuda")
    device, dtype = gaussians.device, gaussians.dtype
    if background is not None:
        background = torch.as_tensor(background, device=device, dtype=dtype)
        if background.numel() != 3:
            raise RenderError(f"background must hold 3 values (RGB), got shape {tuple(background.shape)}")
    if backend == "auto":
        backend = "torch"
        if device.type == "cuda" and gsplat_rasterizer.gsplat_usable():
            try:
                gsplat_rasterizer.load_gsplat()
                backend = "gsplat"
            except RenderError as e:
                log.warning("falling back to the torch rasterizer: %s", e)
    if backend == "gsplat" and device.type != "cuda":
        raise RenderError(f"the gsplat backend needs CUDA tensors, got Gaussians on {device}")
    return backend, background
