"""GPU tests: gsplat (CUDA) against the torch reference rasterizer.

Run on the GPU machine with ``python -m pytest -m gpu tests/test_render_gpu.py``. They are
skipped where torch sees no CUDA device; where it does, gsplat must load (a failure to
build its extension fails the tests rather than hiding).

Tolerances (float32 on both sides; gsplat uses fast-math exp and float32 throughout):
  rgb: mean |diff| < 1e-3 and max |diff| < 2e-2; alpha: mean |diff| < 1e-3 and
  max |diff| < 1e-2 (an isolated pixel whose alpha sits on the 1/255 threshold may flip);
  depth: mean relative |diff| < 1e-3 over pixels with alpha > 0.2 in both.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.render import Camera, GaussianSet, RenderError, available_backends, rasterize

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def gsplat_ready():
    from backend.render.gsplat_rasterizer import load_gsplat

    try:
        load_gsplat()
    except RenderError as e:  # on a GPU machine this is a real failure
        pytest.fail(f"gsplat does not load on this CUDA machine: {e}")
    return True


def cam_nonsquare() -> Camera:
    K = np.array([[230.0, 0.0, 121.3], [0.0, 190.0, 101.6], [0.0, 0.0, 1.0]])
    a = math.radians(15.0)
    R = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = [0.05, 0.1, 0.3]
    return Camera(world_to_camera=w2c, K=K, width=256, height=192)


def cam_look_at() -> Camera:
    return Camera.look_at(eye=(0.4, 1.2, 3.0), target=(0.0, 0.8, 0.0), fov_y_deg=45, width=200, height=136)


def random_scene(n: int, cam: Camera, seed: int, device="cuda") -> GaussianSet:
    """Gaussians spread through the view frustum (and some outside it or behind the camera)."""
    rng = np.random.default_rng(seed)
    K = np.asarray(cam.K, dtype=np.float64)
    u = rng.uniform(-20, cam.width + 20, n)
    v = rng.uniform(-20, cam.height + 20, n)
    z = rng.uniform(0.8, 5.0, n)
    z[: n // 50] = -rng.uniform(0.1, 2.0, n // 50)  # behind the camera
    pc = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    c2w = np.linalg.inv(np.asarray(cam.world_to_camera, dtype=np.float64))
    means = pc @ c2w[:3, :3].T + c2w[:3, 3]
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return GaussianSet(
        means=t(means),
        quats=t(rng.normal(size=(n, 4))),
        scales=t(np.exp(rng.uniform(np.log(0.004), np.log(0.08), (n, 3)))),
        opacities=t(rng.uniform(0.02, 0.99, n)),
        colors=t(rng.uniform(0, 1, (n, 3))),
    )


def compare(a, b):
    d_rgb = (a.rgb - b.rgb).abs()
    d_alpha = (a.alpha - b.alpha).abs()
    both = (a.alpha > 0.2) & (b.alpha > 0.2)
    rel_depth = ((a.depth - b.depth).abs() / b.depth.clamp_min(1e-6))[both]
    return {
        "rgb_mean": float(d_rgb.mean()),
        "rgb_max": float(d_rgb.max()),
        "alpha_mean": float(d_alpha.mean()),
        "alpha_max": float(d_alpha.max()),
        "depth_rel_mean": float(rel_depth.mean()) if rel_depth.numel() else 0.0,
        "covered": float(both.float().mean()),
    }


@pytest.mark.parametrize("cam_fn,seed,bg", [(cam_nonsquare, 0, None), (cam_nonsquare, 1, (0.2, 0.5, 0.9)),
                                            (cam_look_at, 2, None)])
def test_gsplat_matches_torch_reference(gsplat_ready, cam_fn, seed, bg):
    cam = cam_fn()
    g = random_scene(2000, cam, seed)
    background = None if bg is None else torch.tensor(bg, device="cuda")
    ref = rasterize(g, cam, backend="torch", background=background)
    out = rasterize(g, cam, backend="gsplat", background=background)
    assert out.rgb.shape == ref.rgb.shape == (cam.height, cam.width, 3)
    assert out.alpha.shape == ref.alpha.shape and out.depth.shape == ref.depth.shape
    s = compare(out, ref)
    print(cam_fn.__name__, seed, s)
    assert s["covered"] > 0.3, "the scene should cover a good part of the image"
    assert s["rgb_mean"] < 1e-3 and s["rgb_max"] < 2e-2, s
    assert s["alpha_mean"] < 1e-3 and s["alpha_max"] < 1e-2, s
    assert s["depth_rel_mean"] < 1e-3, s


def test_gsplat_orthographic_matches_torch_reference(gsplat_ready):
    """camera_model="ortho" in gsplat and the reference's orthographic path draw the same image
    (the near plane behind the camera, as Blender's orthographic viewports have it)."""
    base = cam_nonsquare()
    cam = Camera(base.world_to_camera, np.array([[60.0, 0, 121.3], [0, 55.0, 101.6], [0, 0, 1]]), 256, 192,
                 near=-3.0, far=8.0, model="ortho")
    g = random_scene(2000, base, 7)
    ref = rasterize(g, cam, backend="torch")
    out = rasterize(g, cam, backend="gsplat")
    s = compare(out, ref)
    print("ortho", s)
    assert s["covered"] > 0.3, s
    assert s["rgb_mean"] < 1e-3 and s["rgb_max"] < 2e-2, s
    assert s["alpha_mean"] < 1e-3 and s["alpha_max"] < 1e-2, s


def test_auto_uses_gsplat_on_cuda(gsplat_ready):
    assert available_backends() == ["gsplat", "torch"]
    cam = cam_look_at()
    g = random_scene(500, cam, 3)
    a = rasterize(g, cam)
    b = rasterize(g, cam, backend="gsplat")
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha) and torch.equal(a.depth, b.depth)


