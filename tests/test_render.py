"""CPU tests of backend.render: cameras, the torch reference rasterizer, dispatch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.render import Camera, GaussianSet, RenderError, RenderOutput, available_backends, rasterize
from backend.render.torch_rasterizer import rasterize_torch


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def make_set(means, quats=None, scales=None, opacities=None, colors=None, dtype=torch.float32) -> GaussianSet:
    means = torch.as_tensor(np.asarray(means, dtype=np.float64), dtype=dtype).reshape(-1, 3)
    n = means.shape[0]
    t = lambda a, shape: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype).expand(*shape).clone()  # noqa: E731
    return GaussianSet(
        means=means,
        quats=t([1.0, 0.0, 0.0, 0.0] if quats is None else quats, (n, 4)),
        scales=t(0.05 if scales is None else scales, (n, 3)),
        opacities=t(0.8 if opacities is None else opacities, (n,)),
        colors=t([1.0, 0.5, 0.25] if colors is None else colors, (n, 3)),
    )


def odd_camera(dtype=np.float64) -> Camera:
    """Non-square pixels, off-centre principal point, size not a multiple of any tile."""
    K = np.array([[70.0, 0.0, 30.3], [0.0, 60.0, 22.7], [0.0, 0.0, 1.0]], dtype=dtype)
    ang = math.radians(20.0)
    R = np.array([[math.cos(ang), 0.0, -math.sin(ang)], [0.0, 1.0, 0.0], [math.sin(ang), 0.0, math.cos(ang)]])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = [0.1, -0.2, 0.5]
    return Camera(world_to_camera=w2c.astype(dtype), K=K, width=61, height=47)


def unproject(cam: Camera, u: float, v: float, z: float) -> np.ndarray:
    """World point that projects to pixel coordinate (u, v) at camera depth z."""
    K = np.asarray(cam.K, dtype=np.float64)
    pc = np.array([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])
    c2w = np.linalg.inv(np.asarray(cam.world_to_camera, dtype=np.float64))
    return c2w[:3, :3] @ pc + c2w[:3, 3]


def random_scene(n, cam: Camera, seed=0, dtype=torch.float64) -> GaussianSet:
    """Gaussians mostly in the view frustum at depth 1..4, with culled ones mixed in."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-10, cam.width + 10, n)
    v = rng.uniform(-10, cam.height + 10, n)
    z = rng.uniform(1.0, 4.0, n)
    z[:5] = [-1.0, 0.005, -0.2, 2000.0, 1.5]  # behind, before near, behind, beyond far, ok
    means = np.stack([unproject(cam, a, b, c) for a, b, c in zip(u, v, z)])
    quats = rng.normal(size=(n, 4))
    scales = np.exp(rng.uniform(np.log(0.01), np.log(0.12), (n, 3)))
    opac = rng.uniform(0.05, 0.98, n)
    opac[5:8] = [0.002, 1 / 255 - 1e-4, 0.0]  # below gsplat's alpha threshold: culled
    cols = rng.uniform(0, 1, (n, 3))
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    return GaussianSet(t(means), t(quats), t(scales), t(opac), t(cols))


