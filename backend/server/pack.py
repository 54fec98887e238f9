"""Writing rendered images into shared memory: the server's share of the frame transport.

Plain memory copies, split over a few threads on machines with cores to spare (numpy and
torch release the GIL while they copy; one thread rarely reaches a machine's memory
bandwidth), and on CUDA one device-to-host copy straight into the (page-locked) block.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

PARALLEL_MIN_BYTES = 4 << 20
_POOL: list = []


def _pool() -> ThreadPoolExecutor | None:
    if not _POOL:
        cores = os.cpu_count() or 1
        _POOL.append(ThreadPoolExecutor(min(8, cores), thread_name_prefix="dreamwaltz-pack") if cores >= 4 else None)
    return _POOL[0]


def _split(rows: int, parts: int) -> list[tuple[int, int]]:
    step = -(-rows // parts)
    return [(i, min(rows, i + step)) for i in range(0, rows, step)]


def _run_rows(rows: int, nbytes: int, fn) -> None:
    """fn(r0, r1) over row ranges, in parallel when it pays."""
    pool = _pool()
    if pool is None or nbytes < PARALLEL_MIN_BYTES or rows < 2:
        fn(0, rows)
        return
    ranges = _split(rows, pool._max_workers)
    futures = [pool.submit(fn, r0, r1) for r0, r1 in ranges[1:]]
    fn(*ranges[0])
    for f in futures:
        f.result()


def pcopyto(dst: np.ndarray, src: np.ndarray) -> None:
    """np.copyto(dst, src) (same shapes), split by rows over threads."""
    _run_rows(dst.shape[0], dst.nbytes, lambda r0, r1: np.copyto(dst[r0:r1], src[r0:r1]))


def _serial_copy(dst: torch.Tensor, src: torch.Tensor, r0: int, r1: int) -> None:
    """dst[r0:r1] <- src[r0:r1] in row blocks below torch's parallel grain size: on small
    machines waking torch's own worker threads for a copy costs more than the copy."""
    rows = max(1, 32000 // max(1, src[0].numel()))
    for a in range(r0, r1, rows):
        b = min(r1, a + rows)
        dst[a:b].copy_(src[a:b])


def tcopy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst <- src for CPU tensors (dtype conversion and strides allowed), split by rows."""
    _run_rows(dst.shape[0], dst.numel() * dst.element_size(), lambda r0, r1: _serial_copy(dst, src, r0, r1))


def four_channel_base(rgb: torch.Tensor) -> torch.Tensor | None:
    """When `rgb` is the first three channels of a 4-channel pixel layout (as the torch
    rasterizer returns it), that layout as an (H, W, 4) view, so one block copy moves it."""
    H, W, _ = rgb.shape
    if rgb.stride(2) != 1 or rgb.stride(1) != 4 or rgb.stride(0) < 4 * W:
        return None
    last = rgb.storage_offset() + (H - 1) * rgb.stride(0) + (W - 1) * 4 + 3
    if last >= rgb.untyped_storage().nbytes() // rgb.element_size():
        return None
    return rgb.as_strided((H, W, 4), rgb.stride(), rgb.storage_offset())


_SCRATCH: dict[str, torch.Tensor] = {}


def _scratch(shape: tuple, dtype: np.dtype) -> torch.Tensor:
    """A reused buffer (only the request thread packs frames)."""
    tdtype = torch.float16 if dtype == np.float16 else torch.float32
    t = _SCRATCH.get("rgba")
    if t is None or tuple(t.shape) != shape or t.dtype != tdtype:
        t = _SCRATCH["rgba"] = torch.empty(shape, dtype=tdtype)
    return t


def write_rgba(dst: np.ndarray, rgb: torch.Tensor, alpha: torch.Tensor, flip: bool) -> None:
    """(H, W, 4) RGBA into the shared-memory view `dst` (float32 or float16), rows bottom-up
    when `flip`."""
    rgb, alpha = rgb.detach(), alpha.detach()
    if rgb.device.type != "cpu":
        rgba = torch.cat([rgb, alpha], -1).to(torch.float16 if dst.dtype == np.float16 else torch.float32)
        torch.from_numpy(dst).copy_(rgba.flip(0) if flip else rgba)
        return
    base = four_channel_base(rgb)
    if dst.dtype == np.float32 and base is not None:
        d = dst[::-1] if flip else dst
        pcopyto(d, base.numpy())
        pcopyto(d[..., 3], alpha.numpy()[..., 0])
        return
    target = _scratch(tuple(dst.shape), dst.dtype) if flip else torch.from_numpy(dst)
    if base is not None:
        tcopy(target, base)
    else:
        tcopy(target[..., :3], rgb)
    tcopy(target[..., 3], alpha[..., 0])
    if flip:
        pcopyto(dst[::-1], target.numpy())


def write_plane(dst: np.ndarray, plane: torch.Tensor, flip: bool) -> None:
    """An (H, W, C) float32 image (depth) into shared memory, rows bottom-up when `flip`."""
    plane = plane.detach()
    if plane.device.type != "cpu":
        torch.from_numpy(dst).copy_(plane.flip(0) if flip else plane)
        return
    pcopyto(dst[::-1] if flip else dst, plane.numpy())
