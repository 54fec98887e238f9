"""Avatar creation on the CPU with tiny random-weight diffusion models: stages, sampling, the
appearance field, densification, checkpoints, the CLI and the job adapter."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backend.train import TrainConfig, Trainer, TrainingCancelled, TrainingError, parse_duration, run_training
from backend.train.appearance import ColorField, HashGridConfig, HashGridEncoding, tcnn_available
from backend.train.cameras import CameraConfig, CameraSampler, View, front_camera
from backend.train.poses import LIMITS, PoseConfig, PoseSampler
from backend.train.stages import Schedule
from backend.train.strategy import DensifyConfig, DensifyStrategy, ParamEditor

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tiny_dir, **kw) -> TrainConfig:
    base = dict(prompt="a chef dressed in white", steps=8, num_gaussians=1500, views=1, resolution=48,
                sd_model=str(tiny_dir / "stable-diffusion"), controlnet=str(tiny_dir / "controlnet"),
                checkpoint_every=0, preview_every=0, progress_every=0.0,
                densify={"every": 2, "start": 0.2, "stop": 0.9},
                hashgrid={"levels": 6, "log2_table": 12, "finest_resolution": 256})
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------------------------
# configuration and schedule
# ----------------------------------------------------------------------------------------------

def test_config_round_trip_presets_and_durations():
    c = TrainConfig(prompt="x", preset="draft", sds={"guidance_scale": 20.0}, densify={"every": 50})
    assert c.total_steps == 1200 and c.initial_gaussians == 60_000
    again = TrainConfig.from_dict(c.to_dict())
    assert again == c and again.sds.guidance_scale == 20.0 and again.densify.every == 50
    assert c.template_share == 0.0 and TrainConfig(prompt="x", appearance="hashgrid").template_share == 0.03
    assert c.skeleton.face is False and TrainConfig(prompt="x", expression=True).skeleton.face is True
    assert c.same_run_as(TrainConfig.from_dict(dict(c.to_dict(), device="cuda", time_budget=60))) == []
    assert c.same_run_as(TrainConfig.from_dict(dict(c.to_dict(), prompt="y"))) == ["prompt"]
    with pytest.raises(ValueError):
        TrainConfig(prompt="x", preset="ultra")
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"prompt": "x", "no_such_setting": 1})
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400 and parse_duration("45") == 45 and parse_duration(None) is None
    for bad in ("ten minutes", "-5", "5x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize("settings, named", [
    ({"steps": "3000"}, "'steps' must be an integer; got str"),
    ({"steps": 12.5}, "'steps' must be an integer; got float"),
    ({"views": True}, "'views' must be an integer; got bool"),
    ({"seed": None}, "'seed' must be an integer"),
    ({"time_budget": float("inf")}, "'time_budget' must be a finite number; got inf"),
    ({"canonical_fraction": float("nan")}, "'canonical_fraction' must be a finite number; got nan"),
    ({"betas": [0.5, float("nan")]}, "'betas' item 1 must be a finite number"),
    ({"sds": {"guidance_scale": float("inf")}}, "'sds.guidance_scale' must be a finite number"),
    ({"sds": {"t_range_start": [0.1]}}, "'sds.t_range_start' must hold 2 values"),
    ({"sds": {"templates": {"front": 3}}}, "'sds.templates' entry 'front' must be a string"),
    ({"cameras": {"fov_deg": [30.0, "wide"]}}, "'cameras.fov_deg' item 1 must be a number"),
    ({"lr": {"means": None}}, "'lr.means' must be a number"),
    ({"densify": {"every": 1e300}}, "'densify.every' must be an integer"),
    ({"prompt": ["a", "list"]}, "'prompt' must be a string"),
])
def test_config_refuses_non_finite_and_wrongly_typed_settings(settings, named):
    """Each bad setting is refused where it is made (a JSON request, a command line, a resumed
    run's config.json), by its dotted name; through from_dict and the constructor alike."""
    with pytest.raises(ValueError) as exc:
        TrainConfig.from_dict(dict(settings, prompt=settings.get("prompt", "x")))
    assert named in str(exc.value)
    with pytest.raises(ValueError) as exc:
        TrainConfig(**dict(settings, prompt=settings.get("prompt", "x")))
    assert named in str(exc.value)


def test_config_accepts_what_json_round_trips():
    """Tuples arrive as lists and integral numbers where floats are declared: both are fine."""
    c = TrainConfig.from_dict({"prompt": "x", "sds": {"guidance_scale": 7, "t_range_start": [0.1, 0.9]},
                               "cameras": {"fov_deg": (30, 40.0)}, "time_budget": 60})
    assert c.sds.guidance_scale == 7 and c.time_budget == 60
    assert TrainConfig.from_dict(__import__("json").loads(c.to_json())) == TrainConfig.from_dict(c.to_dict())


def test_schedule_stages_and_time_budget_shortening():
    s = Schedule.create(TrainConfig(prompt="x", steps=100, template_fraction=0.05).stages())
    assert s.names == ["template", "canonical", "posed"] and s.lengths == [5, 48, 47]
    assert [s.stage_at(i) for i in (0, 4, 5, 52, 53, 99)] == \
        ["template", "template", "canonical", "canonical", "posed", "posed"]
    assert s.sds_progress(5) == 0.0 and s.sds_progress(99) == 1.0
    s.shorten(45, current_step=25)  # the rest of the canonical stage and the posed stage shrink alike
    assert s.planned_total == 45 and s.lengths == [5, 27, 13]
    assert s.stage_at(24) == "canonical" and s.stage_at(31) == "canonical" and s.stage_at(44) == "posed"
    s.shorten(80, current_step=30)  # never lengthens
    assert s.planned_total == 45
    s.shorten(20, current_step=40)  # never ends before the current step, nor changes what is done
    assert s.planned_total == 40 and s.lengths[:2] == [5, 27]
    assert Schedule.create(TrainConfig(prompt="x", steps=10, canonical_fraction=1.0).stages()).stage_at(0) \
        == "canonical"


# ----------------------------------------------------------------------------------------------
# cameras and poses
# ----------------------------------------------------------------------------------------------

def test_cameras_frame_their_targets_and_label_views(body):
    out = body.forward()
    v, j, tr = out.vertices[0], out.joints[0], out.transforms[0]
    sampler = CameraSampler(CameraConfig(p_face=0.3, p_hands=0.2, target_jitter=0.0), 64, 64)
    rng = np.random.default_rng(0)
    kinds = {"body": 0, "face": 0, "hands": 0}
    for _ in range(200):
        view = sampler.sample(rng, v, j, tr)
        kinds[view.kind] += 1
        assert view.view in ("front", "side", "back", "overhead")
        if view.kind == "face":
            assert abs(view.azimuth) <= 75.0 and view.view in ("front", "side")
    assert 40 < kinds["face"] < 80 and 20 < kinds["hands"] < 60
    # a full-body view sees the whole body inside the image
    view = sampler.sample(np.random.default_rng(1), v, j, tr, kind="body")
    uv, z = view.camera.project(v)
    assert (z > 0).all() and (uv >= 0).all() and (uv <= 64).all()
    # azimuth 180 from the facing direction is a back view: the camera is behind (-Z)
    back = [sampler.sample(np.random.default_rng(s), v, j, tr, kind="body") for s in range(40)]
    for b in back:
        if b.view == "back":
            assert b.camera.position[2] < 0
        if b.view == "front":
            assert b.camera.position[2] > 0


def test_pose_sampler_is_deterministic_and_within_limits(body):
    sampler = PoseSampler(PoseConfig(library="dance", library_prob=0.5), body.num_expression, expression=True)
    a = [sampler.sample(np.random.default_rng(7), "random") for _ in range(2)]
    assert all(np.array_equal(a[0][k], a[1][k]) for k in a[0])
    rng = np.random.default_rng(0)
    for _ in range(30):
        p = sampler.sample(rng, "random")
        pose = p["body_pose"].reshape(21, 3)
        assert np.isfinite(pose).all()
        assert p["expression"].shape == (1, body.num_expression) and p["jaw_pose"].shape == (1, 3)
        out = body.forward(**{k: torch.as_tensor(v) for k, v in p.items()})
        assert torch.isfinite(out.vertices).all()
    limits = sampler.from_limits(np.random.default_rng(3))["body_pose"].reshape(21, 3)
    assert (limits >= LIMITS[..., 0] - 1e-6).all() and (limits <= LIMITS[..., 1] + 1e-6).all()
    canonical = sampler.sample(np.random.default_rng(0), "canonical")
    assert "expression" not in canonical  # expressions only in the random-pose stage
    assert sampler.canonical()["body_pose"].reshape(21, 3)[15, 2] < -0.5  # A-pose: left arm lowered


# ----------------------------------------------------------------------------------------------
# appearance field and densification
# ----------------------------------------------------------------------------------------------

def test_hash_grid_field_is_smooth_local_and_trainable():
    cfg = HashGridConfig(levels=6, features=2, log2_table=10, base_resolution=4, finest_resolution=128, backend="torch")
    enc = HashGridEncoding(cfg)
    assert bool(enc.dense[0]) and not bool(enc.dense[-1])  # coarse levels dense, fine ones hashed
    x = torch.rand(100, 3)
    assert enc(x).shape == (100, 12)
    field = ColorField(cfg, torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert field.backend == "torch"
    pts = torch.rand(64, 3) * 1.6 - 0.8
    target = torch.rand(64, 3)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = ((field(pts) - target) ** 2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        assert field.encoding.embeddings.grad.abs().sum() > 0
        opt.step()
    assert float(loss.detach()) < 0.3 * first
    c = field(pts)
    assert ((c > 0) & (c < 1)).all()
    # continuity: a tiny move changes the colour a little
    assert (field(pts + 1e-4) - c).abs().max() < 0.05


@pytest.mark.skipif(not tcnn_available(), reason="tiny-cuda-nn is not installed (or no CUDA GPU)")
def test_tcnn_hash_grid_field():  # pragma: no cover - runs where tinycudann is installed
    cfg = HashGridConfig(levels=8, log2_table=14, backend="tcnn")
    field = ColorField(cfg, torch.zeros(3) - 1, torch.ones(3), device="cuda")
    pts = torch.rand(256, 3, device="cuda")
    out = field(pts)
    out.sum().backward()
    assert out.shape == (256, 3) and any(p.grad is not None for p in field.parameters())


def _strategy_fixture(n=10):
    params = {"free.means": torch.nn.Parameter(torch.randn(n, 3) * 0.1),
              "free.quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
              "free.log_scales": torch.nn.Parameter(torch.full((n, 3), math.log(0.005))),
              "free.opacity_logits": torch.nn.Parameter(torch.full((n,), 2.0)),
              "free.color_logits": torch.nn.Parameter(torch.zeros(n, 3))}
    buffers = {"free.skin_joints": torch.arange(n)[:, None].repeat(1, 4), "free.skin_weights": torch.rand(n, 4)}
    opt = torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k} for k, p in params.items()])
    for p in params.values():
        p.grad = torch.ones_like(p)
    opt.step()
    return params, buffers, opt