def brute_force(g: GaussianSet, cam: Camera, background=None, with_done=False):
    """Independent float64 NumPy implementation of gsplat 1.5.3's classic forward pass.

    A loop over Gaussians front to back, every pixel at once, with gsplat's per-pixel
    'done' flag; rotation from the quaternion via the vector form (w^2 - v.v) I + 2 v v^T
    + 2 w [v]x, so that it shares no code with the implementation under test.
    """
    means = g.means.detach().double().numpy()
    quats = g.quats.detach().double().numpy()
    scales = g.scales.detach().double().numpy()
    opac = g.opacities.detach().double().numpy()
    cols = g.colors.detach().double().numpy()
    w2c = np.asarray(cam.world_to_camera, dtype=np.float64)
    K = np.asarray(cam.K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    W, H = cam.width, cam.height
    px, py = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    T = np.ones((H, W))
    done = np.zeros((H, W), bool)
    acc = np.zeros((H, W, 4))
    items = []
    for i in range(len(means)):
        mc = w2c[:3, :3] @ means[i] + w2c[:3, 3]
        x, y, z = mc
        if z < cam.near or z > cam.far or opac[i] < 1 / 255:
            continue
        ortho = getattr(cam, "model", "pinhole") == "ortho"
        q = quats[i] / np.linalg.norm(quats[i])
        w, v = q[0], q[1:]
        vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        R = (w * w - v @ v) * np.eye(3) + 2 * np.outer(v, v) + 2 * w * vx
        cov = w2c[:3, :3] @ R @ np.diag(scales[i] ** 2) @ R.T @ w2c[:3, :3].T
        lxp = (W - cx) / fx + 0.3 * 0.5 * W / fx
        lxn = cx / fx + 0.3 * 0.5 * W / fx
        lyp = (H - cy) / fy + 0.3 * 0.5 * H / fy
        lyn = cy / fy + 0.3 * 0.5 * H / fy
        tx = z * min(lxp, max(-lxn, x / z))
        ty = z * min(lyp, max(-lyn, y / z))
        J = np.array([[fx / z, 0, -fx * tx / z**2], [0, fy / z, -fy * ty / z**2]])
        if ortho:
            J = np.array([[fx, 0, 0], [0, fy, 0]])
        c2 = J @ cov @ J.T + 0.3 * np.eye(2)
        if np.linalg.det(c2) <= 0:
            continue
        conic = np.linalg.inv(c2)
        mx, my = (fx * x + cx, fy * y + cy) if ortho else (fx * x / z + cx, fy * y / z + cy)
        e = min(3.33, math.sqrt(2 * math.log(opac[i] * 255)))
        rx, ry = math.ceil(e * math.sqrt(c2[0, 0])), math.ceil(e * math.sqrt(c2[1, 1]))
        if rx <= 0 or ry <= 0 or mx + rx <= 0 or mx - rx >= W or my + ry <= 0 or my - ry >= H:
            continue
        items.append((z, i, mx, my, conic))
    items.sort(key=lambda it: (it[0], it[1]))
    for z, i, mx, my, conic in items:
        dx, dy = mx - px, my - py
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = np.minimum(0.999, opac[i] * np.exp(-sigma))
        use = (~done) & (sigma >= 0) & (alpha >= 1 / 255)
        nextT = T * (1 - alpha)
        stop = use & (nextT <= 1e-4)
        done |= stop
        use &= ~stop
        wgt = np.where(use, alpha * T, 0.0)
        acc += wgt[..., None] * np.append(cols[i], z)
        T = np.where(use, nextT, T)
    alpha = 1 - T
    rgb = acc[..., :3]
    if background is not None:
        rgb = rgb + T[..., None] * np.asarray(background, dtype=np.float64)
    depth = acc[..., 3] / np.maximum(alpha, 1e-10)
    if with_done:
        return rgb, alpha[..., None], depth[..., None], done
    return rgb, alpha[..., None], depth[..., None]


# --------------------------------------------------------------------------------------
# cameras
# --------------------------------------------------------------------------------------


def test_look_at_projects_target_to_image_centre_and_up_is_up():
    cam = Camera.look_at(eye=(1.0, 2.0, 3.0), target=(0.2, 0.9, -0.4), up=(0, 1, 0), fov_y_deg=45, width=320, height=200)
    uv, z = cam.project(np.array([0.2, 0.9, -0.4]))
    assert np.allclose(uv, [160.0, 100.0], atol=1e-9)
    assert z == pytest.approx(np.linalg.norm(np.array([1.0, 2.0, 3.0]) - [0.2, 0.9, -0.4]))
    assert np.allclose(cam.position, [1.0, 2.0, 3.0])
    R = np.asarray(cam.world_to_camera)[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
    # a point above the target appears above the centre (smaller v), on the vertical line
    uv_up, _ = cam.project(np.array([0.2, 1.0, -0.4]))
    assert uv_up[1] < 100.0
    # vertical field of view: a point at the top edge of the view is at v = 0
    K = np.asarray(cam.K)
    assert K[1, 1] == pytest.approx(100.0 / math.tan(math.radians(22.5)))
    assert K[0, 0] == pytest.approx(K[1, 1])


def test_look_at_looking_straight_down_still_works():
    cam = Camera.look_at(eye=(0, 5, 0), target=(0, 0, 0), up=(0, 1, 0), width=64, height=64)
    uv, z = cam.project(np.zeros(3))
    assert np.allclose(uv, [32, 32]) and z == pytest.approx(5.0)


def test_project_tensor_and_numpy_agree():
    cam = odd_camera()
    pts = np.random.default_rng(1).normal(size=(10, 3)) + [0, 0, 3]
    uv_np, z_np = cam.project(pts)
    uv_t, z_t = cam.project(torch.tensor(pts))
    assert isinstance(uv_t, torch.Tensor)
    assert np.allclose(uv_t.numpy(), uv_np) and np.allclose(z_t.numpy(), z_np)


# --------------------------------------------------------------------------------------
# torch rasterizer: behaviour
# --------------------------------------------------------------------------------------


def test_single_gaussian_lands_where_the_camera_projects_it():
    cam = odd_camera()
    i, j, zc = 40, 13, 2.5  # pixel column, row, depth
    p = unproject(cam, i + 0.5, j + 0.5, zc)  # exactly on that pixel's centre
    g = make_set([p], scales=0.03, opacities=0.7, colors=[0.2, 0.6, 1.0])
    uv, z = cam.project(g.means)
    assert torch.allclose(uv, torch.tensor([[i + 0.5, j + 0.5]]), atol=1e-4)
    out = rasterize(g, cam, backend="torch")
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (47, 61, 3) and out.alpha.shape == (47, 61, 1) and out.depth.shape == (47, 61, 1)
    a = out.alpha[..., 0]
    assert divmod(int(a.argmax()), 61) == (j, i)
    assert float(a[j, i]) == pytest.approx(0.7, abs=1e-5)
    assert float(out.depth[j, i, 0]) == pytest.approx(zc, abs=1e-4)
    assert torch.allclose(out.rgb[j, i], 0.7 * torch.tensor([0.2, 0.6, 1.0]), atol=1e-5)
    # drawn only near there, and depth is 0 where nothing is drawn
    assert float(a[0, 0]) == 0.0 and float(out.depth[0, 0, 0]) == 0.0
    assert float(a.sum()) > 0.7


def test_nearer_gaussian_occludes_farther_regardless_of_order():
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width=48, height=40, fov_y_deg=40)
    near = unproject(cam, 24.0, 20.0, 2.0)
    far = unproject(cam, 24.0, 20.0, 4.0)
    a = make_set([near, far], scales=[[0.2, 0.2, 0.2], [0.4, 0.4, 0.4]], opacities=[0.98, 0.98],
                 colors=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = a[torch.tensor([1, 0])]
    oa = rasterize(a, cam, backend="torch")
    ob = rasterize(b, cam, backend="torch")
    for o in (oa, ob):
        px = o.rgb[20, 24]
        assert float(px[0]) > 0.95 and float(px[1]) < 0.03
        assert float(o.depth[20, 24, 0]) == pytest.approx(2.0, abs=0.1)
    assert torch.allclose(oa.rgb, ob.rgb, atol=1e-6)
    assert torch.allclose(oa.alpha, ob.alpha, atol=1e-6)
    assert torch.allclose(oa.depth, ob.depth, atol=1e-5)


def test_equal_depths_keep_input_order():
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width=16, height=16)
    p = unproject(cam, 8.0, 8.0, 2.0)
    g = make_set([p, p], opacities=[0.5, 0.5], colors=[[1, 0, 0], [0, 0, 1]])
    rgb = rasterize(g, cam, backend="torch").rgb[7, 7]
    # the first in input order is in front when depths tie (gsplat's stable sort)
    assert float(rgb[0]) > float(rgb[2]) > 0


def test_background_is_composited_under_the_gaussians():
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width=32, height=32)
    g = make_set([unproject(cam, 16.5, 16.5, 3.0)], scales=0.05, opacities=0.6, colors=[1.0, 1.0, 0.0])
    bg = torch.tensor([0.1, 0.2, 0.9])
    plain = rasterize(g, cam, backend="torch")
    over = rasterize(g, cam, backend="torch", background=bg)
    assert torch.allclose(over.rgb, plain.rgb + (1 - plain.alpha) * bg, atol=1e-6)
    assert torch.allclose(over.rgb[0, 0], bg)
    assert torch.allclose(over.rgb[16, 16], 0.6 * torch.tensor([1.0, 1.0, 0.0]) + 0.4 * bg, atol=1e-5)
    assert torch.equal(over.alpha, plain.alpha) and torch.equal(over.depth, plain.depth)
    assert torch.equal(plain.rgb[0, 0], torch.zeros(3))  # default background is black


