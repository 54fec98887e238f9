"""The hybrid avatar (DreamWaltz-G): implicit colour and opacity, the pose-dependent deformation
network, and avatar format 2 that stores them."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.avatar import AvatarFileError, load_avatar, pose_with_params, pose_with_transforms, save_avatar
from backend.avatar.hybrid import (DeformationNetwork, DeformSpec, FieldSpec, HybridNetworks, ImplicitField,
                                   canonical_positions)
from backend.body.kinematics import rodrigues, skinning_transforms

SMALL_FIELD = FieldSpec(levels=8, features=4, log2_table=12, base_resolution=8, finest_resolution=128)
APOSE = np.zeros((21, 3))
APOSE[15, 2], APOSE[16, 2] = -0.85, 0.85          # shoulders lowered: a canonical pose that is not the rest pose


def canonical_transforms(avatar, body_pose: np.ndarray) -> torch.Tensor:
    full = np.zeros((55, 3))
    full[1:22] = body_pose.reshape(21, 3)
    _, t = skinning_transforms(rodrigues(full), avatar.body.rest_joints(avatar.betas).double().numpy())
    return torch.as_tensor(t, dtype=torch.float32)


def hybrid(avatar, spec: FieldSpec = SMALL_FIELD, canonical: np.ndarray = APOSE, seed: int = 0):
    """`avatar` with a fresh field around its body and a fresh deformation network."""
    centre = avatar.free.means.mean(0)
    field = ImplicitField(spec, centre, 1.2, seed=seed)
    deformation = DeformationNetwork(DeformSpec(features=spec.out_dim), canonical.reshape(-1), seed=seed)
    networks = HybridNetworks(canonical_transforms(avatar, canonical), field, deformation)
    return dataclasses.replace(avatar, networks=networks, cache={})


def random_pose(rng: np.random.Generator, sigma: float = 0.4) -> dict:
    return {"global_orient": rng.normal(0, 0.3, 3), "body_pose": rng.normal(0, sigma, 63),
            "transl": rng.normal(0, 0.2, 3)}


def perturb(module: torch.nn.Module, seed: int = 1, sigma: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * sigma)


def test_deformation_is_exactly_the_identity_at_initialisation(small_avatar):
    av = hybrid(small_avatar)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(3):
            pose = random_pose(rng)
            plain, deformed = pose_with_params(small_avatar, **pose), pose_with_params(av, **pose)
            for name in ("means", "quats", "scales"):
                assert torch.equal(getattr(plain, name), getattr(deformed, name)), name


def test_deformation_is_exactly_the_identity_at_the_canonical_pose(small_avatar, body):
    av = hybrid(small_avatar)
    perturb(av.networks.deformation)
    canonical = {"body_pose": APOSE.reshape(-1)}
    with torch.no_grad():
        other = pose_with_params(av, body_pose=APOSE.reshape(-1) + 0.05)
        assert (other.means - pose_with_params(small_avatar, body_pose=APOSE.reshape(-1) + 0.05).means).abs().max() > 1e-4, \
            "the perturbed network deforms other poses"
        for turn in (0.0, 1.0):   # the canonical pose seen from anywhere: the body pose is relative to the parents
            pose = dict(canonical, global_orient=np.array([0.0, turn, 0.0]), transl=np.array([0.3, 0.0, -1.0]))
            plain, deformed = pose_with_params(small_avatar, **pose), pose_with_params(av, **pose)
            assert torch.equal(plain.means, deformed.means) and torch.equal(plain.scales, deformed.scales)
        # the same pose as float32 transforms from torch's forward kinematics (as a GPU batch would be)
        full = body.full_pose(1, body_pose=torch.as_tensor(APOSE.reshape(1, -1), dtype=torch.float32))
        _, t = body.forward_kinematics(body.local_rotations(full), body.rest_joints(small_avatar.betas))
        a, b = pose_with_transforms(small_avatar, t[0]), pose_with_transforms(av, t[0])
        assert torch.equal(a.means, b.means) and torch.equal(a.scales, b.scales)


def test_colour_comes_from_the_field_at_the_canonical_position(small_avatar):
    """Free Gaussians take colour and opacity from the field at their canonical position; the
    mesh-bound ones take colour there too (and keep their own opacity)."""
    av = hybrid(small_avatar)
    perturb(av.networks.field.mlp, sigma=1.0)
    n = len(small_avatar.free)
    with torch.no_grad():
        g = pose_with_params(av, **random_pose(np.random.default_rng(2)))
        net = av.networks
        canon = canonical_positions(av.free.means, av.free.skin_joints, av.free.skin_weights, net.canonical_transforms)
        colors, opacities = net.field.appearance(net.field.encode(canon))
    torch.testing.assert_close(g.colors[:n], colors)
    torch.testing.assert_close(g.opacities[:n], opacities)
    assert (g.colors[:n] - small_avatar.free.colors).abs().max() > 0.05, "not the per-Gaussian colours"
    with torch.no_grad():
        on_canonical_body = pose_with_params(small_avatar, body_pose=APOSE.reshape(-1)).means[n:]
        bound_colors, _ = net.field.appearance(net.field.encode(on_canonical_body))
    torch.testing.assert_close(g.colors[n:], bound_colors)
    torch.testing.assert_close(g.opacities[n:], torch.sigmoid(small_avatar.bound.opacity_logits))


# ---- a skirt that swings with the hips ----------------------------------------------------------

HIP_X = (0, 3)   # body_pose values: left hip, right hip, about x (flexion)


def skirt_avatar(body, count: int = 300):
    """Free Gaussians in a skirt around the hips, rigidly skinned to the pelvis."""
    from backend.avatar import Avatar, BoundGaussians, FreeGaussians

    joints = body.rest_joints()
    pelvis, left, right = joints[0], joints[1], joints[2]
    radius = float((left - right).norm()) * 0.5 + 0.08
    g = torch.Generator().manual_seed(0)
    angle = torch.rand(count, generator=g) * 2 * math.pi
    drop = 0.02 + torch.rand(count, generator=g) * 0.28
    flare = radius + 0.25 * drop
    means = pelvis + torch.stack([flare * torch.sin(angle), -drop, flare * torch.cos(angle)], 1)
    free = FreeGaussians(means=means, quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(count, 1),
                         log_scales=torch.full((count, 3), math.log(0.01)), opacity_logits=torch.full((count,), 3.0),
                         colors=torch.full((count, 3), 0.5), skin_joints=torch.zeros(count, 4, dtype=torch.long),
                         skin_weights=torch.tensor([[1.0, 0, 0, 0]]).repeat(count, 1))
    empty = BoundGaussians(torch.zeros(0, dtype=torch.long), *(torch.zeros(0, k) for k in (3, 3, 4, 3)),
                           torch.zeros(0), torch.zeros(0, 3))
    return Avatar(body=body, betas=torch.zeros(body.num_betas), free=free, bound=empty)


@functools.lru_cache(maxsize=4)
def _pelvis(body) -> torch.Tensor:
    return body.rest_joints()[0].detach()


def skirt_target(avatar, hips: torch.Tensor) -> torch.Tensor:
    """Where the skirt hangs for hip flexions (..., 2) (left, right): each side swings about the
    pelvis by half its hip's angle, blended smoothly across the middle: a motion no fixed
    skinning follows."""
    pelvis = _pelvis(avatar.body)
    p = avatar.free.means.detach() - pelvis
    side = torch.sigmoid(p[:, 0] / 0.04)                    # +x: the left leg
    beta = 0.5 * (side * hips[..., :1] + (1 - side) * hips[..., 1:])
    c, s = torch.cos(beta), torch.sin(beta)
    y, z = p[:, 1], p[:, 2]
    return pelvis + torch.stack([p[:, 0].expand_as(beta), c * y - s * z, s * y + c * z], -1)


def hip_poses(hips: torch.Tensor) -> torch.Tensor:
    """(B, 63) body poses with hip flexions (B, 2) and every other joint at rest."""
    pose = torch.zeros(len(hips), 63)
    pose[:, HIP_X[0]], pose[:, HIP_X[1]] = hips[:, 0], hips[:, 1]
    return pose


EVAL_HIPS = torch.as_tensor(np.random.default_rng(123).uniform(-0.7, 0.7, (12, 2)), dtype=torch.float32)


def posed_error(avatar) -> float:
    """RMS distance (m) to the target over the evaluation poses, posed the way every renderer poses."""
    with torch.no_grad():
        errs = [((pose_with_params(avatar, body_pose=p.numpy()).means - skirt_target(avatar, h)) ** 2).sum(1).mean()
                for p, h in zip(hip_poses(EVAL_HIPS), EVAL_HIPS)]
    return float(torch.stack(errs).mean().sqrt())


@pytest.fixture(scope="module")
def trained_skirt(body):
    """The skirt avatar with its field and deformation network fitted to the swing, and the error
    of the best pure skinning can do: the skirt's points are skinned to the pelvis, which the hips
    do not move, so whatever their rest positions they stay put, and the best is the mean target."""
    torch.manual_seed(0)
    base = skirt_avatar(body)
    av = hybrid(base, canonical=np.zeros((21, 3)))
    net = av.networks
    opt = torch.optim.Adam([{"params": [net.field.encoding.embeddings], "lr": 1e-2},
                            {"params": list(net.deformation.parameters()), "lr": 3e-3}])
    gen = torch.Generator().manual_seed(1)
    canon = canonical_positions(av.free.means, av.free.skin_joints, av.free.skin_weights, net.canonical_transforms)
    for _ in range(200):
        hips = torch.rand(16, 2, generator=gen) * 1.4 - 0.7
        offsets, _ = net.deformation.deform(*net.deformation.prepare(net.field.encode(canon)), hip_poses(hips))
        loss = ((av.free.means + offsets - skirt_target(av, hips)) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    targets = skirt_target(base, EVAL_HIPS)
    best_rigid = float(((targets - targets.mean(0)) ** 2).sum(-1).mean().sqrt())
    return {"hybrid": av, "static_rms": posed_error(base), "rigid_rms": best_rigid, "hybrid_rms": posed_error(av)}


def test_deformation_learns_a_skirt_swing_that_skinning_cannot(trained_skirt):
    static, rigid, hybrid_rms = trained_skirt["static_rms"], trained_skirt["rigid_rms"], trained_skirt["hybrid_rms"]
    assert static > 0.02, f"the swing moves the skirt by centimetres ({static:.4f} m RMS)"
    assert rigid > 0.015, f"skinning cannot follow it, whatever the rest positions ({rigid:.4f} m RMS at best)"
    assert hybrid_rms < 0.25 * rigid, f"the deformation network does ({hybrid_rms:.4f} m RMS vs {rigid:.4f})"
    with torch.no_grad():   # and the canonical (rest) pose is still exactly where skinning puts it
        av = trained_skirt["hybrid"]
        rest = pose_with_params(av)
        assert torch.equal(rest.means, av.free.means)


def test_half_precision_deformation_stays_within_a_percent(trained_skirt):
    av = trained_skirt["hybrid"]
    net = av.networks
    with torch.no_grad():
        canon = canonical_positions(av.free.means, av.free.skin_joints, av.free.skin_weights, net.canonical_transforms)
        features = net.field.encode(canon)
        pose = hip_poses(torch.tensor([[0.6, -0.5]]))[0]
        full = net.deformation.deform(*net.deformation.prepare(features), pose)
        half = net.deformation.deform(*net.deformation.prepare(features, torch.float16), pose)
    largest = float(full[0].abs().max())
    assert largest > 0.02
    assert float((full[0] - half[0]).abs().max()) < min(0.01 * largest, 5e-4)   # metres
    assert float((full[1] - half[1]).abs().max()) < 1e-5


# ---- avatar format 2 --------------------------------------------------------------------------------

def test_hybrid_avatar_round_trip(trained_skirt, small_avatar, tmp_path):
    av = trained_skirt["hybrid"]
    folder = save_avatar(av, tmp_path / "skirt")
    meta = json.loads((folder / "avatar.json").read_text())
    assert meta["format_version"] == 2
    assert meta["networks"]["field"] == SMALL_FIELD.to_dict()
    assert meta["networks"]["deformation"] == DeformSpec(features=32).to_dict()
    loaded = load_avatar(folder)
    pose = {"body_pose": hip_poses(torch.tensor([[0.5, -0.3]]))[0].numpy()}
    with torch.no_grad():
        a, b = pose_with_params(av, **pose), pose_with_params(loaded, **pose)
    torch.testing.assert_close(b.means, a.means, atol=2e-5, rtol=0)   # the grid is stored in half precision
    torch.testing.assert_close(b.colors, a.colors, atol=2e-3, rtol=0)
    from safetensors.torch import load_file

    stored = load_file(str(folder / "gaussians.safetensors"))
    assert stored["networks.field.encoding.embeddings"].dtype == torch.float16
    # the baked per-Gaussian values are what the stored field gives, for readers that cannot run it
    torch.testing.assert_close(loaded.free.colors, b.colors, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.sigmoid(loaded.free.opacity_logits), b.opacities, atol=1e-5, rtol=0)
    plain = save_avatar(small_avatar, tmp_path / "plain")   # no networks: format 1, as before
    assert json.loads((plain / "avatar.json").read_text())["format_version"] == 1
    assert load_avatar(plain).networks is None


def test_v1_avatars_load_unchanged(avatar_dir, small_avatar):
    meta = json.loads((avatar_dir / "avatar.json").read_text())
    assert meta["format_version"] == 1 and "networks" not in meta
    loaded = load_avatar(avatar_dir)
    assert loaded.networks is None
    rng = np.random.default_rng(5)
    with torch.no_grad():
        pose = random_pose(rng)
        a, b = pose_with_params(small_avatar, **pose), pose_with_params(loaded, **pose)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _rewrite(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "gaussians.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def hybrid_dir(trained_skirt, tmp_path_factory) -> Path:
    return save_avatar(trained_skirt["hybrid"], tmp_path_factory.mktemp("hybrid") / "skirt")


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_bad_network_files_are_refused_naming_the_file(hybrid_dir, tmp_path):
    def layer_of_another_shape(t):
        t["networks.deformation.layers.1.weight"] = torch.zeros(64, 63)

    def nan_weights(t):
        t["networks.field.mlp.0.weight"][0, 0] = float("nan")

    def missing(t):
        del t["networks.deformation.head.bias"]

    def stray(t):
        t["networks.deformation.extra"] = torch.zeros(3)

    cases = [(layer_of_another_shape, r"networks\.deformation\.layers\.1\.weight has shape \(64, 63\).*\(64, 64\)"),
             (nan_weights, r"networks\.field\.mlp\.0\.weight contains NaN"),
             (missing, r"missing the tensor networks\.deformation\.head\.bias"),
             (stray, r"networks\.deformation\.extra")]
    for i, (edit, message) in enumerate(cases):
        folder = _copy(hybrid_dir, tmp_path / str(i))
        _rewrite(folder, edit)
        with pytest.raises(AvatarFileError, match=message) as err:
            load_avatar(folder)
        assert str(folder / "gaussians.safetensors") in str(err.value)
    # a declared shape that does not make a network, and a format from the future
    for i, (edit, message) in enumerate([
            (lambda m: m["networks"]["deformation"].update(width=-3), r"networks\.deformation\.width"),
            (lambda m: m["networks"].update(field=None), "needs the field"),
            (lambda m: m.update(format_version=3), "avatar format 3, newer")]):
        folder = _copy(hybrid_dir, tmp_path / f"meta{i}")
        meta = json.loads((folder / "avatar.json").read_text())
        edit(meta)
        (folder / "avatar.json").write_text(json.dumps(meta))
        with pytest.raises(AvatarFileError, match=message) as err:
            load_avatar(folder)
        assert str(folder) in str(err.value)


def test_the_backend_keeps_serving_after_a_bad_hybrid_avatar(hybrid_dir, tmp_path):
    from .test_server_support import RawServer, front_camera, identity_transforms

    bad = _copy(hybrid_dir, tmp_path)
    _rewrite(bad, lambda t: t["networks.deformation.head.weight"].fill_(float("inf")))
    server = RawServer()
    try:
        err = server.error("load_avatar", path=str(bad))
        assert err["code"] == "avatar_error" and "networks.deformation.head.weight" in err["message"] \
            and str(bad) in err["message"]
        good = server.ok("load_avatar", path=str(hybrid_dir))["avatar"]
        reply = server.ok("render", width=32, height=32, camera=front_camera(32, 32),
                          avatars=[{"avatar": good, "transforms": identity_transforms()}])
        assert reply["num_gaussians"] == 300
    finally:
        server.close()


def test_a_100k_hybrid_avatar_stays_under_50_megabytes(body, tmp_path):
    """The paper-sized field (16 levels x 2 features, 2^19 entries, up to 2048 per axis) and
    100,000 Gaussians."""
    from backend.avatar import init_template_avatar

    av = hybrid(init_template_avatar(body, 100_000, seed=0), spec=FieldSpec())
    folder = save_avatar(av, tmp_path / "big", preview=np.zeros((8, 8, 3), np.uint8))
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 50e6, f"{size / 1e6:.1f} MB"
    assert size > 25e6, "the field is in the file"


# ---- one posing function: the same pixels through every renderer ---------------------------------

def test_the_trained_avatar_renders_the_same_through_cli_server_and_blender(hybrid_dir, tmp_path):
    """The trained skirt on a dance frame (the hips flexed): the CLI renderer, the server's render
    op (what Blender's engine calls) and Blender's F12 give the same pixels, and they are the
    deformed skirt's, not the skinned one's; export-ply writes those Gaussians."""
    from PIL import Image

    from backend.dance import dance
    from backend.gsio import read_gaussians
    from backend.motion import load_motion, save_motion
    from backend.render import rasterize
    from backend.sequence import clip_cameras, frame_params

    from .blender import run_blender
    from .conftest import run_backend

    width, height, frame = 96, 128, 12
    motion_file = tmp_path / "dance.npz"
    save_motion(dance(seconds=1.0), motion_file)
    run_backend("render", "--avatar", str(hybrid_dir), "--motion", str(motion_file), "--out", str(tmp_path / "cli"),
                "--frames", f"{frame}:{frame + 1}", "--width", str(width), "--height", str(height), "--alpha",
                "--background", "0,0,0", "--rasterizer", "torch", check=True)
    cli = np.asarray(Image.open(tmp_path / "cli" / f"frame_{frame:06d}.png")).astype(np.float64) / 255

    avatar = load_avatar(hybrid_dir)
    motion = load_motion(motion_file, body_model=avatar.body)
    cam = clip_cameras(avatar, motion, width, height)[frame]   # the CLI's own camera
    params = frame_params(motion, frame)
    transl = params.pop("transl")
    full = np.concatenate([np.asarray(params[k], np.float64).reshape(-1, 3) for k in
                           ("global_orient", "body_pose", "jaw_pose", "leye_pose", "reye_pose", "left_hand_pose",
                            "right_hand_pose")])
    _, transforms = skinning_transforms(rodrigues(full), avatar.body.rest_joints(avatar.betas).double().numpy(), transl)
    out = tmp_path / "f12.png"
    result = run_blender(f"""
        import numpy as np
        from dreamwaltz_blender import session
        from dreamwaltz_blender.camera import apply_opencv
        scene = bpy.context.scene
        scene.render.fps = 30
        bpy.ops.dreamwaltz.add_avatar(filepath={str(hybrid_dir)!r})
        arm = bpy.context.active_object
        assert bpy.ops.dreamwaltz.import_motion(filepath={str(motion_file)!r}) == {{"FINISHED"}}
        scene.frame_set(scene.frame_start + {frame})
        to_rig = np.linalg.inv(np.array(arm.matrix_world))       # Blender world -> the rig's SMPL-X space
        w2c = np.array({np.asarray(cam.world_to_camera).tolist()!r}) @ to_rig
        K = np.array({np.asarray(cam.K).tolist()!r})
        cam_obj = scene_camera((0, 0, 0), (0, 0, 0))
        apply_opencv(cam_obj, scene, w2c, K, {width}, {height})
        bpy.ops.dreamwaltz.use_engine()
        scene.render.film_transparent = True
        scene.render.dither_intensity = 0.0
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGBA"
        scene.render.filepath = {str(out)!r}
        bpy.ops.render.render(write_still=True)
        # the server's render op with the CLI's transforms, as the engine sends a frame
        T = np.array(arm.matrix_world) @ np.array({transforms.tolist()!r})
        reply = session.client().render(camera={{"world_to_camera": w2c.tolist(), "K": K.tolist()}}, width={width},
                                        height={height}, avatars=[{{"avatar": session.avatar_handle({str(hybrid_dir)!r}),
                                                                   "transforms": T.tolist()}}], passes=("rgba",),
                                        rasterizer="torch")
        result["server"] = reply["rgba"].tolist()
    """, tmp_path)
    server = np.asarray(result["server"])
    f12 = np.asarray(Image.open(out).convert("RGBA")).astype(np.float64) / 255
    f12[..., :3] *= f12[..., 3:]                                    # PNG is straight alpha; compare premultiplied
    covered = cli[..., 3] > 0.5
    assert covered.sum() > 50, "the skirt is in view"
    assert np.abs(server - cli).max() <= 1.01 / 255, "server vs CLI"
    # Blender's colour management (the engine hands it linear light; the Standard view encodes
    # it back to sRGB through OpenColorIO) rounds a few levels differently from ours
    assert np.abs(f12 - cli).max() <= 3.01 / 255, "Blender F12 vs CLI"
    assert np.abs(f12 - cli)[covered].mean() <= 1.0 / 255
    with torch.no_grad():   # and what they drew is the deformed skirt
        skinned = dataclasses.replace(avatar, networks=dataclasses.replace(avatar.networks, deformation=None), cache={})
        rigid = rasterize(pose_with_params(skinned, **frame_params(motion, frame)), cam, backend="torch").alpha[..., 0]
    assert (np.abs(rigid.numpy() - cli[..., 3]) > 0.2).sum() > 20
    run_backend("export-ply", "--avatar", str(hybrid_dir), "--motion", str(motion_file), "--frame", str(frame),
                "--out", str(tmp_path / "posed.ply"), check=True)
    with torch.no_grad():
        posed = pose_with_params(avatar, **frame_params(motion, frame))
    np.testing.assert_allclose(read_gaussians(tmp_path / "posed.ply").means, posed.means.numpy(), atol=1e-5)


# ---- training: the NeRF's field continues in the Gaussians; the original's mesh-bound Gaussians ---

@pytest.fixture(scope="module")
def nerf_stage(body):
    """A NeRF stage with an untrained field (what matters here is that its values carry over)."""
    from backend.train.nerf import NeRFConfig, NeRFField, NeRFStage
    from backend.train.nerf.pretrain import CanonicalBody, field_cube, make_grid
    from backend.train.poses import PoseConfig, PoseSampler

    config = NeRFConfig(levels=6, log2_table=12, grid_size=16, backend="torch")
    canonical = PoseSampler(PoseConfig()).canonical()
    betas = body.betas_vector(None)
    centre, bound = field_cube(CanonicalBody.pose(body, betas, canonical).vertices, config.padding)
    field = NeRFField(config, centre, bound, seed=3)
    perturb(field.mlp, seed=4, sigma=0.3)
    return NeRFStage(config, body, betas, canonical, field, make_grid(config, field), seed=0)


def test_training_continues_the_nerf_field_and_trains_the_deformation_in_random_poses(nerf_stage, tmp_path):
    from backend.train.config import LearningRates
    from backend.train.hybrid import HybridConfig, HybridTraining

    canonical_pose = np.asarray(nerf_stage.canonical_params["body_pose"]).reshape(-1)
    ht = HybridTraining.from_nerf(HybridConfig(enabled=True), nerf_stage, canonical_pose)
    points = nerf_stage.canonical.vertices[::97]
    with torch.no_grad():
        sigma, rgb = nerf_stage.field.query(points)
        colors, opacities = ht.networks.field.appearance(ht.networks.field.encode(points))
    torch.testing.assert_close(colors, rgb)
    torch.testing.assert_close(opacities, torch.sigmoid(torch.log(sigma)), atol=1e-5, rtol=1e-4)  # sigmoid(raw density)
    groups = ht.param_groups(LearningRates())
    assert [g["name"] for g in groups] == ["hybrid.grid", "hybrid.field", "hybrid.deformation"]
    opt = torch.optim.Adam(groups)
    canonical_stage = SimpleNamespace(name="canonical", poses="apose")     # what a recipe's stage says of its poses
    random_stage = SimpleNamespace(name="random-pose", poses="prior")
    ht.set_lrs(opt, canonical_stage)
    assert opt.param_groups[2]["lr"] == 0.0 and ht.networks_for(canonical_stage).deformation is None
    ht.set_lrs(opt, random_stage)
    assert opt.param_groups[2]["lr"] == LearningRates().mlp and ht.networks_for(random_stage).deformation is not None
    ht.set_lrs(opt, canonical_stage)   # once trained, it stays in the posing
    assert ht.networks_for(canonical_stage).deformation is not None
    state = ht.state_dict()
    again = HybridTraining.from_state(HybridConfig(enabled=True), state, torch.device("cpu"))
    assert again.deformation_trained
    for a, b in zip(again.networks.field.parameters(), ht.networks.field.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(again.networks.deformation.canonical_pose, torch.as_tensor(canonical_pose, dtype=torch.float32))


def test_the_trainer_poses_a_hybrid_avatar_differentiably(nerf_stage, small_avatar, body):
    """What the trainer optimises: the free Gaussians' geometry, the field (through colours,
    opacities and the deformation's features), the deformation network in random-pose stages
    only, and the original's mesh-bound barycentrics and scale factors."""
    from backend.train.hybrid import HybridConfig, HybridTraining

    ht = HybridTraining.from_nerf(HybridConfig(enabled=True), nerf_stage,
                                  np.asarray(nerf_stage.canonical_params["body_pose"]).reshape(-1))
    perturb(ht.networks.deformation.head, seed=5, sigma=0.1)
    params, buffers = ht.trainer_tensors(small_avatar, body, small_avatar.betas, expression=False)
    params = {k: torch.nn.Parameter(v.detach().clone()) for k, v in params.items()}
    assert "free.opacity_logits" not in params and set(params) >= {"bound.barycentric", "bound.factors"}
    pose = random_pose(np.random.default_rng(7))
    for stage, deforms in ((SimpleNamespace(poses="apose"), False), (SimpleNamespace(poses="prior"), True)):
        for t in list(params.values()) + list(ht.networks.deformation.parameters()) + [ht.networks.field.encoding.embeddings]:
            t.grad = None
        av = ht.avatar(params, buffers, body, small_avatar.betas, stage)
        g = pose_with_params(av, **pose)
        (g.means.sum() + g.colors.sum() + g.opacities.sum() + g.scales.sum()).backward()
        for name in ("free.means", "free.log_scales", "bound.barycentric", "bound.factors"):
            assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
        assert ht.networks.field.encoding.embeddings.grad.abs().sum() > 0
        head = ht.networks.deformation.head.weight.grad
        assert (head is not None and head.abs().sum() > 0) == deforms, stage
        assert (g.opacities[len(small_avatar.free):] == 1.0).all()


def test_paper_mesh_bound_gaussians_are_six_per_hand_triangle_flat_and_opaque(body):
    from backend.avatar.mesh_bound import FLAT, PER_TRIANGLE, paper_bound
    from backend.body.segmentation import part_triangles

    hands = part_triangles(body, ("hands",))
    b = paper_bound(body, body.betas_vector(None), ("hands",))
    g = b.gaussians()
    assert len(g) == PER_TRIANGLE * len(hands) and torch.equal(torch.unique(g.faces), torch.as_tensor(hands))
    assert (torch.sigmoid(g.opacity_logits) == 1.0).all(), "opacity exactly 1"
    torch.testing.assert_close(g.log_scales[:, 2].exp(), torch.full((len(g),), FLAT))
    tangent = g.log_scales[:, :2].exp()
    assert (tangent >= FLAT).all() and (tangent.median(0).values > 30 * FLAT).all() and (g.offsets == 0).all()
    # scale factors are clamped to [0.5, 2] of the triangle's size
    b.factors.fill_(10.0)
    torch.testing.assert_close(b.gaussians().log_scales[:, :2].exp(), 2.0 * b.base_scales)
    # posed: still opaque
    from backend.avatar import Avatar

    av = Avatar(body=body, betas=body.betas_vector(None), free=skirt_avatar(body, 2).free, bound=paper_bound(
        body, body.betas_vector(None), ("hands",)).gaussians())
    with torch.no_grad():
        posed = pose_with_params(av, body_pose=np.random.default_rng(0).normal(0, 0.3, 63))
    assert (posed.opacities[2:] == 1.0).all()


def test_hand_and_face_sets_come_from_smplx_files_beside_the_model(body, tmp_path):
    """Where the user has SMPL-X's vertex segmentation and FLAME's face mask beside the model
    file, the mesh-bound parts are those; a broken file is one error naming it."""
    import pickle
    import shutil

    from backend.body import BodyModel
    from backend.body.segmentation import SegmentationError, part_triangles, part_vertices

    folder = tmp_path / "smplx"
    folder.mkdir()
    model = folder / "SMPLX_NEUTRAL.npz"
    shutil.copy(body.path, model)
    smplx_like = BodyModel(model, kind="smplx")
    assert part_vertices(smplx_like, "hands")[1] == "the body's regions"   # no files yet
    hands = np.nonzero(body.regions()["left_hand"])[0][:200]
    labels = {"leftHand": hands[:150].tolist(), "leftHandIndex1": hands[150:].tolist(), "rightHand": [],
              "rightHandIndex1": [], "spine": [0, 1]}
    (folder / "smplx_vert_segmentation.json").write_text(json.dumps(labels))
    flame_ids = np.nonzero(body.regions()["face"])[0]
    np.save(folder / "SMPL-X__FLAME_vertex_ids.npy", flame_ids)
    with open(folder / "FLAME_masks.pkl", "wb") as fh:
        pickle.dump({"face": np.arange(0, len(flame_ids), 2), "scalp": np.arange(3)}, fh)
    mask, source = part_vertices(smplx_like, "hands")
    assert source == "smplx_vert_segmentation.json" and mask.sum() == 200 and mask[hands].all()
    face, source = part_vertices(smplx_like, "face")
    assert source == "FLAME_masks.pkl" and face.sum() == len(flame_ids[::2])
    tri = part_triangles(smplx_like, ("hands",))
    assert len(tri) and mask[np.asarray(body.faces)[tri]].all()
    (folder / "smplx_vert_segmentation.json").write_text(json.dumps({"leftHand": [1]}))
    with pytest.raises(SegmentationError, match="smplx_vert_segmentation.json has no leftHandIndex1"):
        part_vertices(smplx_like, "hands")


# ---- the dreamwaltz-g recipe trains the hybrid avatar, resumed exactly across its stages -------

TINY_NERF = dict(levels=6, log2_table=12, grid_size=16, max_steps=64, pretrain_steps=10, pretrain_resolution=16,
                 pretrain_points=512, pretrain_gaussians=2000, pretrain_voxels=32, pretrain_views=1,
                 convert_resolution=40, skin_smooth_iters=10, bound_gaussians=300, prior_points=200, prior_pool=2)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from backend.guidance import load_guidance_models
    from backend.guidance.configs import write_model_folders

    sd, cn = write_model_folders(tmp_path_factory.mktemp("tiny-models"))
    return sd, cn, load_guidance_models(sd, cn, "cpu")


def test_the_paper_recipe_trains_a_hybrid_avatar(tiny_models, tmp_path):
    """--recipe dreamwaltz-g: the NeRF stage, its conversion, the free Gaussians coloured by the
    field from it, the original's mesh-bound Gaussians, the deformation trained in the
    random-pose stage; saved as avatar v2. (Resuming it exactly across every stage boundary:
    tests/test_recipes.py, whose dreamwaltz-g run is this hybrid avatar.)"""
    from backend.train import run_training
    from backend.train.config import TrainConfig

    sd, cn, models = tiny_models
    config = TrainConfig(prompt="a dancer in a long skirt", recipe="dreamwaltz-g", resolution=32, workers=0,
                         sd_model=str(sd), controlnet=str(cn),
                         stage_steps={"nerf-64": 2, "nerf-128": 0, "nerf-256": 0, "nerf-512": 0,
                                      "canonical": 1, "canonical-r": 1, "random-pose": 2},
                         nerf=TINY_NERF, checkpoint_every=0, preview_every=0, progress_every=0.0)
    assert config.hybrid.enabled and not config.densify.enabled
    whole = run_training(config, tmp_path / "whole", models=models)
    meta = json.loads((whole / "avatar.json").read_text())
    assert meta["format_version"] == 2 and meta["networks"]["deformation"] is not None
    from safetensors.torch import load_file

    a = load_file(str(whole / "gaussians.safetensors"))
    assert a["networks.deformation.head.weight"].abs().sum() > 0, "the random-pose stage trained the deformation"
    avatar = load_avatar(whole)
    assert avatar.networks is not None and avatar.networks.field is not None
    assert (torch.sigmoid(avatar.bound.opacity_logits) > 0.99).all() and len(avatar.bound) % 6 == 0
    with torch.no_grad():   # posed through the one posing function, with the trained deformation
        pose = random_pose(np.random.default_rng(3))
        plain = pose_with_params(dataclasses.replace(avatar, networks=dataclasses.replace(
            avatar.networks, deformation=None), cache={}), **pose)
        deformed = pose_with_params(avatar, **pose)
    assert not torch.equal(plain.means, deformed.means)
    torch.testing.assert_close(plain.colors, deformed.colors)
