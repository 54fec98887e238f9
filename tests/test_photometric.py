"""Photometric guidance in the real trainer (the capacity benchmark's stand-in for SDS), and the
per-stage render sizes it runs the paper recipe's NeRF stages at on the CPU."""

from __future__ import annotations

import dataclasses

import pytest

from backend.train import TrainConfig, Trainer
from backend.train.photometric import SDS_ELEMENTS, PhotometricGuidance


def _fast(**kw) -> TrainConfig:
    return TrainConfig(prompt="photometric", recipe="fast", num_gaussians=300, resolution=24, device="cpu", workers=0,
                       stage_steps={"canonical": 6, "posed": 2}, checkpoint_every=0, preview_every=0, log_every=0,
                       rasterizer="torch", **kw)


def test_the_guidance_fits_the_target_rendered_through_the_trainers_own_batch():
    trainer = Trainer(_fast())
    start = trainer.export_avatar()
    guidance = PhotometricGuidance(start).attach(trainer)
    assert trainer.sds is guidance
    same = float(trainer.train_step())   # the target is the avatar itself: nothing to fit
    assert guidance.batches.last is not None and guidance.batches.last.controls is None   # no skeleton images drawn
    assert 0 <= same < 1.0, same   # L1 < 1e-4 per pixel, x the 16,384 SDS latents of a view

    recoloured = dataclasses.replace(start, free=dataclasses.replace(start.free, colors=1 - start.free.colors),
                                     cache={})
    trainer = Trainer(_fast())
    PhotometricGuidance(recoloured).attach(trainer)
    def distance() -> float:
        return float((trainer.export_avatar().free.colors - recoloured.free.colors).abs().mean())

    before = distance()
    first = float(trainer.train_step())
    for _ in range(5):
        trainer.step_index += 1
        trainer.train_step()
    assert first > 100.0, first
    assert distance() < before - 0.005, (before, distance())
    trainer.close()


def test_views_are_summed_or_averaged_as_the_recipes_sds_reduces_them():
    assert PhotometricGuidance(None).attach(Trainer(_fast())).reduction == "mean"
    paper = TrainConfig(prompt="x", recipe="dreamwaltz-g", init="template", device="cpu", workers=0,
                        num_gaussians=200, stage_steps={"canonical": 1, "canonical-r": 1, "random-pose": 1})
    assert PhotometricGuidance(None).attach(Trainer(paper)).reduction == "sum"
    with pytest.raises(ValueError, match="reduction"):
        PhotometricGuidance(None, reduction="max")


def test_stage_resolutions_set_named_stages_render_sizes():
    config = TrainConfig(prompt="x", recipe="dreamwaltz-g", resolution=64,
                         stage_resolutions={"nerf-64": 16, "nerf-512": 64})
    sizes = {s.name: s.resolution for s in config.stages()}
    assert sizes == {"nerf-64": 16, "nerf-128": 128, "nerf-256": 256, "nerf-512": 64, "canonical": 64,
                     "canonical-r": 64, "random-pose": 64}
    assert TrainConfig.from_dict(config.to_dict()).stages() == config.stages()
    with pytest.raises(ValueError, match="stage_resolutions names posed: the stages of --recipe dreamwaltz-g"):
        TrainConfig(prompt="x", recipe="dreamwaltz-g", stage_resolutions={"posed": 64})
    with pytest.raises(ValueError, match="stage_resolutions must be whole numbers >= 16; got nerf-64=8"):
        TrainConfig(prompt="x", recipe="dreamwaltz-g", stage_resolutions={"nerf-64": 8})