def test_gaussians_behind_the_camera_or_before_near_are_not_drawn():
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width=32, height=32, near=0.1)
    behind = [unproject(cam, 16, 16, -2.0), unproject(cam, 16, 16, -0.05), unproject(cam, 16, 16, 0.05)]
    g = make_set(behind, scales=0.5, opacities=0.9)
    out = rasterize(g, cam, backend="torch")
    assert float(out.alpha.abs().max()) == 0.0 and float(out.rgb.abs().max()) == 0.0
    # ... while the same Gaussian in front is drawn
    g2 = make_set([unproject(cam, 16, 16, 2.0)], scales=0.5, opacities=0.9)
    assert float(rasterize(g2, cam, backend="torch").alpha.max()) > 0.8


def test_zero_gaussians_give_an_empty_transparent_image():
    cam = Camera.look_at((0, 0, 3), (0, 0, 0), width=20, height=10)
    out = rasterize(GaussianSet.empty(), cam, backend="torch")
    assert out.rgb.shape == (10, 20, 3) and out.alpha.shape == (10, 20, 1) and out.depth.shape == (10, 20, 1)
    assert float(out.rgb.abs().sum() + out.alpha.abs().sum() + out.depth.abs().sum()) == 0.0
    bg = rasterize(GaussianSet.empty(), cam, background=torch.tensor([0.5, 0.25, 1.0]))
    assert torch.allclose(bg.rgb, torch.tensor([0.5, 0.25, 1.0]).expand(10, 20, 3))
    # all culled is the same as none
    far_behind = make_set([[0, 0, 10.0]])
    assert float(rasterize(far_behind, cam, backend="torch").alpha.sum()) == 0.0


