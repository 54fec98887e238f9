"""The two recipes: --recipe dreamwaltz-g's settings against ../shared/METHOD.md's table, the
paper's SDS, camera and pose settings, VPoser, bad input, and both recipes end to end on the
CPU with tiny models, resumed across every stage boundary."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.train import TrainConfig, TrainingCancelled, TrainingError, run_training
from backend.train.cameras import CameraSampler
from backend.train.poses import BODY_INDEX, LIMITS, PoseSampler, canonical_body_pose, normal_prior
from backend.train.vposer import JOINTS, LATENT, VPoserDecoder, VPoserError

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT.parent / "shared" / "METHOD.md"


def dwg() -> TrainConfig:
    return TrainConfig(prompt="a chef", recipe="dreamwaltz-g")


# ----------------------------------------------------------------------------------------------
# METHOD.md's table, number by number
# ----------------------------------------------------------------------------------------------

SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
NUMBER = re.compile(r"(?<![A-Za-z0-9.])[−-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[−-]?\d+)?[⁰¹²³⁴⁵⁶⁷⁸⁹]*"
                    r"(?![A-Za-z\d])")


def numbers(text: str) -> Counter:
    """Every number in a table cell (10,000 -> 10000; 1.6e-4; 400³ -> 64e6; ±45° -> 45; a
    dash between two numbers is a range, not a sign; digits inside names such as fp16 or
    v1.1 are not numbers)."""
    out: Counter = Counter()
    for m in NUMBER.finditer(text.replace("–", " – ").replace("±", " ")):
        token = m.group(0).replace("−", "-").replace(",", "")
        sup = re.search(r"[⁰¹²³⁴⁵⁶⁷⁸⁹]+$", token)
        base = float(token[:sup.start()] if sup else token)
        value = base ** int(sup.group(0).translate(SUPERSCRIPT)) if sup else base
        out[round(abs(value), 9)] += 1
    return out


def method_rows(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(section, setting) -> (setting cell, original cell) of every table row in METHOD.md."""
    rows, section = {}, ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split(" (")[0].strip()
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 3 and cells[0] not in ("stage", "setting", "part") and not set(cells[0]) <= set("-: "):
            rows[(section, cells[0])] = (cells[0], cells[1])
    return rows


