"""Gaussian rasterization: one ``rasterize`` over two backends with the same inputs and
outputs (RGB, alpha, depth): gsplat on CUDA and a pure-PyTorch reference (any device,
differentiable). Conventions (OpenCV cameras, +0.5 pixel centres, camera-z depth) are in
``backend.render.core``.
"""

from .core import Camera, GaussianSet, RenderError, RenderOutput
from .rasterize import available_backends, rasterize, rasterize_views

__all__ = ["GaussianSet", "Camera", "RenderOutput", "rasterize", "rasterize_views", "available_backends", "RenderError"]
