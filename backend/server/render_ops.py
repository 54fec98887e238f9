"""The render op: pose avatars, place static Gaussian objects, rasterize, pack into shared memory."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from .. import protocol as P
from .core import Services, _matrix
from .pack import write_plane, write_rgba
from .shm import ShmPool

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Largest depth_empty the float32 depth plane can hold."""


def parse_camera(camera: dict, width: int, height: int) -> Any:
    from ..render import Camera

    if "world_to_camera" not in camera or "K" not in camera:
        raise P.ProtocolError(P.BAD_REQUEST, "camera needs \"world_to_camera\" (4×4) and \"K\" (3×3), OpenCV convention")
    w2c = _matrix(camera["world_to_camera"], (4, 4), "camera.world_to_camera")
    K = _matrix(camera["K"], (3, 3), "camera.K")
    near = camera.get("near", 0.01)
    far = camera.get("far", 1000.0)
    for name, v in (("near", near), ("far", far)):
        if not P.type_ok(v, "number"):
            raise P.ProtocolError(P.BAD_REQUEST, f"camera.{name} must be a finite number")
    model = camera.get("model", "pinhole")
    if model not in P.CAMERA_MODELS:
        raise P.ProtocolError(P.BAD_REQUEST, f"camera.model must be one of {list(P.CAMERA_MODELS)}; got {str(model)[:20]!r}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise P.ProtocolError(P.BAD_REQUEST, f"camera.K needs positive focal lengths; got fx={K[0, 0]}, fy={K[1, 1]}")
    if model == "ortho" and not near < far:
        raise P.ProtocolError(P.BAD_REQUEST, f"an orthographic camera needs near < far; got near={near}, far={far}")
    if model == "pinhole" and not 0 < near < far:
        raise P.ProtocolError(P.BAD_REQUEST, f"camera needs 0 < near < far; got near={near}, far={far}")
    return Camera(world_to_camera=w2c, K=K, width=width, height=height, near=float(near), far=float(far), model=model)


def transform_gaussians(g: Any, matrix: np.ndarray) -> Any:
    """A static Gaussian object placed by a 4×4 object-to-world matrix (rotation, translation and
    scale, non-uniform scale and shear included: each covariance becomes A Σ Aᵀ). Spherical
    harmonics turn with the rotation part of A (exact for rotations, mirrors and uniform scale)."""
    from ..avatar.posing import matrix_to_quaternion, quaternion_multiply
    from ..render import GaussianSet
    from ..render.sh import rotate_sh, rotation_part

    if np.allclose(matrix, np.eye(4)):
        return g
    A = torch.as_tensor(matrix[:3, :3], dtype=g.dtype, device=g.device)
    t = torch.as_tensor(matrix[:3, 3], dtype=g.dtype, device=g.device)
    means = g.means @ A.T + t
    if abs(float(np.linalg.det(matrix[:3, :3]))) < 1e-12:
        raise P.ProtocolError(P.BAD_REQUEST, "an object matrix is singular (zero scale)")
    sh = None if g.sh is None else rotate_sh(g.sh, rotation_part(matrix[:3, :3]))
    gram = (A.T @ A).cpu().numpy()
    s = float(np.cbrt(abs(np.linalg.det(matrix[:3, :3]))))
    if np.allclose(gram, s * s * np.eye(3), atol=1e-6 * max(1.0, s * s)) and np.linalg.det(matrix[:3, :3]) > 0:
        q = matrix_to_quaternion(A / s)
        return GaussianSet(means=means, quats=quaternion_multiply(q.expand(len(g), 4), g.quats),
                           scales=g.scales * s, opacities=g.opacities, colors=g.colors, sh=sh)
    from ..render.torch_rasterizer import quat_to_rotmat

    R = quat_to_rotmat(g.quats)
    M = A @ R * g.scales[:, None, :]                      # A R S
    cov = M @ M.transpose(1, 2)
    evals, evecs = torch.linalg.eigh(cov.double())
    evecs = evecs * torch.where(torch.linalg.det(evecs) < 0, -1.0, 1.0)[:, None, None].to(evecs.dtype)
    return GaussianSet(means=means, quats=matrix_to_quaternion(evecs).to(g.dtype),
                       scales=evals.clamp_min(0).sqrt().to(g.dtype), opacities=g.opacities, colors=g.colors, sh=sh)


def gather_gaussians(services: Services, msg: dict) -> tuple[Any, int]:
    from ..avatar import pose_with_transforms
    from ..render import GaussianSet

    parts = []
    avatars = msg.get("avatars") or []
    for i, item in enumerate(avatars):
        where = f"avatars[{i}]"
        if not isinstance(item, dict):
            raise P.ProtocolError(P.BAD_REQUEST, f"{where} must be an object with \"avatar\" and \"transforms\"")
        if "avatar" not in item:
            raise P.ProtocolError(P.BAD_REQUEST, f"{where} needs \"avatar\" (a handle from load_avatar)")
        avatar = services.avatar(item["avatar"])
        if item.get("transforms") is None:
            raise P.ProtocolError(P.BAD_REQUEST, f"{where} needs \"transforms\" (55 skinning matrices, 55×4×4)")
        transforms = _matrix(item["transforms"], (P.NUM_JOINTS, 4, 4), f"{where}.transforms")
        expression = None
        if item.get("expression") is not None:
            if not isinstance(item["expression"], list):
                raise P.ProtocolError(P.BAD_REQUEST, f"{where}.expression must be a list of numbers")
            expression = _matrix(item["expression"], (len(item["expression"]),), f"{where}.expression")
            if expression.size == 0:
                expression = None
        rotations = None
        if item.get("local_rotations") is not None:
            rotations = _matrix(item["local_rotations"], (P.NUM_JOINTS, 3, 3), f"{where}.local_rotations")
        betas = item.get("betas")
        if betas is not None and (not isinstance(betas, list) or not all(P.type_ok(b, "number") for b in betas)):
            raise P.ProtocolError(P.BAD_REQUEST, f"{where}.betas must be a list of numbers")
        parts.append(pose_with_transforms(avatar, transforms, expression, rotations, betas))
    for i, item in enumerate(msg.get("objects") or []):
        where = f"objects[{i}]"
        if not isinstance(item, dict) or "object" not in item:
            raise P.ProtocolError(P.BAD_REQUEST, f"{where} must be an object with \"object\" (a handle from load_ply)")
        g = services.static_object(item["object"])
        if item.get("matrix") is not None:
            g = transform_gaussians(g, _matrix(item["matrix"], (4, 4), f"{where}.matrix"))
        parts.append(g)
    parts = [p.to(services.device, torch.float32) for p in parts if len(p)]
    if not parts:
        return GaussianSet.empty(services.device), 0
    g = GaussianSet.concat(parts)
    return g, len(g)


def render_frame(services: Services, pool: ShmPool, msg: dict) -> dict:
    from ..render import rasterize
    from ..render.core import srgb_to_linear

    t0 = time.perf_counter()
    width, height = msg["width"], msg["height"]
    for name, v in (("width", width), ("height", height)):
        if not 1 <= v <= P.MAX_IMAGE_SIDE:
            raise P.ProtocolError(P.BAD_REQUEST, f"{name} must be between 1 and {P.MAX_IMAGE_SIDE}; got {v}")
    if width * height > P.MAX_PIXELS:
        raise P.ProtocolError(P.BAD_REQUEST, f"{width}×{height} is more than the {P.MAX_PIXELS} pixels a frame may have")
    passes = msg.get("passes") or list(P.RENDER_PASSES)
    bad = [p for p in passes if p not in P.RENDER_PASSES]
    if bad or len(set(passes)) != len(passes):
        raise P.ProtocolError(P.BAD_REQUEST, f"passes must be distinct names from {list(P.RENDER_PASSES)}; got {passes!r}"[:200])
    dtype = msg.get("dtype") or "float32"
    if dtype not in P.FRAME_DTYPES:
        raise P.ProtocolError(P.BAD_REQUEST, f"dtype must be one of {list(P.FRAME_DTYPES)}; got {dtype[:20]!r}")
    rasterizer = msg.get("rasterizer") or "auto"
    if rasterizer not in P.RASTERIZERS:
        raise P.ProtocolError(P.BAD_REQUEST, f"rasterizer must be one of {list(P.RASTERIZERS)}; got {rasterizer[:20]!r}")
    slot = P.check_slot(msg.get("slot") or "frame")
    background = None
    if msg.get("background") is not None:
        background = torch.as_tensor(_matrix(msg["background"], (3,), "background"), dtype=torch.float32,
                                     device=services.device)
    color = msg.get("color") or "srgb"
    if color not in P.COLORS:
        raise P.ProtocolError(P.BAD_REQUEST, f"color must be one of {list(P.COLORS)}; got {color[:20]!r}")
    depth_empty = float(msg.get("depth_empty", 0.0) or 0.0)
    if not math.isfinite(depth_empty) or abs(depth_empty) > FLOAT32_MAX:
        raise P.ProtocolError(P.BAD_REQUEST, f"depth_empty must be a finite float32 (at most {FLOAT32_MAX:.4g} "
                              f"in size); got {depth_empty!r}")
    camera = parse_camera(msg["camera"], width, height)

    gaussians, count = gather_gaussians(services, msg)
    t1 = time.perf_counter()
    out = rasterize(gaussians, camera, backend=rasterizer, background=None if color == "linear" else background)
    if color == "linear":  # convert the Gaussians' colour, then put the (linear) background under it
        out.rgb = srgb_to_linear(out.rgb, out.alpha)
        if background is not None:
            out.rgb = out.rgb + (1.0 - out.alpha) * background
    if services.device.type == "cuda":
        torch.cuda.synchronize(services.device)
    t2 = time.perf_counter()

    arrays = []
    if "rgba" in passes:
        arrays.append(("rgba", dtype, (height, width, 4)))
    if "depth" in passes:
        arrays.append(("depth", "float32", (height, width, 1)))
    block, specs, views = pool.allocate(slot, arrays)
    flip = bool(msg.get("flip_y"))
    if out.rgb.device.type == "cuda":
        block.pin_for_cuda()  # once per block: the GPU then copies straight into shared memory
    if "rgba" in passes:
        write_rgba(views["rgba"], out.rgb, out.alpha, flip)
    if "depth" in passes:
        depth = out.depth
        if depth_empty:
            depth = torch.where(out.alpha > 0, depth, torch.full_like(depth, depth_empty))
        write_plane(views["depth"], depth, flip)
    t3 = time.perf_counter()
    return {"width": width, "height": height, "slot": slot, "block": block.name, "arrays": specs,
            "num_gaussians": count, "flip_y": flip,
            "timing": {"queue_ms": round((t0 - msg.get("__received", t0)) * 1e3, 3),
                       "pose_ms": round((t1 - t0) * 1e3, 3), "raster_ms": round((t2 - t1) * 1e3, 3),
                       "pack_ms": round((t3 - t2) * 1e3, 3)}}