def expected_numbers(c: TrainConfig) -> dict[tuple[str, str], list[float] | str]:
    """Per METHOD.md row, the numbers --recipe dreamwaltz-g uses for it (from the config and the
    code it drives), or why the row's numbers are not a setting of this build."""
    from backend.avatar.hybrid import POSE_VALUES
    from backend.avatar.mesh_bound import OPAQUE, PER_TRIANGLE, SCALE_RANGE
    from backend.body.model import SMPLX_BETAS, SMPLX_EXPRESSIONS
    from backend.body.segmentation import HAND_LABELS
    from backend.guidance.models import CONTROLNET_HUB_IDS, SD_HUB_IDS
    from backend.train.batches import background_color
    from backend.train.skeleton import OPENPOSE_BODY, OPENPOSE_LEFT_HAND, OPENPOSE_RIGHT_HAND

    steps = {s.name: s for s in c.stages()}
    nerf_64_256 = [steps[n] for n in ("nerf-64", "nerf-128", "nerf-256")]
    assert "stable-diffusion-v1-5" in SD_HUB_IDS[0] and "v11p_sd15_openpose" in CONTROLNET_HUB_IDS[0]
    cam, pose, sds, lr = c.cameras, c.poses, c.sds, c.lr
    body_p = 1.0 - cam.p_face - cam.p_hands
    polar = sorted(90.0 - e for e in cam.elevation_deg)
    nerf = c.nerf
    assert c.hybrid.enabled and c.hybrid.paper_bound and c.hybrid.deform_poses == ("random", "prior")
    return {
        ("Schedule", "NeRF pretraining on the body"): [],
        ("Schedule", "I.1 canonical NeRF, progressive"):
            [sum(s.steps for s in nerf_64_256)] + [s.resolution for s in nerf_64_256],
        ("Schedule", "I.2 canonical NeRF, high resolution"): [steps["nerf-512"].steps, steps["nerf-512"].resolution],
        # 10⁵–10⁶ points: the converted field's count, an outcome (not a setting)
        ("Schedule", "NeRF → Gaussians"): [nerf.convert_resolution ** 3, 1e5, 1e6, 100 * nerf.prune_face,
                                           100 * nerf.prune_hands],
        ("Schedule", "II.1 3DGS canonical"): [steps["canonical"].steps],
        ("Schedule", "II.2 3DGS canonical-R"):
            [steps["canonical-r"].steps, *map(abs, pose.canonical_r_shoulder_deg[1:]), *pose.canonical_r_hip_deg],
        ("Schedule", "II.3 3DGS random pose"):
            [steps["random-pose"].steps, 100 * (1 - pose.canonical_r_prob), pose.hand_pca, 0, pose.hand_pca_sigma,
             0, pose.expression_sigma, SMPLX_EXPRESSIONS, 100 * pose.canonical_r_prob],
        ("Schedule", "densification"): [],
        ("Schedule", "wall time"): [],
        ("Guidance", "models"): [1.5],
        ("Guidance", "precision in the 3DGS stages"): [],
        ("Guidance", "guidance scale"): [sds.guidance_scale],
        ("Guidance", "weighting w(t)"): [1],
        ("Guidance", "timesteps"): list(sds.t_range_start),
        ("Guidance", "latent"): [],
        ("Guidance", "negative prompt"): [],
        ("Guidance", "view prompts"): [],
        ("Guidance", "gradient"): [c.views],
        ("Skeleton condition", "keypoints"): [len(OPENPOSE_BODY), 2, len(OPENPOSE_LEFT_HAND)],
        ("Skeleton condition", "face landmarks"): [],
        ("Skeleton condition", "occlusion"): [round(100 * c.skeleton.face_gap, 9), round(100 * c.skeleton.hand_gap, 9)],
        ("Cameras", "body views (p = 0.8)"):
            [round(body_p, 9), *polar, max(map(abs, cam.elevation_deg)), 0, 360, *cam.fov_deg, *cam.radius_m],
        ("Cameras", "face close-ups (p = 0.2)"):
            [cam.p_face, cam.face_azimuth_deg, max(map(abs, cam.face_elevation_deg)), *cam.face_radius_m],
        ("Cameras", "hand close-ups"): [cam.p_hands],
        ("Cameras", "background"): [float(background_color(c.background, np.random.default_rng(0))[0])],
        ("Representation", "free Gaussians' colour and opacity"): [],
        ("Representation", "hash grid"): [nerf.levels, nerf.features, nerf.base_resolution, nerf.finest_per_bound,
                                          nerf.layers, nerf.hidden, nerf.lr, nerf.grid_lr_scale],
        ("Representation", "pose-dependent deformation"):
            [nerf.levels * nerf.features, POSE_VALUES, c.hybrid.depth, c.hybrid.width, c.hybrid.offset_scale],
        ("Representation", "skinning weights"): [nerf.skin_smooth_k, 100 * nerf.skin_offset],
        ("Representation", "mesh-bound hands"):
            [int(HAND_LABELS[1][-1]), PER_TRIANGLE, *SCALE_RANGE, float(torch.sigmoid(torch.tensor(OPAQUE)))],
        ("Representation", "mesh-bound face (expression control)"): [],
        ("Representation", "learning rates"):
            [lr.means, lr.means * lr.means_final, lr.log_scales, lr.quats, lr.offsets, nerf.lr,
             nerf.lr * nerf.grid_lr_scale],
        ("Representation", "regularisation"): [nerf.prior_points, nerf.prior_peak],
        ("Representation", "body model"): [2020, SMPLX_BETAS, SMPLX_EXPRESSIONS],
    }