def test_densification_duplicates_splits_prunes_and_keeps_adam_aligned():
    params, buffers, opt = _strategy_fixture()
    with torch.no_grad():
        params["free.log_scales"][5:7] = math.log(0.05)      # large: split
        params["free.opacity_logits"][9] = -8.0              # transparent: pruned
    editor = ParamEditor(params, buffers, opt)
    strat = DensifyStrategy(DensifyConfig(every=1, start=0.0, stop=1.0, grow_grad2d=0.1, max_growth=1.0), 1.0)
    cam = front_camera(torch.randn(50, 3), 64, 64)
    grads = torch.zeros(10, 3)
    grads[[0, 1, 5, 6]] = 1.0                                # high screen-space gradient
    strat.accumulate([grads], [params["free.means"].detach()], [cam])
    rep = strat.refine(0, 10, editor, torch.Generator().manual_seed(0))
    assert (rep.duplicated, rep.split, rep.pruned) == (2, 2, 1)
    n = 10 - 2 - 1 + 2 + 2 * 2  # originals of splits and the pruned one go; copies and children come
    for name, p in params.items():
        assert p.shape[0] == n
        state = opt.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
    assert all(g["params"][0] is params[g["name"]] for g in opt.param_groups)
    assert buffers["free.skin_joints"].shape[0] == n
    # new rows start with zero moments; split children are smaller
    assert opt.state[params["free.means"]]["exp_avg"][-6:].abs().sum() == 0
    assert opt.state[params["free.means"]]["exp_avg"][:-6].abs().min() > 0
    assert torch.allclose(params["free.log_scales"][-1], torch.full((3,), math.log(0.05 / 1.6)))
    # growth is capped
    params, buffers, opt = _strategy_fixture()
    editor = ParamEditor(params, buffers, opt)
    strat = DensifyStrategy(DensifyConfig(every=1, start=0.0, stop=1.0, grow_grad2d=0.0, max_growth=0.2), 1.0)
    strat.accumulate([torch.ones(10, 3)], [params["free.means"].detach()], [cam])
    rep = strat.refine(0, 10, editor, torch.Generator().manual_seed(0))
    assert rep.duplicated + rep.split == 2


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("appearance", ["colors", "hashgrid"])
def test_sds_gradients_reach_every_learnable_tensor(tiny_dir, models, appearance):
    config = tiny_config(tiny_dir, appearance=appearance, template_fraction=0.0, expression=True,
                         densify={"enabled": True, "every": 1000})
    trainer = Trainer(config, None, models=models)
    trainer.ensure_guidance()
    assert trainer.sds is not None and trainer.schedule.stage_at(0) == "canonical"
    assert len(trainer.params["bound.offsets"]) > 0  # hands and (with expression) the face are mesh-bound
    grads = {}
    step = trainer.optimizer.step

    def capture(*a, **kw):
        for name, t in trainer.learnable_tensors().items():
            grads[name] = None if t.grad is None else t.grad.detach().clone()
        return step(*a, **kw)

    trainer.optimizer.step = capture
    trainer.config.views = 2
    trainer.train_step()
    expected = {"free.means", "free.quats", "free.log_scales", "free.opacity_logits", "bound.offsets",
                "bound.quats", "bound.log_scales", "bound.opacity_logits"}
    expected |= {"free.color_logits", "bound.color_logits"} if appearance == "colors" else \
        {"field.encoding.embeddings", "field.mlp.0.weight", "field.mlp.0.bias", "field.mlp.2.weight", "field.mlp.2.bias"}
    assert expected <= set(grads)
    for name, g in grads.items():
        assert g is not None, f"no gradient for {name}"
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"zero gradient for {name}"


