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