def test_compositing_stops_before_transmittance_drops_to_1e4():
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width=16, height=16)
    p = [unproject(cam, 8.5, 8.5, 2.0 + 0.01 * k) for k in range(6)]
    cols = [[1, 0, 0]] * 3 + [[0, 1, 0]] * 3
    g = make_set(p, scales=0.2, opacities=0.95, colors=cols, dtype=torch.float64)
    out = rasterize(g, cam, backend="torch")
    # T after 3 Gaussians = 0.05^3 = 1.25e-4 > 1e-4; the 4th would make it 6.25e-6: excluded
    assert float(out.alpha[8, 8, 0]) == pytest.approx(1 - 0.05**3, abs=1e-9)
    assert float(out.rgb[8, 8, 1]) == 0.0
    assert float(out.rgb[8, 8, 0]) == pytest.approx(1 - 0.05**3, abs=1e-9)


def test_alpha_is_clamped_to_0999():
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width=16, height=16)
    g = make_set([unproject(cam, 8.5, 8.5, 2.0)], scales=0.2, opacities=1.0, dtype=torch.float64)
    assert float(rasterize(g, cam, backend="torch").alpha[8, 8, 0]) == pytest.approx(0.999, abs=1e-12)


@pytest.mark.parametrize("tile_size,chunk,segment", [
    (4, 1 << 18, 32), (8, 1 << 18, 32), (16, 1 << 18, 32),  # defaults and tile sizes
    (8, 1 << 18, 1), (16, 2000, 5), (8, 1 << 22, 100000),  # tiny segments and blocks, one segment
])
def test_matches_an_independent_brute_force_implementation(tile_size, chunk, segment):
    cam = odd_camera()
    g = random_scene(160, cam, seed=3)
    # a dense opaque stack so that some pixels hit the 1e-4 cut-off
    stack = make_set([unproject(cam, 20.0 + k, 25.0, 1.5 + 0.05 * k) for k in range(12)], scales=0.06,
                     opacities=0.97, colors=[0.3, 0.9, 0.1], dtype=torch.float64)
    g = GaussianSet.concat([g, stack])
    bg = [0.3, 0.1, 0.7]
    rgb, alpha, depth, done = brute_force(g, cam, bg, with_done=True)
    assert done.sum() >= 5, "scene should contain pixels that hit the cut-off"
    out = rasterize_torch(g, cam, torch.tensor(bg, dtype=torch.float64), tile_size=tile_size, chunk_elems=chunk,
                          segment=segment)
    assert np.abs(out.rgb.numpy() - rgb).max() < 1e-9
    assert np.abs(out.alpha.numpy() - alpha).max() < 1e-9
    assert np.abs(out.depth.numpy() - depth).max() < 1e-7