def test_every_number_of_the_dreamwaltz_g_recipe_matches_method_md():
    if not METHOD.exists():
        pytest.skip(f"{METHOD} is absent (the shared folder beside the repository holds METHOD.md)")
    rows = method_rows(METHOD)
    c = dwg()
    expected = expected_numbers(c)
    assert set(rows) == set(expected), f"METHOD.md rows changed: {sorted(set(rows) ^ set(expected))}"
    for key, (setting, original) in rows.items():
        want = expected[key]
        if isinstance(want, str):
            continue
        got = numbers(original) + (numbers(setting) if key[0] == "Cameras" else Counter())
        assert got == Counter(round(abs(float(v)), 9) for v in want), (key, original, sorted(got), want)
    # the rows whose numbers are words, checked as such
    assert c.init == "nerf" and not c.densify.enabled and c.diffusion_dtype == "fp32"
    assert c.sds.weighting == "uniform" and c.sds.t_schedule == "constant" and c.sds.latent == "sample"
    assert c.sds.reduction == "sum" and c.sds.grad_clip is None and c.sds.guidance_scale == 50
    assert all(w in c.sds.negative_prompt for w in ("bad hands", "missing fingers", "extra digit"))
    assert c.sds.templates["body"] == c.sds.templates["face"] == "{view} view of {prompt}"
    assert c.cameras.labels == "dreamwaltz-g" and c.cameras.mode == "orbit" and c.background == "grey"
    assert c.skeleton.face is False and c.skeleton.occlusion_rule == "gap"
    assert not c.poses.jaw_open[1] and c.poses.expression_clip is None and c.poses.hands == "flat"
    lengths = [s.steps for s in c.stages() if s.name in ("nerf-64", "nerf-128", "nerf-256")]
    assert max(lengths) - min(lengths) <= 1, "a third each"


def test_the_table_reader_reads_numbers_as_written():
    assert numbers("10,000 iterations at 64 → 128 → 256 px (a third each), fp16") == Counter({10000: 1, 64: 1,
                                                                                             128: 1, 256: 1})
    assert numbers("a 400³ grid → 10⁵–10⁶ points; 1 cm") == Counter({64e6: 1, 1e5: 1, 1e6: 1, 1: 1})
    assert numbers("shoulders ±45° uniform, hips 6–45°; Adam 1e-3 (×10), SD 1.5, v1.1, L40S, N(0,1)") == \
        Counter({45: 2, 6: 1, 1e-3: 1, 10: 1, 1.5: 1, 0: 1, 1: 1})


# ----------------------------------------------------------------------------------------------
# recipes, stages and bad input
# ----------------------------------------------------------------------------------------------

def test_recipe_defaults_stages_and_bad_input():
    fast, paper = TrainConfig(prompt="x"), dwg()
    assert [(s.name, s.steps) for s in fast.stages()] == [("template", 0), ("canonical", 1500), ("posed", 1500)]
    assert [(s.name, s.kind, s.steps, s.resolution) for s in paper.stages()] == [
        ("nerf-64", "nerf", 3333, 64), ("nerf-128", "nerf", 3333, 128), ("nerf-256", "nerf", 3334, 256),
        ("nerf-512", "nerf", 5000, 512), ("canonical", "gaussians", 5000, 512),
        ("canonical-r", "gaussians", 5000, 512), ("random-pose", "gaussians", 5000, 512)]
    assert paper.total_steps == 30_000 and paper.views == 1 and fast.views == 4
    # settings given win over the recipe's, nested ones key by key; the config round-trips
    mixed = TrainConfig(prompt="x", recipe="dreamwaltz-g", views=2, sds={"guidance_scale": 20.0})
    assert mixed.views == 2 and mixed.sds.guidance_scale == 20.0 and mixed.sds.weighting == "uniform"
    assert TrainConfig.from_dict(mixed.to_dict()) == mixed
    skipped = TrainConfig(prompt="x", recipe="dreamwaltz-g", init="template", steps=30)
    assert [s.name for s in skipped.stages()] == ["canonical", "canonical-r", "random-pose"]
    assert [s.steps for s in skipped.stages()] == [10, 10, 10]
    with pytest.raises(ValueError, match="recipe must be one of fast, dreamwaltz-g"):
        TrainConfig(prompt="x", recipe="dreamwaltz")
    with pytest.raises(ValueError, match="stages of --recipe fast are template, canonical, posed"):
        TrainConfig(prompt="x", stage_steps={"nerf-64": 3})
    with pytest.raises(ValueError, match="stage_steps must be whole numbers"):
        TrainConfig(prompt="x", recipe="dreamwaltz-g", stage_steps={"canonical": -1})
    with pytest.raises(ValueError, match="init = nerf needs"):
        TrainConfig(prompt="x", init="nerf")
    assert fast.same_run_as(paper) == ["recipe"]


