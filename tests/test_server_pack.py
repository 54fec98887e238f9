"""Packing frames into shared memory: every layout the rasterizers return, both dtypes, both
row orders, serial and split over threads (as on machines with cores to spare)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from backend.server import pack


@pytest.fixture(params=["serial", "threads"])
def mode(request, monkeypatch):
    if request.param == "threads":
        monkeypatch.setattr(pack, "_POOL", [ThreadPoolExecutor(3)])
        monkeypatch.setattr(pack, "PARALLEL_MIN_BYTES", 1)
    else:
        monkeypatch.setattr(pack, "_POOL", [None])
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("layout", ["four_channel", "contiguous", "odd_width_crop"])
def test_write_rgba(mode, dtype, flip, layout):
    H, W = 37, 53
    g = torch.Generator().manual_seed(0)
    if layout == "four_channel":
        feat = torch.rand(H, W, 4, generator=g)
        rgb = feat[..., :3]
        assert pack.four_channel_base(rgb) is not None
    elif layout == "contiguous":
        rgb = torch.rand(H, W, 3, generator=g)
        assert pack.four_channel_base(rgb) is None
    else:  # a crop of a wider padded image, as tiles produce
        feat = torch.rand(H + 3, W + 5, 4, generator=g)
        rgb = feat[:H, :W, :3]
        assert pack.four_channel_base(rgb) is not None
    alpha = torch.rand(H, W, 1, generator=g)
    dst = np.full((H, W, 4), -1, dtype)
    pack.write_rgba(dst, rgb, alpha, flip)
    expect = torch.cat([rgb, alpha], -1).numpy().astype(dtype)
    if flip:
        expect = expect[::-1]
    np.testing.assert_array_equal(dst, expect)


def test_four_channel_base_respects_storage_end():
    feat = torch.rand(4, 5, 3)  # only three channels: no fourth float after the last pixel
    assert pack.four_channel_base(feat) is None


def test_write_plane_and_pcopyto(mode):
    a = torch.rand(41, 7, 1)
    d = np.zeros((41, 7, 1), np.float32)
    pack.write_plane(d, a, False)
    np.testing.assert_array_equal(d, a.numpy())
    pack.write_plane(d, a, True)
    np.testing.assert_array_equal(d, a.numpy()[::-1])
    src = np.random.default_rng(0).random((100, 3, 2))
    dst = np.empty_like(src)
    pack.pcopyto(dst, src)
    np.testing.assert_array_equal(dst, src)