def test_fixed_image_target_makes_the_photometric_loss_fall(tiny_dir, body):
    config = tiny_config(tiny_dir, steps=40, template_fraction=0.0, canonical_fraction=1.0, resolution=40,
                         poses={"perturb_prob": 0.0}, densify={"enabled": False}, background="white",
                         lr={"colors": 0.1, "means": 1e-3})
    probe = Trainer(config, None, guidance=lambda *a, **k: None)
    canonical = probe.pose_body(probe.poses.canonical())
    cams = [front_camera(canonical["vertices"], 40, 40)]
    cams.append(type(cams[0])(**{**cams[0].__dict__}))
    cams[1].world_to_camera = cams[1].world_to_camera @ np.diag([-1.0, 1.0, -1.0, 1.0])  # the back view
    views = [View(c, "body", "front", 0.0, 0.0) for c in cams]
    # the target: the same body, coloured red
    from backend.avatar import pose_with_transforms
    from backend.render import rasterize

    target_avatar = probe.export_avatar()
    target_avatar.free.colors[:] = torch.tensor([0.9, 0.1, 0.1])
    target_avatar.bound.colors[:] = torch.tensor([0.9, 0.1, 0.1])
    with torch.no_grad():
        gs = pose_with_transforms(target_avatar, canonical["transforms"], None, canonical["rotations"])
        targets = torch.stack([rasterize(gs, v.camera, background=torch.ones(3)).rgb.permute(2, 0, 1) for v in views])
    losses = []

    def photometric(images, controls, prompts, progress, generator, timer):
        assert controls.shape == images.shape  # the skeleton is drawn for every view
        loss = ((images - targets) ** 2).mean()
        losses.append(float(loss.detach()))
        return loss, {}

    trainer = Trainer(config, None, guidance=photometric, fixed_views=views)
    for _ in range(config.total_steps):
        trainer.train_step()
        trainer.step_index += 1
    assert losses[-1] < 0.25 * losses[0], losses[::8]