def ortho_camera() -> Camera:
    """Orthographic: 40 and 32 pixels per metre, off-centre, a near plane behind the camera."""
    base = odd_camera()
    K = np.array([[40.0, 0.0, 29.1], [0.0, 32.0, 24.2], [0.0, 0.0, 1.0]])
    return Camera(world_to_camera=base.world_to_camera, K=K, width=61, height=47, near=-2.0, far=6.0, model="ortho")


def test_orthographic_camera_matches_the_brute_force_reference():
    cam = ortho_camera()
    rng = np.random.default_rng(4)
    n = 160
    pc = np.stack([(rng.uniform(-5, 66, n) - 29.1) / 40.0, (rng.uniform(-5, 52, n) - 24.2) / 32.0,
                   rng.uniform(-3.0, 7.0, n)], 1)  # some before near (-2) and past far (6)
    c2w = np.linalg.inv(np.asarray(cam.world_to_camera))
    g = make_set(pc @ c2w[:3, :3].T + c2w[:3, 3], quats=rng.normal(size=(n, 4)),
                 scales=np.exp(rng.uniform(np.log(0.01), np.log(0.12), (n, 3))), opacities=rng.uniform(0.05, 0.98, n),
                 colors=rng.uniform(0, 1, (n, 3)), dtype=torch.float64)
    rgb, alpha, depth = brute_force(g, cam, [0.2, 0.4, 0.1])
    out = rasterize(g, cam, backend="torch", background=torch.tensor([0.2, 0.4, 0.1], dtype=torch.float64))
    assert alpha.max() > 0.9 and (depth[alpha > 0.5] < 0).any(), "the scene covers pixels, some behind the camera"
    assert np.abs(out.rgb.numpy() - rgb).max() < 1e-9
    assert np.abs(out.alpha.numpy() - alpha).max() < 1e-9
    assert np.abs(out.depth.numpy() - depth).max() < 1e-7


