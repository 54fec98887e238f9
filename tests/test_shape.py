"""Shape editing: an avatar posed with betas other than the ones it was made with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.avatar import PoseError, pose_with_params, pose_with_transforms
from backend.avatar.posing import shape_state
from backend.render import Camera, rasterize

from .conftest import run_backend

TALL = [2.0] + [0.0] * 9
BROAD = [0.0, 2.5, 0.0, 0.0, 1.5] + [0.0] * 5


def _height(body, betas) -> float:
    v = body.shaped_vertices(torch.tensor(betas, dtype=torch.float32))
    return float(v[:, 1].max() - v[:, 1].min())


def _silhouette_height(g, px: int = 400) -> float:
    # A long lens from far away: nearly orthographic, so pixel height is proportional to size.
    cam = Camera.look_at([0.0, -0.1, 60.0], [0.0, -0.1, 0.0], (0.0, 1.0, 0.0), 2.4, px, px)
    alpha = rasterize(g, cam, backend="torch").alpha[..., 0]
    rows = torch.nonzero(alpha.amax(1) > 0.5)[:, 0]
    return float(rows.max() - rows.min() + 1)


def test_taller_shape_renders_taller_by_the_body_models_ratio(small_avatar, body):
    with torch.no_grad():
        base = _silhouette_height(pose_with_params(small_avatar))
        tall = _silhouette_height(pose_with_params(small_avatar, betas=TALL))
    expected = _height(body, TALL) / _height(body, [0.0] * 10)
    assert expected > 1.05
    assert tall / base == pytest.approx(expected, rel=0.03)


def _distance_to_surface(points: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points, surface).min(1).values


@pytest.mark.parametrize("betas", [TALL, BROAD])
def test_gaussians_follow_the_shaped_posed_body(small_avatar, body, betas):
    pose = dict(body_pose=np.random.default_rng(0).normal(0, 0.25, 63).astype(np.float32),
                global_orient=np.array([0.0, 0.6, 0.0], np.float32), transl=np.array([0.2, 0.0, 0.1], np.float32))
    with torch.no_grad():
        g = pose_with_params(small_avatar, betas=betas, **pose)
        out = body.forward(betas=torch.tensor(betas), **{k: v[None] for k, v in pose.items()})
        faces = torch.as_tensor(body.faces)
        surface = torch.cat([out.vertices[0], out.vertices[0][faces].mean(1)])
        d = _distance_to_surface(g.means, surface)
        # Without moving the free Gaussians with the surface they would float or sink:
        naive = pose_with_transforms(small_avatar, out.transforms[0])
        d_naive = _distance_to_surface(naive.means[: len(small_avatar.free)], surface)
    n_free = len(small_avatar.free)
    assert d[:n_free].quantile(0.99) < 0.025, "free Gaussians (clothes, hair) stay on the reshaped body"
    assert d[n_free:].max() < 0.02, "mesh-bound Gaussians sit on the reshaped surface"
    assert d_naive.quantile(0.99) > 2 * d[:n_free].quantile(0.99)


def test_shaped_skeleton_is_re_regressed(small_avatar, body):
    state = shape_state(small_avatar, TALL)
    np.testing.assert_allclose(state["joints"], body.rest_joints(torch.tensor(TALL)).double().numpy(), atol=1e-6)
    trained = shape_state(small_avatar, None)
    assert state["joints"][15, 1] > trained["joints"][15, 1] + 0.02


def test_trained_shape_is_the_default_and_zero_betas_match_it(small_avatar):
    a = pose_with_params(small_avatar)
    b = pose_with_params(small_avatar, betas=[0.0] * 10)
    torch.testing.assert_close(a.means, b.means, atol=1e-6, rtol=0)


@pytest.mark.parametrize("betas, message", [
    ([0.0] * 11, "11 betas given"),
    ([float("nan")] + [0.0] * 9, "NaN"),
    ([40.0] + [0.0] * 9, "within ±5"),
])
def test_bad_betas_are_refused(small_avatar, betas, message):
    with pytest.raises(PoseError, match=message):
        pose_with_params(small_avatar, betas=betas)


def test_render_and_export_commands_take_betas(tmp_path, avatar_dir):
    from backend.ply import read_ply

    rest = tmp_path / "rest.ply"
    tall = tmp_path / "tall.ply"
    run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(rest), check=True)
    run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(tall), "--betas", "2", check=True)
    h = lambda p: float(read_ply(p).means[:, 1].max() - read_ply(p).means[:, 1].min())  # noqa: E731
    assert h(tall) / h(rest) > 1.05
    proc = run_backend("render", "--avatar", str(avatar_dir), "--motion", "builtin:dance", "--out",
                       str(tmp_path / "f"), "--frames", "0:1", "--betas", "nan")
    assert proc.returncode == 1 and "NaN" in proc.stderr.strip().splitlines()[-1]