def test_cli_end_to_end_makes_a_loadable_avatar(tiny_dir, tmp_path, capsys):
    from backend.avatar import load_avatar, pose_with_params, read_meta
    from backend.cli.train_cmd import main
    from backend.render import rasterize

    out = tmp_path / "run"
    code = main(["--prompt", "a chef dressed in white", "--out", str(out), "--sd-model", str(tiny_dir / "stable-diffusion"),
                 "--controlnet", str(tiny_dir / "controlnet"), "--steps", "6", "--views", "1", "--resolution", "48",
                 "--num-gaussians", "1500", "--expression", "--seed", "3", "--preview-every", "3"])
    assert code == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder == out / "avatar"
    meta = read_meta(folder)
    assert meta["prompt"] == "a chef dressed in white" and meta["seed"] == 3
    assert meta["provenance"]["made_by"] == "backend train" and meta["provenance"]["iterations"] == 6
    assert meta["settings"]["expression"] is True
    avatar = load_avatar(folder)
    img = rasterize(pose_with_params(avatar), front_camera(avatar.free.means, 32, 32))
    assert img.alpha.max() > 0.5
    assert (out / "previews" / "latest.png").exists() and (out / "train.json").exists()
    assert (out / "checkpoints" / "last.pt").exists()
    assert not list(out.rglob("*.tmp"))
    # a second run into the same folder is refused; resuming a finished run returns its avatar
    assert main(["--prompt", "a chef dressed in white", "--out", str(out), "--sd-model", "x", "--controlnet", "y"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["--out", str(out), "--resume"]) == 0
    # resuming with another prompt is refused
    assert main(["--out", str(out), "--resume", "--prompt", "a knight"]) == 1
    assert "prompt" in capsys.readouterr().err


def test_cli_tiny_encoder_path_trains_and_reports_a_missing_encoder(tiny_dir, tmp_path, capsys):
    from backend.cli.train_cmd import main

    common = ["--prompt", "a chef", "--sd-model", str(tiny_dir / "stable-diffusion"), "--controlnet",
              str(tiny_dir / "controlnet"), "--steps", "3", "--views", "2", "--resolution", "48", "--num-gaussians", "1200"]
    assert main(common + ["--out", str(tmp_path / "fast"), "--tiny-encoder", str(tiny_dir / "taesd")]) == 0
    saved = TrainConfig.from_dict(__import__("json").loads((tmp_path / "fast" / "config.json").read_text()))
    assert saved.sds.encoder == "tiny" and saved.tiny_encoder == str(tiny_dir / "taesd")
    assert (tmp_path / "fast" / "avatar" / "gaussians.safetensors").exists()
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "none"), "--tiny-encoder", str(tmp_path / "no-taesd")]) == 1
    err = capsys.readouterr().err
    assert "no-taesd" in err and "madebyollin/taesd" in err