def test_orthographic_projection_ignores_depth():
    cam = ortho_camera()
    c2w = np.linalg.inv(np.asarray(cam.world_to_camera))
    pts = np.array([[0.25, -0.5, d] for d in (-1.0, 0.5, 4.0)]) @ c2w[:3, :3].T + c2w[:3, 3]
    uv, z = cam.project(pts)
    np.testing.assert_allclose(uv, [[29.1 + 10.0, 24.2 - 16.0]] * 3, atol=1e-9)
    np.testing.assert_allclose(z, [-1.0, 0.5, 4.0], atol=1e-9)
    single = make_set(pts[1:2], scales=0.1, opacities=0.99)
    a = rasterize(single, cam, backend="torch").alpha[..., 0].numpy()
    assert np.unravel_index(a.argmax(), a.shape) == (8, 39), "the Gaussian lands on pixel (39, 8)"
    with pytest.raises(RenderError, match="model"):
        Camera(cam.world_to_camera, cam.K, 8, 8, model="fisheye").validate()
    with pytest.raises(RenderError, match="near < far"):
        Camera(cam.world_to_camera, cam.K, 8, 8, near=1.0, far=-1.0, model="ortho").validate()


def test_float32_close_to_float64_reference():
    cam = odd_camera()
    g = random_scene(300, cam, seed=5)
    rgb, alpha, depth = brute_force(g, cam)
    out = rasterize(g.to(dtype=torch.float32), cam, backend="torch")
    assert out.rgb.dtype == torch.float32
    assert np.abs(out.rgb.numpy() - rgb).mean() < 1e-5
    assert np.abs(out.alpha.numpy() - alpha).max() < 1e-2  # rare threshold flips at 1/255
    assert np.abs(out.alpha.numpy() - alpha).mean() < 1e-5


# --------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------


def _grad_scene():
    cam = Camera(
        world_to_camera=np.eye(4),
        K=np.array([[30.0, 0, 12.2], [0, 28.0, 9.7], [0, 0, 1]]),
        width=24,
        height=20,
    )
    rng = np.random.default_rng(7)
    n = 6
    means = np.stack([unproject(cam, u, v, z) for u, v, z in zip(
        rng.uniform(4, 20, n), rng.uniform(4, 16, n), rng.uniform(1.5, 3.0, n))])
    t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    g = GaussianSet(
        means=t(means),
        quats=t(rng.normal(size=(n, 4))),
        scales=t(rng.uniform(0.05, 0.2, (n, 3))),
        opacities=t(rng.uniform(0.3, 0.9, n)),
        colors=t(rng.uniform(0, 1, (n, 3))),
    )
    return g, cam


def test_gradients_reach_every_gaussian_parameter():
    g, cam = _grad_scene()
    out = rasterize(g, cam, backend="torch")
    (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    for name in ("means", "quats", "scales", "opacities", "colors"):
        grad = getattr(g, name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
        assert float(grad.abs().sum()) > 0, name


def test_backward_works_when_everything_is_culled():
    g, cam = _grad_scene()
    g.means.data[:, 2] = -1.0  # all behind the camera
    out = rasterize(g, cam, backend="torch")
    (out.rgb.sum() + out.alpha.sum()).backward()
    assert float(g.means.grad.abs().sum()) == 0.0 and float(g.colors.grad.abs().sum()) == 0.0


def test_gradients_agree_with_finite_differences():
    g, cam = _grad_scene()
    rng = np.random.default_rng(11)
    w_rgb = torch.tensor(rng.normal(size=(20, 24, 3)))
    w_a = torch.tensor(rng.normal(size=(20, 24, 1)))
    w_d = torch.tensor(rng.normal(size=(20, 24, 1)))
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)

    def loss(means, quats, scales, opacities, colors):
        o = rasterize(GaussianSet(means, quats, scales, opacities, colors), cam, backend="torch", background=bg)
        return (o.rgb * w_rgb).sum() + (o.alpha * w_a).sum() + 0.1 * (o.depth * w_d).sum()

    inputs = (g.means, g.quats, g.scales, g.opacities, g.colors)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


# --------------------------------------------------------------------------------------
# dispatch, validation, types
# --------------------------------------------------------------------------------------


def test_available_backends_and_auto_on_cpu():
    backs = available_backends()
    assert "torch" in backs and backs[-1] == "torch"
    if not torch.cuda.is_available():
        assert backs == ["torch"]
    cam = odd_camera()
    g = random_scene(50, cam, seed=1, dtype=torch.float32)
    a = rasterize(g, cam)  # auto on CPU tensors -> torch
    b = rasterize(g, cam, backend="torch")
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha)


