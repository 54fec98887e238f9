"""On a CUDA GPU: gsplat and the torch reference draw the same posed avatar.

Tolerance: mean absolute difference of RGB and alpha below 2e-3 and at most 0.5% of pixels off
by more than 0.05 (float32 kernels sum in different orders; silhouettes may differ by a pixel).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gsplat_and_reference_agree_on_a_posed_avatar():
    from backend.avatar import init_template_avatar, pose_with_params
    from backend.body import BodyModel
    from backend.dance import dance
    from backend.render import rasterize
    from backend.sequence import clip_cameras, frame_params

    body = BodyModel.load(device="cuda")
    avatar = init_template_avatar(body, 50_000, seed=0)
    motion = dance(seconds=1.0, num_expression=body.num_expression)
    cams = clip_cameras(avatar, motion, 640, 480, "orbit")
    for i in (5, 20):
        with torch.no_grad():
            g = pose_with_params(avatar, **frame_params(motion, i))
            a = rasterize(g, cams[i], backend="gsplat")
            b = rasterize(g, cams[i], backend="torch")
        for name in ("rgb", "alpha"):
            diff = (getattr(a, name) - getattr(b, name)).abs()
            assert diff.mean() < 2e-3, f"frame {i} {name}: mean diff {diff.mean():.2e}"
            assert (diff.amax(-1) > 0.05).float().mean() < 5e-3, f"frame {i} {name}: too many pixels differ"
        assert b.alpha.sum() > 1000, "the avatar is in view"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_posing_equals_eager_posing_and_survives_the_next_frame():
    from backend.avatar import init_template_avatar, pose_with_params
    from backend.body import BodyModel
    from backend.dance import dance
    from backend.sequence import frame_params

    body = BodyModel.load(device="cuda")
    avatar = init_template_avatar(body, 20_000, seed=0)
    motion = dance(seconds=1.0, num_expression=body.num_expression)
    with torch.no_grad():
        graphed = [pose_with_params(avatar, **frame_params(motion, i)) for i in (3, 9, 3)]
    assert avatar.cache.get("graphs"), "inference on CUDA replays a CUDA graph"
    with torch.enable_grad():
        eager = [pose_with_params(avatar, **frame_params(motion, i)) for i in (3, 9)]
    for g, e in zip(graphed, eager):
        torch.testing.assert_close(g.means, e.means.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(g.quats, e.quats.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(graphed[0].means, graphed[2].means)  # earlier results are not overwritten


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hybrid_avatar_posed_on_the_gpu_equals_the_cpu():
    """The CUDA graph with the deformation network in half precision against float32 on the CPU:
    within a tenth of a millimetre (the offsets are centimetres), colours and opacities as the
    field gives them."""
    import dataclasses

    from backend.avatar import init_template_avatar, pose_with_params
    from backend.avatar.hybrid import DeformationNetwork, DeformSpec, FieldSpec, HybridNetworks, ImplicitField
    from backend.body import BodyModel
    from backend.dance import dance
    from backend.sequence import frame_params

    body = BodyModel.load()
    plain = init_template_avatar(body, 30_000, seed=0)
    gpu_plain = init_template_avatar(BodyModel.load(device="cuda"), 30_000, seed=0)
    spec = FieldSpec()
    net = HybridNetworks(torch.eye(4).repeat(55, 1, 1), ImplicitField(spec, plain.free.means.mean(0), 1.2, seed=1),
                         DeformationNetwork(DeformSpec(features=spec.out_dim), seed=1))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.deformation.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        net.deformation.head.weight[:3] *= 40.0   # offsets of up to a centimetre (the first three outputs)
    cpu = dataclasses.replace(plain, networks=net, cache={})
    gpu = dataclasses.replace(gpu_plain, networks=net.to("cuda"), cache={})  # a copy on the GPU
    motion = dance(seconds=1.0, num_expression=body.num_expression)
    with torch.no_grad():
        for i in (4, 17, 4):
            a, b = pose_with_params(cpu, **frame_params(motion, i)), pose_with_params(gpu, **frame_params(motion, i))
            moved = (a.means - pose_with_params(plain, **frame_params(motion, i)).means).norm(dim=1)
            assert moved.max() > 5e-3, "the deformation moves Gaussians by millimetres at least"
            torch.testing.assert_close(b.means.cpu(), a.means, atol=1e-4, rtol=0)
            torch.testing.assert_close(b.scales.cpu(), a.scales, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(b.colors.cpu(), a.colors, atol=1e-5, rtol=0)
            torch.testing.assert_close(b.opacities.cpu(), a.opacities, atol=1e-5, rtol=0)
    assert gpu.cache.get("graphs"), "posed through the CUDA graph"