def test_a_run_cannot_be_resumed_as_another_recipe(tiny_dir, tmp_path, models):
    from backend.cli.train_cmd import main

    config = TrainConfig(prompt="a chef", steps=2, num_gaussians=600, views=1, resolution=32,
                         sd_model=str(tiny_dir / "stable-diffusion"), controlnet=str(tiny_dir / "controlnet"),
                         checkpoint_every=0, preview_every=0)
    out = tmp_path / "run"
    with pytest.raises(TrainingCancelled):
        run_training(config, out, should_cancel=lambda: True, models=models)
    saved = (out / "config.json").read_text()
    ckpt = (out / "checkpoints" / "last.pt").read_bytes()
    other = TrainConfig.from_dict(dict(config.to_dict(), recipe="dreamwaltz-g"))
    with pytest.raises(TrainingError, match="recipe fast; it cannot be resumed as --recipe dreamwaltz-g"):
        run_training(other, out, resume=True, models=models)
    assert main(["--out", str(out), "--resume", "--recipe", "dreamwaltz-g"]) == 1
    assert (out / "config.json").read_text() == saved and (out / "checkpoints" / "last.pt").read_bytes() == ckpt
    with pytest.raises(SystemExit):  # argparse: invalid choice 'nope' for --recipe
        main(["--out", str(tmp_path / "x"), "--prompt", "p", "--recipe", "nope"])


def test_the_nerf_stages_refuse_clearly_where_the_nerf_is_missing(monkeypatch):
    from backend.train import nerf_stage

    monkeypatch.setattr(nerf_stage, "nerf_available", lambda: False)
    with pytest.raises(TrainingError, match="the NeRF stage is not available in this build"):
        nerf_stage.NerfStage(object())


# ----------------------------------------------------------------------------------------------
# the paper's SDS, cameras and poses
# ----------------------------------------------------------------------------------------------

def test_paper_sds_uniform_weight_fixed_range_posterior_sample_and_direct_gradient(models):
    from backend.guidance import SDSGuidance

    paper = SDSGuidance(models, "a chef", dwg().sds)
    ours = SDSGuidance(models, "a chef", TrainConfig(prompt="x").sds)
    assert paper.t_range(0.0) == paper.t_range(1.0) == (20, 979)
    assert ours.t_range(1.0)[1] < ours.t_range(0.0)[1]
    t = torch.tensor([20, 500, 979])
    assert torch.equal(paper.weight(t), torch.ones(3)) and bool((ours.weight(t) < 1).all())
    assert paper.prompt_text("body", "left side") == "left side view of a chef"
    assert paper.prompt_text("face", "back") == "back view of a chef"
    size = models.image_size
    control = torch.zeros(2, 3, size, size)
    prompts = [("body", "front"), ("face", "right side")]
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, sds in (("paper", paper), ("ours", ours)):
        inputs = sds.prepare(control, prompts, 0.3, torch.Generator().manual_seed(1))
        loss, info = sds.loss(images.clone().requires_grad_(True), inputs)
        again = sds.loss(images.clone(), sds.prepare(control, prompts, 0.3, torch.Generator().manual_seed(1)))[0]
        assert float(again) == float(loss.detach()), "the step's generator fixes the noise and the posterior sample"
        out[name] = (loss, info["grad"], sds.encode(images, inputs.posterior_noise))
    # a sample of the posterior, not its mean
    assert not torch.allclose(out["paper"][2], paper.encode(images))
    assert torch.allclose(out["ours"][2], ours.encode(images))
    # the paper injects the gradient as is (d loss / d z = grad); ours divides by the batch
    loss, grad, _ = out["paper"]
    assert float(loss.detach()) == pytest.approx(0.5 * float((grad ** 2).sum()), rel=1e-5)
    loss, grad, _ = out["ours"]
    assert float(loss.detach()) == pytest.approx(0.25 * float((grad ** 2).sum()), rel=1e-5)