def test_bad_requests_raise_render_error():
    cam = Camera.look_at((0, 0, 3), (0, 0, 0), width=16, height=16)
    g = make_set([[0, 0, 0]])
    with pytest.raises(RenderError, match="unknown rasterizer backend"):
        rasterize(g, cam, backend="vulkan")
    with pytest.raises(RenderError, match="gsplat"):
        rasterize(g, cam, backend="gsplat")  # CPU tensors
    bad = GaussianSet(g.means, g.quats[:, :3], g.scales, g.opacities, g.colors)
    with pytest.raises(RenderError, match="quats"):
        rasterize(bad, cam)
    short = GaussianSet(g.means, g.quats, g.scales, torch.zeros(2), g.colors)
    with pytest.raises(RenderError, match="opacities"):
        rasterize(short, cam)
    nan = make_set([[0, float("nan"), 0]])
    with pytest.raises(RenderError, match="NaN"):
        rasterize(nan, cam)
    with pytest.raises(RenderError, match="near"):
        rasterize(g, Camera(np.eye(4), np.eye(3) * 10, 16, 16, near=0.0))
    with pytest.raises(RenderError, match="4x4"):
        rasterize(g, Camera(np.eye(3), np.eye(3), 16, 16))
    with pytest.raises(RenderError, match="background"):
        rasterize(g, cam, background=torch.zeros(4))


def test_camera_given_as_tensors_and_gaussian_set_helpers():
    cam_np = odd_camera()
    cam_t = Camera(torch.tensor(np.asarray(cam_np.world_to_camera)), torch.tensor(np.asarray(cam_np.K)), 61, 47)
    g = random_scene(40, cam_np, seed=2)
    a = rasterize(g, cam_np, backend="torch")
    b = rasterize(g, cam_t, backend="torch")
    assert torch.equal(a.rgb, b.rgb)
    both = GaussianSet.concat([g, g[:10]])
    assert len(both) == 50 and torch.equal(both.means[40:], g.means[:10])
    assert both.to(dtype=torch.float32).means.dtype == torch.float32
    assert len(GaussianSet.empty()) == 0
    with pytest.raises(ValueError):
        GaussianSet.concat([])


def test_rasterize_views_renders_each_set_through_its_camera_with_separate_gradients():
    from backend.render import rasterize_views

    cams = [odd_camera(), Camera.look_at((0.3, 0.2, -2.0), (0.0, 0.0, 1.0), fov_y_deg=50, width=61, height=47)]
    base = random_scene(60, cams[0], seed=3, dtype=torch.float32)
    means = [base.means.clone().requires_grad_(True) for _ in cams]
    sets = [GaussianSet(m, base.quats, base.scales, base.opacities, base.colors) for m in means]
    bgs = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    out = rasterize_views(sets, cams, backgrounds=bgs)
    assert out.rgb.shape == (2, 47, 61, 3) and out.alpha.shape == (2, 47, 61, 1)
    for i, cam in enumerate(cams):
        one = rasterize(sets[i], cam, background=bgs[i])
        assert torch.allclose(out.rgb[i], one.rgb) and torch.allclose(out.depth[i], one.depth)
    out.rgb[1].sum().backward()
    assert means[0].grad is None or not means[0].grad.any()
    assert means[1].grad.abs().sum() > 0
    with pytest.raises(RenderError, match="one Gaussian set per camera"):
        rasterize_views(sets[:1], cams)
    with pytest.raises(RenderError, match="one size"):
        rasterize_views(sets, [cams[0], Camera.look_at((0, 0, -2), (0, 0, 0), width=32, height=32)])
    with pytest.raises(RenderError, match=r"backgrounds must be \(2, 3\)"):
        rasterize_views(sets, cams, backgrounds=torch.zeros(3))
