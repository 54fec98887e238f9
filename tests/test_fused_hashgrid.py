"""The fused hash-grid kernels (backend/fields/fused_hashgrid.py) against the PyTorch encoding.

The CPU build runs the very maths of the CUDA kernels (csrc/hashgrid_math.h), so CI checks the
indexing, weights and both gradients without a GPU; the GPU tests check the CUDA kernels,
their atomics and their use inside a CUDA graph."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from backend.fields.fused_hashgrid import fused_available
from backend.fields.hashgrid import HashGridEncoding


class _Shape:
    def __init__(self, levels=8, features=2, log2_table=12, base=4, finest=300):
        self.levels, self.features, self.log2_table = levels, features, log2_table
        self.base_resolution, self.finest_resolution = base, finest


def _pair(shape, interpolation, device):
    ref = HashGridEncoding(shape, torch.Generator().manual_seed(0), interpolation, kernel="torch").to(device)
    with torch.no_grad():
        ref.embeddings.normal_(0.0, 0.5)
    fused = HashGridEncoding(shape, None, interpolation, kernel="fused").to(device)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _points(n, device):
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(1)) * 1.3 - 0.15   # some outside [0, 1]
    x[:6] = torch.tensor([[0, 0, 0], [1, 1, 1], [0.5, 1, 0], [1, 0, 1], [0.9999999, 0.3, 0.0], [0.25, 0.5, 0.75]])
    return x.to(device)


def _compare(shape, interpolation, device, n, rtol):
    ref, fused = _pair(shape, interpolation, device)
    assert any(fused.layout.dense) and not all(fused.layout.dense)   # both index kinds are exercised
    x = _points(n, device)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ref(xa), fused(xb)
    scale = float(a.detach().abs().max())
    assert float((a - b).detach().abs().max()) <= rtol * scale
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(2)).to(device)
    (a * g).sum().backward()
    (b * g).sum().backward()
    for got, want in ((fused.embeddings.grad, ref.embeddings.grad), (xb.grad, xa.grad)):
        assert float((got - want).abs().max()) <= rtol * float(want.abs().max()), (interpolation, got.shape)
    outside = ((x < 0) | (x > 1))
    assert torch.all(xb.grad[outside] == 0)   # clamped coordinates pass no gradient, as torch's clamp


def _cpu_build_or_skip():
    """CI has a compiler and ninja: there a failed build fails the test instead of hiding it."""
    ok, reason = fused_available("cpu") if shutil.which("c++") or shutil.which("g++") else (False, "no C++ compiler")
    if not ok:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"the fused kernel's CPU version: {reason}")


@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_fused_kernel_maths_equal_the_pytorch_encoding_on_the_cpu(interpolation):
    _cpu_build_or_skip()
    _compare(_Shape(), interpolation, "cpu", 4000, 1e-5)


def test_a_bad_kernel_name_is_one_clear_error():
    with pytest.raises(ValueError, match="kernel must be one of auto, torch, fused; got 'cuda'"):
        HashGridEncoding(_Shape(), kernel="cuda")


def test_the_fused_kernel_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("DREAMWALTZ_FUSED_HASHGRID", "0")
    assert fused_available("cpu") == (False, "switched off by DREAMWALTZ_FUSED_HASHGRID=0")
    enc = HashGridEncoding(_Shape(), kernel="fused")
    with pytest.raises(RuntimeError, match="switched off by DREAMWALTZ_FUSED_HASHGRID=0"):
        enc(torch.rand(4, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("interpolation", ["linear", "smoothstep"])
def test_fused_cuda_kernels_equal_the_pytorch_encoding_at_the_nerf_size(interpolation):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    ok, reason = fused_available("cuda")
    assert ok, reason
    # the NeRF's grid: 16 levels x 2, 2^19 table, finest 2048 x bound 1.1 (atomics collide on coarse levels)
    _compare(_Shape(16, 2, 19, 16, 2253), interpolation, "cuda", 200_000, 1e-4)


@pytest.mark.gpu
def test_fused_cuda_kernel_runs_inside_a_cuda_graph():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    ref, fused = _pair(_Shape(16, 2, 19, 16, 2253), "smoothstep", "cuda")
    x = _points(50_000, "cuda")
    want = ref(x).detach()
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        fused(static)                      # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = fused(static)
    static.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    assert float((out - want).abs().max()) <= 1e-4 * float(want.abs().max())


@pytest.mark.gpu
def test_nerf_field_picks_the_fused_kernel_on_cuda_without_tiny_cuda_nn():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from backend.fields.hashgrid import tcnn_available
    from backend.train.nerf import NeRFConfig
    from backend.train.nerf.field import NeRFField

    field = NeRFField(NeRFConfig(), torch.zeros(3), 1.1, "cuda")
    assert field.backend == ("tcnn" if tcnn_available() else "fused")