def test_orbit_cameras_follow_the_original(body):
    c = dwg().cameras
    out = body.forward(body_pose=torch.as_tensor(canonical_body_pose("apose-45"), dtype=torch.float32).reshape(1, 63))
    v, j, tr = out.vertices[0], out.joints[0], out.transforms[0]
    from backend.train.skeleton import KeypointLayout

    kp = KeypointLayout(body)(v, j)
    sampler = CameraSampler(c, 64, 64)
    rng = np.random.default_rng(0)
    views = [sampler.sample(rng, v, j, tr, kp) for _ in range(400)]
    face = [w for w in views if w.kind == "face"]
    assert 50 < len(face) < 110 and all(w.kind in ("body", "face") for w in views)
    ankle, shoulder = float(j[[7, 8], 1].mean()), float(j[[16, 17], 1].mean())
    ears = 0.5 * (kp[58] + kp[59]).numpy()
    for w in views:
        fov = 2 * math.degrees(math.atan(0.5 * 64 / float(np.asarray(w.camera.K)[1, 1])))
        assert 40 - 1e-6 <= fov <= 70 + 1e-6
        target = np.asarray(w.camera.position) + w.distance * _forward(w.camera)
        if w.kind == "body":
            assert 1.0 <= w.distance <= 2.0 and -30 <= w.elevation <= 30 and 0 <= w.azimuth <= 360
            assert ankle - 1e-6 <= target[1] <= shoulder + 1e-6
            assert abs(target[0] - float(j[0, 0])) < 1e-6 and abs(target[2] - float(j[0, 2])) < 1e-6
        else:
            assert 0.5 <= w.distance <= 1.0 and -15 <= w.elevation <= 15 and abs(w.azimuth) <= 90
            assert np.allclose(target, ears, atol=1e-6)
        assert w.view in ("front", "left side", "back", "right side")
    # azimuth +90 looks at the body's left side (+X), as the original's "left side view"
    left = [w for w in views if w.view == "left side" and w.kind == "body"]
    assert left and all(np.asarray(w.camera.position)[0] > float(j[0, 0]) for w in left)
    assert 0.05 < np.mean([w.distance < 1.5 for w in views if w.kind == "body"]) < 0.95


def _forward(camera) -> np.ndarray:
    r = np.asarray(camera.world_to_camera, dtype=np.float64)[:3, :3]
    return r[2]  # the camera's +Z axis (forward) in world coordinates