def test_torch_reference_same_on_cuda_and_cpu():
    cam = cam_nonsquare()
    g = random_scene(1000, cam, 4)
    a = rasterize(g, cam, backend="torch")
    b = rasterize(g.to("cpu"), cam, backend="torch")
    assert a.rgb.device.type == "cuda"
    s = compare(a, type(a)(b.rgb.cuda(), b.alpha.cuda(), b.depth.cuda()))
    assert s["rgb_mean"] < 1e-5 and s["alpha_max"] < 1e-2, s


def test_gsplat_edge_cases(gsplat_ready):
    cam = cam_look_at()
    empty = rasterize(GaussianSet.empty(device="cuda"), cam, backend="gsplat")
    assert empty.rgb.shape == (136, 200, 3) and float(empty.alpha.abs().sum()) == 0.0
    g = random_scene(100, cam, 5)
    g = g[cam.project(g.means)[1] > 0]
    pos = torch.tensor(cam.position, dtype=torch.float32, device="cuda")
    behind = GaussianSet(pos - (g.means - pos), g.quats, g.scales, g.opacities, g.colors)  # mirrored behind
    assert bool((cam.project(behind.means)[1] < 0).all())
    assert float(rasterize(behind, cam, backend="gsplat").alpha.abs().max()) == 0.0
    g64 = random_scene(100, cam, 6).to(dtype=torch.float64)
    out = rasterize(g64, cam, backend="gsplat")
    assert out.rgb.dtype == torch.float64