def test_cancel_and_resume_equal_one_run(tiny_dir, models, tmp_path):
    config = tiny_config(tiny_dir, steps=9, views=2, checkpoint_every=4,
                         densify={"every": 2, "start": 0.1, "stop": 0.9, "max_growth": 0.5})
    whole = run_training(config, tmp_path / "whole", models=models)
    calls = {"n": 0}

    def cancel_after_five():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(TrainingCancelled) as err:
        run_training(config, tmp_path / "parts", should_cancel=cancel_after_five, models=models)
    assert err.value.step == 5 and err.value.checkpoint.exists()
    assert not (tmp_path / "parts" / "avatar").exists()
    # what a SIGKILL in the middle of writes leaves: a half checkpoint and a half avatar folder
    stale = [err.value.checkpoint.with_name(f".{err.value.checkpoint.name}.k3j2s9ab.pt.tmp"),
             tmp_path / "parts" / ".avatar.q1w2e3r4.tmp"]
    stale[0].write_bytes(b"half a checkpoint")
    stale[1].mkdir()
    resumed = run_training(config, tmp_path / "parts", resume=True, models=models)
    assert not any(p.exists() for p in stale)
    a = load_file(str(whole / "gaussians.safetensors"))
    b = load_file(str(resumed / "gaussians.safetensors"))
    assert set(a) == set(b)
    assert a["free.means"].shape[0] > 1500 - len(a["bound.faces"]) + 10  # densification happened
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_batch_workers_train_the_same_avatar_as_the_training_process(tiny_dir, models, tmp_path):
    """Batches made ahead in worker processes are the batches the run would make itself."""
    config = tiny_config(tiny_dir, steps=6, views=2, workers=0)
    inline = run_training(config, tmp_path / "inline", models=models)
    ahead = run_training(TrainConfig.from_dict(dict(config.to_dict(), workers=2)), tmp_path / "ahead", models=models)
    a = load_file(str(inline / "gaussians.safetensors"))
    b = load_file(str(ahead / "gaussians.safetensors"))
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key