def test_paper_poses_canonical_r_prior_pca_hands_and_expressions(body):
    c = dwg().poses
    hands = {side: body.hand_pca(side) for side in ("left", "right")}
    sampler = PoseSampler(c, body.num_expression, expression=True, hand_basis=hands)
    apose = sampler.sample(np.random.default_rng(0), "apose")
    pose = apose["body_pose"].reshape(21, 3)
    assert pose[BODY_INDEX["left_shoulder"], 2] == pytest.approx(-math.pi / 4)
    assert pose[BODY_INDEX["right_hip"], 2] == pytest.approx(-math.pi / 30)
    assert not apose["left_hand_pose"].any() and "expression" not in apose, "flat hands, no expression"
    rng = np.random.default_rng(1)
    canonical_r, random = 0, 0
    for _ in range(200):
        p = sampler.sample(rng, "prior")
        pose = p["body_pose"].reshape(21, 3)
        others = np.delete(pose, [BODY_INDEX[n] for n in ("left_shoulder", "right_shoulder", "left_hip",
                                                           "right_hip")], axis=0)
        if not others.any():   # canonical-R: arms -45..45 deg, legs 6..45 deg, flat hands, no expression
            canonical_r += 1
            assert -45 <= math.degrees(-pose[BODY_INDEX["left_shoulder"], 2]) <= 45
            assert 6 <= math.degrees(pose[BODY_INDEX["left_hip"], 2]) <= 45
            assert "expression" not in p and not p["right_hand_pose"].any()
            continue
        random += 1
        assert (pose >= LIMITS[..., 0] - 1e-6).all() and (pose <= LIMITS[..., 1] + 1e-6).all()
        assert p["expression"].shape == (1, body.num_expression) and "jaw_pose" not in p
        comps, mean = hands["left"]
        coeffs, *_ = np.linalg.lstsq(np.asarray(comps, np.float64)[:12].T,
                                     p["left_hand_pose"].reshape(45) - mean, rcond=None)
        assert np.allclose(coeffs @ np.asarray(comps)[:12] + mean, p["left_hand_pose"].reshape(45), atol=1e-5)
    assert 70 < canonical_r < 130 and canonical_r + random == 200
    draws = np.stack([normal_prior(np.random.default_rng(s)) for s in range(300)])
    assert (draws >= LIMITS[..., 0]).all() and (draws <= LIMITS[..., 1]).all()
    knee = draws[:, BODY_INDEX["left_knee"], 0]
    assert 0.3 < np.median(knee) < 0.9 and knee.max() > 1.5, "mostly moderate, a few near the limits"
    assert (knee >= 0).all() and np.mean(knee == 0) < 0.05, "a knee bends one way, and is not stuck at rest"