def test_gsplat_and_torch_gradients_agree(gsplat_ready):
    cam = cam_nonsquare()
    base = random_scene(300, cam, 7)
    w = torch.rand(cam.height, cam.width, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    grads = {}
    for backend in ("torch", "gsplat"):
        g = GaussianSet(*(t.clone().requires_grad_(True) for t in
                          (base.means, base.quats, base.scales, base.opacities, base.colors)))
        o = rasterize(g, cam, backend=backend)
        ((o.rgb * w).sum() + o.alpha.sum()).backward()
        grads[backend] = {k: getattr(g, k).grad for k in ("means", "quats", "scales", "opacities", "colors")}
    for k in grads["torch"]:
        a, b = grads["gsplat"][k].flatten(), grads["torch"][k].flatten()
        cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        print(k, cos, rel)
        assert cos > 0.99 and rel < 0.1, (k, cos, rel)


def test_gsplat_views_match_one_call_per_view_and_keep_per_view_gradients(gsplat_ready):
    from backend.render import rasterize_views

    cams = [cam_look_at(), Camera.look_at(eye=(-2.5, 1.0, 1.5), target=(0.0, 0.8, 0.0), fov_y_deg=40,
                                          width=200, height=136)]
    base = random_scene(3000, cams[0], 5)
    means = [base.means.clone().requires_grad_(True) for _ in cams]
    sets = [GaussianSet(m, base.quats, base.scales, base.opacities, base.colors) for m in means]
    bgs = torch.tensor([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], device="cuda")
    out = rasterize_views(sets, cams, backend="gsplat", backgrounds=bgs)
    for i, cam in enumerate(cams):
        one = rasterize(sets[i], cam, backend="gsplat", background=bgs[i])
        assert torch.allclose(out.rgb[i], one.rgb, atol=1e-5) and torch.allclose(out.alpha[i], one.alpha, atol=1e-5)
    out.rgb[0].sum().backward()
    assert means[0].grad.abs().sum() > 0
    assert means[1].grad is None or not means[1].grad.any()
    rgb_only = rasterize_views(sets, cams, backend="gsplat", backgrounds=bgs, depth=False)
    assert torch.allclose(rgb_only.rgb, out.rgb, atol=1e-5) and torch.allclose(rgb_only.alpha, out.alpha, atol=1e-5)
    assert not rgb_only.depth.any() and out.depth.any()


@pytest.mark.parametrize("degree", [1, 3])
def test_gsplat_sh_degree_path_matches_the_torch_reference(gsplat_ready, degree):
    """Issue 17: a static scene with SH through gsplat's sh_degree path (colours clamped at 0
    only) agrees with the torch rasterizer's own SH evaluation, also when an avatar-like set
    without SH is drawn with it and in the several-views call."""
    from backend.render import rasterize_views

    from .test_sh import psnr, sh_scene

    cam = cam_look_at()
    g = sh_scene(3000, degree, seed=degree)
    g = GaussianSet(g.means * 1.5 + torch.tensor([0.0, 0.8, 0.0]), g.quats, g.scales, g.opacities, g.colors, g.sh).to("cuda")
    plain = random_scene(500, cam, seed=9)
    both = GaussianSet.concat([g, plain])
    for scene in (g, both):
        ref = rasterize(scene, cam, backend="torch")
        out = rasterize(scene, cam, backend="gsplat")
        s = compare(out, ref)
        print(degree, s, psnr(out.rgb, ref.rgb))
        assert s["covered"] > 0.2
        assert s["rgb_mean"] < 1e-3 and s["rgb_max"] < 3e-2, s
    views = rasterize_views([both, both], [cam, cam_nonsquare_sized(cam)], backend="gsplat")
    single = rasterize(both, cam, backend="gsplat")
    assert float((views.rgb[0] - single.rgb).abs().max()) < 1e-4
    dc = rasterize(GaussianSet(g.means, g.quats, g.scales, g.opacities, g.colors.clamp_min(0)), cam, backend="gsplat")
    assert psnr(dc.rgb, rasterize(g, cam, backend="gsplat").rgb) < 35.0, "SH must change the picture"


def cam_nonsquare_sized(like: Camera) -> Camera:
    """Another view of the same size (rasterize_views needs one size)."""
    return Camera.look_at(eye=(-1.0, 1.5, 2.6), target=(0.0, 0.8, 0.0), fov_y_deg=50, width=like.width, height=like.height)