def test_batch_source_remakes_batches_when_the_schedule_changes(tiny_dir, body):
    from backend.train.batches import BatchMaker, BatchSource

    config = tiny_config(tiny_dir, views=2, resolution=64)
    maker = BatchMaker(config, body, torch.zeros(10))
    plan = {"switch": 100}
    source = BatchSource(maker, lambda step: "canonical" if step < plan["switch"] else "posed",
                         lambda stage: stage != "template", torch.device("cpu"), workers=2, depth=4)
    try:
        first = source.get(0)   # steps 0-3 are now being made as canonical-stage batches
        plan["switch"] = 2      # a time budget shortened the run: steps 2+ are random-pose ones
        for step in range(1, 5):
            got, want = source.get(step), maker.make(step, "canonical" if step < 2 else "posed")
            assert got.stage == want.stage and got.step == step
            assert torch.allclose(got.transforms, want.transforms, atol=1e-5)
            assert torch.equal(got.backgrounds, want.backgrounds)
            same = (got.controls == want.controls).all(-1).float().mean()
            assert same > 0.999 and got.controls.any()
            for u, v in zip(got.views, want.views):
                assert np.allclose(u.camera.world_to_camera, v.camera.world_to_camera, atol=1e-6)
        assert first.stage == "canonical"
        began = time.monotonic()
        source.close()   # with batches still queued and unread: cancelling a run must be quick
        assert time.monotonic() - began < 4.0
    finally:
        source.close()
    assert not source._procs


def test_dead_batch_workers_leave_the_run_going_with_the_same_batches(tiny_dir, body, caplog):
    from backend.train.batches import BatchMaker, BatchSource

    maker = BatchMaker(tiny_config(tiny_dir, views=1, resolution=32), body, torch.zeros(10))
    source = BatchSource(maker, lambda step: "posed", lambda stage: True, torch.device("cpu"), workers=2, depth=2)
    source.get(0)
    for proc in source._procs:
        proc.kill()
        proc.join()
    got = [source.get(step) for step in range(1, 8)]
    assert source.workers == 0 and not source._procs
    assert "workers exited" in caplog.text
    for batch in got:
        want = maker.make(batch.step, "posed")
        assert torch.allclose(batch.transforms, want.transforms, atol=1e-5)
        assert torch.equal(batch.backgrounds, want.backgrounds)


def test_resume_checks_the_settings(tiny_dir, tmp_path, models):
    config = tiny_config(tiny_dir, steps=3)
    with pytest.raises(TrainingCancelled):
        run_training(config, tmp_path / "r", should_cancel=lambda: True, models=models)
    other = tiny_config(tiny_dir, steps=3, seed=5)
    with pytest.raises(TrainingError, match="seed"):
        run_training(other, tmp_path / "r", resume=True, models=models)
    with pytest.raises(TrainingError, match="already holds"):
        run_training(config, tmp_path / "r", models=models)


@pytest.mark.parametrize("recipe", ["fast", "dreamwaltz-g"])
def test_time_budget_stops_the_run_and_saves_the_avatar(recipe, tiny_dir, tmp_path, models):
    extra = {"recipe": "dreamwaltz-g", "init": "template"} if recipe == "dreamwaltz-g" else {}
    config = tiny_config(tiny_dir, steps=10_000, time_budget=6.0, **extra)
    t0 = time.perf_counter()
    folder = run_training(config, tmp_path / "budget", models=models)
    assert 5.0 < time.perf_counter() - t0 < 30
    from backend.avatar import read_meta

    meta = read_meta(folder)
    assert 0 < meta["provenance"]["iterations"] < 10_000
    assert meta["provenance"]["planned_iterations"] == meta["provenance"]["iterations"]