def _random_vposer(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"0": (512, LATENT), "3": (512, 512), "5": (JOINTS * 6, 512)}
    out = {}
    for name, shape in shapes.items():
        out[f"decoder_net.{name}.weight"] = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        out[f"decoder_net.{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    return out


def test_vposer_decoder_loads_safely_and_decodes_rotations(tmp_path, body):
    weights = _random_vposer()
    save_file(weights, str(tmp_path / "decoder.safetensors"))
    lightning = {"state_dict": {f"vp_model.{k}": v for k, v in weights.items()} | {
        "vp_model.encoder_net.2.weight": torch.zeros(512, 63)}, "epoch": 13}
    torch.save(lightning, tmp_path / "V02_05_epoch=13_val_loss=0.03.ckpt")
    a = VPoserDecoder.load(tmp_path / "decoder.safetensors")
    b = VPoserDecoder.load(tmp_path / "V02_05_epoch=13_val_loss=0.03.ckpt")
    z = np.random.default_rng(0).normal(size=(5, LATENT))
    pose = a.decode(z)
    assert pose.shape == (5, 21, 3) and np.isfinite(pose).all() and np.allclose(pose, b.decode(z))
    # each joint's rotation is the Gram-Schmidt frame of its 6 outputs (by hand, for one joint)
    h = z @ weights["decoder_net.0.weight"].double().numpy().T + weights["decoder_net.0.bias"].double().numpy()
    h = np.where(h > 0, h, 0.01 * h) @ weights["decoder_net.3.weight"].double().numpy().T + \
        weights["decoder_net.3.bias"].double().numpy()
    h = np.where(h > 0, h, 0.01 * h) @ weights["decoder_net.5.weight"].double().numpy().T + \
        weights["decoder_net.5.bias"].double().numpy()
    x = h[0, :6].reshape(3, 2)
    b1 = x[:, 0] / np.linalg.norm(x[:, 0])
    b2 = x[:, 1] - b1 @ x[:, 1] * b1
    b2 /= np.linalg.norm(b2)
    want = np.stack([b1, b2, np.cross(b1, b2)], 1)
    from backend.body.model import axis_angle_to_matrix

    got = axis_angle_to_matrix(torch.as_tensor(pose[0, 0])[None]).double()[0].numpy()
    assert np.allclose(got, want, atol=1e-5)
    # the pose sampler draws VPoser bodies when given the file
    c = TrainConfig(prompt="x", recipe="dreamwaltz-g", poses={"vposer": str(tmp_path / "decoder.safetensors"),
                                                              "canonical_r_prob": 0.0}).poses
    sampler = PoseSampler(c, body.num_expression, hand_basis={s: body.hand_pca(s) for s in ("left", "right")})
    rng = np.random.default_rng(4)
    drawn = sampler.sample(rng, "prior")["body_pose"].reshape(21, 3)
    assert np.allclose(drawn, a.sample(_after_u(4))[0])


def _after_u(seed: int) -> np.random.Generator:
    """A generator in the state the pose sampler leaves it after its first draw (the mode's u)."""
    rng = np.random.default_rng(seed)
    rng.random()
    return rng


def test_bad_vposer_files_get_one_clear_error(tmp_path):
    with pytest.raises(VPoserError, match="does not exist"):
        VPoserDecoder.load(tmp_path / "missing.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VPoserError, match="junk.safetensors is not a readable safetensors file"):
        VPoserDecoder.load(tmp_path / "junk.safetensors")
    wrong = _random_vposer()
    wrong["decoder_net.5.weight"] = torch.zeros(63, 512)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(VPoserError, match=r"wrong.safetensors: decoder_net.5 has shape \(63, 512\)"):
        VPoserDecoder.load(tmp_path / "wrong.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(VPoserError, match="not a VPoser v2 checkpoint"):
        VPoserDecoder.load(tmp_path / "other.safetensors")
    torch.save({"state_dict": _random_vposer(), "config": Path("x")}, tmp_path / "pickled.ckpt")
    with pytest.raises(VPoserError, match="cannot be read safely.*safetensors"):
        VPoserDecoder.load(tmp_path / "pickled.ckpt")
    with pytest.raises(TrainingError, match="missing.ckpt does not exist"):
        from backend.train.batches import BatchMaker
        from backend.body import BodyModel

        BatchMaker(TrainConfig(prompt="x", recipe="dreamwaltz-g", poses={"vposer": str(tmp_path / "missing.ckpt")}),
                   BodyModel.load(), torch.zeros(10))


# ----------------------------------------------------------------------------------------------
# both recipes end to end, resumed across every stage boundary
# ----------------------------------------------------------------------------------------------

def _tiny(tiny_dir, **kw) -> TrainConfig:
    base = dict(prompt="a chef dressed in white", num_gaussians=800, resolution=32,
                sd_model=str(tiny_dir / "stable-diffusion"), controlnet=str(tiny_dir / "controlnet"),
                checkpoint_every=0, preview_every=0, progress_every=0.0, workers=0)
    base.update(kw)
    return TrainConfig(**base)


RECIPES = {
    "fast": dict(views=2, stage_steps={"template": 1, "canonical": 1, "posed": 2},
                 densify={"every": 1, "start": 0.0, "stop": 1.0, "max_growth": 0.5}),
    "dreamwaltz-g": dict(recipe="dreamwaltz-g", stage_steps={f"nerf-{r}": 1 for r in (64, 128, 256, 512)}
                         | {"canonical": 1, "canonical-r": 1, "random-pose": 1},
                         stage_resolutions={n: 24 for n in ("nerf-64", "nerf-128", "nerf-256", "nerf-512", "canonical",
                                                            "canonical-r", "random-pose")},
                         nerf=dict(levels=6, log2_table=12, grid_size=32, max_steps=64, pretrain_steps=20,
                                   pretrain_resolution=24, pretrain_points=2048, pretrain_gaussians=2000,
                                   pretrain_voxels=32, pretrain_views=1, convert_resolution=48,
                                   skin_smooth_iters=10, bound_gaussians=300, prior_points=200, prior_pool=2)),
    "dreamwaltz-g-template": dict(recipe="dreamwaltz-g", init="template",
                                  stage_steps={"canonical": 1, "canonical-r": 1, "random-pose": 1}),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_runs_end_to_end_and_resumes_exactly_across_every_stage_boundary(recipe, tiny_dir, tmp_path,
                                                                                      models):
    config = _tiny(tiny_dir, **RECIPES[recipe])
    stages = config.stages()
    boundaries = sorted({sum(s.steps for s in stages[:i + 1]) for i in range(len(stages) - 1)} - {0})
    seen: list[tuple[str, int, dict]] = []
    whole = run_training(config, tmp_path / "whole", models=models,
                         progress_cb=lambda stage, step, total, **kw: seen.append((stage, step, kw)))
    assert {kw["recipe"] for _, _, kw in seen} == {config.recipe}
    assert [s for s, _, _ in seen][-1] == stages[-1].name
    assert {(s, kw["stage_index"]) for s, _, kw in seen} >= {(st.name, i) for i, st in enumerate(stages) if st.steps}
    state = {"step": 0}
    parts = tmp_path / "parts"
    for b in boundaries:
        def cancel_at(b=b):
            return state["step"] >= b

        with pytest.raises(TrainingCancelled) as err:
            run_training(config, parts, resume=parts.exists(), models=models, should_cancel=cancel_at,
                         progress_cb=lambda stage, step, total, **kw: state.update(step=step))
        assert err.value.step == b
    resumed = run_training(config, parts, resume=True, models=models)
    a, b = load_file(str(whole / "gaussians.safetensors")), load_file(str(resumed / "gaussians.safetensors"))
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    summary = json.loads((parts / "train.json").read_text())
    assert summary["iterations"] == config.total_steps


@pytest.mark.gpu
def test_dreamwaltz_g_recipe_on_cuda_resumes_across_its_stages(tiny_dir, tmp_path):
    """The paper's recipe on the GPU (gsplat, fp32 models with CUDA graphs, batch workers), a few
    iterations per stage, cancelled and resumed at a stage boundary."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from backend.avatar import load_avatar
    from backend.train.nerf_stage import nerf_available

    steps = {"canonical": 6, "canonical-r": 6, "random-pose": 6}
    extra: dict = {"init": "template"}
    if nerf_available():
        steps.update({"nerf-64": 3, "nerf-128": 3, "nerf-256": 3, "nerf-512": 3})
        extra = {}
    config = _tiny(tiny_dir, recipe="dreamwaltz-g", stage_steps=steps, resolution=64, device="cuda", workers=2,
                   **extra)
    boundary = config.total_steps - 12
    state = {"step": 0}
    with pytest.raises(TrainingCancelled):
        run_training(config, tmp_path / "gpu", should_cancel=lambda: state["step"] >= boundary,
                     progress_cb=lambda stage, step, total, **kw: state.update(step=step))
    folder = run_training(config, tmp_path / "gpu", resume=True)
    avatar = load_avatar(folder, device="cuda")
    assert torch.isfinite(avatar.free.means).all() and avatar.num_gaussians > 0


def test_the_tiny_encoder_with_the_paper_recipe_takes_the_latent_mean():
    """The paper samples the VAE posterior; TAESD has none, so asking for it (CLI --tiny-encoder,
    the add-on's preference) gives the mean rather than a refusal, unless a sample is asked for."""
    config = TrainConfig(prompt="x", recipe="dreamwaltz-g", sds={"encoder": "tiny"})
    assert config.sds.encoder == "tiny" and config.sds.latent == "mean"
    assert TrainConfig(prompt="x", recipe="dreamwaltz-g").sds.latent == "sample"
    with pytest.raises(ValueError, match='sds.latent = "sample" needs the SD VAE'):
        TrainConfig(prompt="x", recipe="dreamwaltz-g", sds={"encoder": "tiny", "latent": "sample"})
