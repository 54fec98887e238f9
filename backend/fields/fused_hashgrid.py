"""The hash encoding as one fused kernel per pass (forward, gradients), built on first use.

The pure-PyTorch encoding (`hashgrid.py`) materialises (N, levels, 8) index, weight and
feature tensors and sorts 8 x levels indices per point in the table's backward; on a GPU that
is most of a NeRF iteration's and a hybrid avatar's time. Here one thread computes one point's
cell at one level and interpolates it, and the backward scatters into the table with atomic
adds, so nothing per corner is stored. The arithmetic lives in `csrc/hashgrid_math.h`, which
the CUDA kernels and a CPU loop share (the CPU build is how a machine without a GPU tests it);
the features equal the PyTorch encoding's to float rounding (the corner sums' order differs).

The extension is compiled by `torch.utils.cpp_extension` (nvcc and a C++ compiler; about a
minute, cached by torch in $TORCH_EXTENSIONS_DIR). Where it cannot be built, or with
DREAMWALTZ_FUSED_HASHGRID=0, the encoding stays pure PyTorch: `fused_available` says whether
it is usable, and why not.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
CSRC = Path(__file__).resolve().parent / "csrc"


@dataclasses.dataclass(frozen=True)
class Layout:
    """The per-level layout the kernels need (hashgrid._level_layout's), as plain values."""

    features: int
    log2_table: int
    smoothstep: bool
    scale: tuple[float, ...]
    resolution: tuple[int, ...]
    size: tuple[int, ...]
    offset: tuple[int, ...]
    dense: tuple[bool, ...]

    @functools.cached_property
    def args(self) -> tuple:
        """The layout as the extension's functions take it (built once)."""
        return (self.features, self.log2_table, self.smoothstep, list(self.scale), list(self.resolution),
                list(self.size), list(self.offset), list(self.dense))


@functools.lru_cache(maxsize=2)
def _load(cuda: bool) -> tuple[Any, str]:
    """(the extension or None, why not): built once per process and kind."""
    try:
        from torch.utils.cpp_extension import load

        scripts = Path(sys.executable).parent
        if shutil.which("ninja") is None and (scripts / "ninja").exists():
            # ninja from the interpreter's own environment (a venv run without activating it)
            os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"

        sources = [str(CSRC / "hashgrid_ext.cpp")] + ([str(CSRC / "hashgrid_cuda.cu")] if cuda else [])
        flags = ["-O3"] + (["-DHG_WITH_CUDA"] if cuda else [])
        module = load(name="dreamwaltz_hashgrid" + ("_cuda" if cuda else "_cpu"), sources=sources,
                      extra_cflags=flags, extra_cuda_cflags=["-O3"], extra_include_paths=[str(CSRC)],
                      verbose=False)
        return module, ""
    except Exception as exc:  # noqa: BLE001 - no compiler, no nvcc, a failed build: the PyTorch encoding stays
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        log.warning("the fused hash-grid kernel could not be built (%s); using the PyTorch encoding", reason)
        return None, reason


def _extension(device: torch.device) -> tuple[Any, str]:
    """(the extension for `device`'s tensors or None, why not)."""
    if os.environ.get("DREAMWALTZ_FUSED_HASHGRID", "1") == "0":
        return None, "switched off by DREAMWALTZ_FUSED_HASHGRID=0"
    if device.type == "cuda" and not torch.cuda.is_available():
        return None, "torch sees no CUDA GPU"
    if device.type not in ("cuda", "cpu"):
        return None, f"no fused kernel for {device.type} tensors"
    return _load(device.type == "cuda")


def fused_available(device: torch.device | str) -> tuple[bool, str]:
    """Whether the fused encoding runs on `device` (building it the first time), and why not."""
    module, reason = _extension(torch.device(device))
    return module is not None, reason


class _FusedEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, table: torch.Tensor, layout: Layout, module: Any) -> torch.Tensor:
        ctx.save_for_backward(x, table)
        ctx.layout, ctx.module = layout, module
        return module.forward(x, table, *layout.args)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        x, table = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_table, grad_x = ctx.module.backward(grad.contiguous(), x, table, need_table, need_x, *ctx.layout.args)
        return (grad_x if need_x else None), (grad_table if need_table else None), None, None


def fused_encode(x: torch.Tensor, table: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Features (N, L*F) of points (N, 3) in [0, 1]^3 (clamped) from the flat table (rows, F);
    differentiable in both. Raises RuntimeError where the kernel is not available."""
    module, reason = _extension(x.device)
    if module is None:
        raise RuntimeError(f"the fused hash-grid kernel is not available on {x.device}: {reason}")
    return _FusedEncode.apply(x.float().contiguous(), table.contiguous(), layout, module)