def test_train_job_through_the_server_protocol(tiny_dir, tmp_path, models, monkeypatch):
    jobs = pytest.importorskip("backend.server.jobs")
    from backend.train import job as train_job

    monkeypatch.setattr(train_job, "cached_models", lambda config: models)
    params = {"prompt": "a chef", "out": str(tmp_path / "job"), "steps": 5, "num_gaussians": 1500, "views": 1,
              "resolution": 48, "preview_every": 2, "progress_every": 0.0}
    with pytest.raises(jobs.JobParamError):
        train_job.make_train_job({"prompt": "x"}, None)
    with pytest.raises(jobs.JobParamError):
        train_job.make_train_job({"out": "x", "steps": -1, "prompt": "x"}, None)

    class Ctx:
        def __init__(self, cancel_at=None):
            self.events, self.cancel_at = [], cancel_at

        def progress(self, stage, step, total, loss=None, preview=None, **extra):
            self.events.append((stage, step, total, loss, preview))

        @property
        def cancelled(self):
            return self.cancel_at is not None and len(self.events) >= self.cancel_at

    ctx = Ctx(cancel_at=3)
    with pytest.raises(jobs.JobCancelled) as err:
        train_job.make_train_job(params, None)(ctx)
    assert err.value.result["resumable"] and Path(err.value.result["checkpoint"]).exists()
    ctx = Ctx()
    result = train_job.make_train_job(dict(params, resume=True, prompt=None), None)(ctx)
    assert Path(result["avatar"]).is_dir()
    assert ctx.events[-1][1] == ctx.events[-1][2] == 5
    assert any(e[4] and e[4].endswith("latest.png") for e in ctx.events)
    assert ctx.events[0][:3] == ("loading models", 0, 0)  # the models are local folders: nothing to download
    assert all(e[0] in ("template", "canonical", "posed") for e in ctx.events[1:])


def test_train_job_in_the_real_backend_process_with_batch_workers(tiny_dir, tmp_path):
    """The add-on's path: a train job in `python -m backend serve`, whose batch workers are
    processes spawned from the server."""
    from dreamwaltz_blender import client as C

    c = C.BackendClient(log_path=None)
    try:
        job = c.job_start("train", prompt="a chef", out=str(tmp_path / "run"), steps=4, views=2, resolution=48,
                          num_gaussians=1200, workers=2, sd_model=str(tiny_dir / "stable-diffusion"),
                          controlnet=str(tiny_dir / "controlnet"), checkpoint_every=0, preview_every=0)
        final = c.wait_job(job, timeout=300)
    finally:
        c.close()
    assert final["event"] == "job_done", final
    assert Path(final["result"]["avatar"]).is_dir() and final["result"]["steps"] == 4


def test_sigint_saves_a_checkpoint_and_resume_finishes(tiny_dir, tmp_path):
    out = tmp_path / "sig"
    cmd = [sys.executable, "-m", "backend", "train", "--prompt", "a chef", "--out", str(out),
           "--sd-model", str(tiny_dir / "stable-diffusion"), "--controlnet", str(tiny_dir / "controlnet"),
           "--steps", "30", "--views", "1", "--resolution", "32", "--num-gaussians", "800", "--preview-every", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    preview = out / "previews" / "latest.png"
    deadline = time.time() + 120
    while not preview.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert preview.exists(), proc.stderr.read() if proc.poll() is not None else "no preview in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and (out / "checkpoints" / "last.pt").exists()
    assert not (out / "avatar").exists()
    done = subprocess.run([sys.executable, "-m", "backend", "train", "--out", str(out), "--resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]) == out / "avatar"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_short_run_on_cuda_with_gsplat(tiny_dir, tmp_path, dtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from backend.avatar import load_avatar

    config = tiny_config(tiny_dir, steps=12, views=4, resolution=64, device="cuda", dtype=dtype,
                         appearance="hashgrid", expression=True, checkpoint_every=5,
                         densify={"every": 3, "start": 0.1, "stop": 0.9})
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 6

    with pytest.raises(TrainingCancelled):
        run_training(config, tmp_path / "gpu", should_cancel=cancel)
    folder = run_training(config, tmp_path / "gpu", resume=True)
    avatar = load_avatar(folder, device="cuda")
    assert avatar.num_gaussians > 1500 and torch.isfinite(avatar.free.means).all()
