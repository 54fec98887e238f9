"""The hybrid Gaussian avatar: posing, avatar folders, and the commands that make and use them."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from backend.avatar import (AvatarFileError, AvatarInitError, PoseError, init_template_avatar, load_avatar,
                            pose_with_params, pose_with_transforms, save_avatar)
from backend.avatar.posing import matrix_to_quaternion, quaternion_multiply
from backend.body.joints import JOINT_INDEX

from .conftest import run_backend


def _quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(*q.shape[:-1], 3, 3)


def test_template_avatar_covers_the_body_surface(small_avatar, body):
    assert small_avatar.num_gaussians == 6000
    assert len(small_avatar.free) > 0 and len(small_avatar.bound) > 0
    g = pose_with_params(small_avatar)
    v = body.shaped_vertices()
    surface = torch.cat([v, v[torch.as_tensor(body.faces)].mean(1)])
    # every Gaussian lies on the skin: near a vertex or a triangle's centre
    d = torch.cdist(g.means, surface).min(1).values
    assert d.max() < 0.03
    # and the skin is covered: most vertices have a Gaussian nearby
    cover = torch.cdist(v[::7], g.means).min(1).values
    assert (cover < 0.03).float().mean() > 0.95


def test_hands_and_face_are_mesh_bound(small_avatar, body):
    faces = torch.as_tensor(body.faces)[small_avatar.bound.faces]
    regions = body.regions()
    in_hands_or_face = torch.as_tensor(regions["hands"] | regions["face"])[faces].all(1)
    assert in_hands_or_face.all()


def test_rest_transforms_leave_the_avatar_in_place(small_avatar):
    eye = torch.eye(4).expand(55, 4, 4)
    rest = pose_with_transforms(small_avatar, eye)
    params = pose_with_params(small_avatar)
    torch.testing.assert_close(rest.means, params.means, atol=1e-5, rtol=0)


def test_transforms_from_blender_equal_smplx_parameters(small_avatar, body):
    g = torch.Generator().manual_seed(3)
    pose = dict(global_orient=torch.randn(3, generator=g) * 0.5, body_pose=torch.randn(63, generator=g) * 0.3,
                left_hand_pose=torch.randn(45, generator=g) * 0.3, jaw_pose=torch.tensor([0.3, 0, 0]))
    expression = torch.randn(body.num_expression, generator=g)
    transl = torch.tensor([0.1, 0.2, -0.3])
    a = pose_with_params(small_avatar, expression=expression, transl=transl, **pose)
    full = body.full_pose(1, **pose)
    rot = body.local_rotations(full)
    _, transforms = body.forward_kinematics(rot, body.rest_joints(small_avatar.betas), transl[None])
    b = pose_with_transforms(small_avatar, transforms[0], expression, rot[0])
    torch.testing.assert_close(a.means, b.means, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.quats, b.quats, atol=2e-4, rtol=0)  # float64 host FK vs float32 torch FK


def test_a_rigid_turn_turns_positions_and_orientations(small_avatar):
    angle = math.pi / 2
    rest = pose_with_params(small_avatar)
    turned = pose_with_params(small_avatar, global_orient=np.array([0.0, angle, 0.0]))
    R = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # 90 degrees about +Y
    pelvis = small_avatar.body.rest_joints(small_avatar.betas)[0]
    expected = (rest.means - pelvis) @ R.T + pelvis
    torch.testing.assert_close(turned.means, expected, atol=1e-4, rtol=0)
    m_rest, m_turned = _quat_to_matrix(rest.quats), _quat_to_matrix(turned.quats)
    torch.testing.assert_close(m_turned, R @ m_rest, atol=1e-4, rtol=0)
    torch.testing.assert_close(turned.scales, rest.scales)


def test_scaled_armature_scales_the_gaussians(small_avatar):
    scale = torch.eye(4) * 2.0
    scale[3, 3] = 1.0
    g = pose_with_transforms(small_avatar, scale.expand(55, 4, 4))
    rest = pose_with_transforms(small_avatar, torch.eye(4).expand(55, 4, 4))
    torch.testing.assert_close(g.means, rest.means * 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.scales, rest.scales * 2, atol=1e-5, rtol=1e-5)


def test_expression_and_jaw_move_the_face_gaussians_only(small_avatar, body):
    rest = pose_with_params(small_avatar)
    e = torch.zeros(body.num_expression)
    e[0] = 3.0  # jaw open
    smiled = pose_with_params(small_avatar, expression=e)
    moved = (smiled.means - rest.means).norm(dim=1) > 1e-4
    n_free = len(small_avatar.free)
    assert moved[n_free:].any(), "mesh-bound face Gaussians follow the expression"
    assert not moved[:n_free].any(), "free Gaussians do not"
    jaw = pose_with_params(small_avatar, jaw_pose=np.array([0.4, 0.0, 0.0]))
    assert ((jaw.means - rest.means).norm(dim=1) > 1e-3)[n_free:].any()


def test_bad_pose_inputs_are_refused(small_avatar):
    with pytest.raises(PoseError, match=r"\(55, 4, 4\)"):
        pose_with_transforms(small_avatar, torch.eye(4).expand(52, 4, 4))
    bad = torch.eye(4).repeat(55, 1, 1)
    bad[3, 0, 0] = float("nan")
    with pytest.raises(PoseError, match="NaN"):
        pose_with_transforms(small_avatar, bad)
    with pytest.raises(ValueError, match="transl"):
        pose_with_params(small_avatar, transl=np.array([np.inf, 0, 0]))


def test_zero_gaussians_is_an_error(body):
    with pytest.raises(AvatarInitError, match="at least one Gaussian"):
        init_template_avatar(body, 0)


def test_quaternion_helpers_agree_with_matrices():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(100, 4, generator=g)
    q = q / q.norm(dim=1, keepdim=True)
    m = _quat_to_matrix(q)
    back = matrix_to_quaternion(m)
    torch.testing.assert_close(_quat_to_matrix(back), m, atol=1e-5, rtol=0)
    q2 = torch.randn(100, 4, generator=g)
    torch.testing.assert_close(_quat_to_matrix(quaternion_multiply(q, q2)), m @ _quat_to_matrix(q2), atol=1e-5, rtol=0)


# ---- avatar folders ---------------------------------------------------------------------------

def test_avatar_folder_round_trip(avatar_dir, small_avatar):
    assert sorted(p.name for p in avatar_dir.iterdir()) == ["avatar.json", "gaussians.safetensors", "preview.png"]
    meta = json.loads((avatar_dir / "avatar.json").read_text())
    assert meta["format_version"] == 1 and meta["gaussians"]["total"] == 6000
    assert meta["body_model"]["kind"] == "template"
    loaded = load_avatar(avatar_dir)
    a, b = pose_with_params(small_avatar), pose_with_params(loaded)
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.colors, b.colors)


def _copy(avatar_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(avatar_dir, dst)
    return dst


def test_missing_and_corrupt_avatar_folders_are_named(avatar_dir, tmp_path):
    with pytest.raises(AvatarFileError, match="does not exist"):
        load_avatar(tmp_path / "nowhere")
    d = _copy(avatar_dir, tmp_path)
    (d / "avatar.json").write_text("{ not json")
    with pytest.raises(AvatarFileError, match="avatar.json is corrupt"):
        load_avatar(d)
    shutil.rmtree(d)
    d = _copy(avatar_dir, tmp_path)
    meta = json.loads((d / "avatar.json").read_text())
    meta["format_version"] = 99
    (d / "avatar.json").write_text(json.dumps(meta))
    with pytest.raises(AvatarFileError, match="newer"):
        load_avatar(d)
    shutil.rmtree(d)
    d = _copy(avatar_dir, tmp_path)
    data = (d / "gaussians.safetensors").read_bytes()
    (d / "gaussians.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AvatarFileError, match="gaussians.safetensors is corrupt"):
        load_avatar(d)
    (d / "gaussians.safetensors").unlink()
    with pytest.raises(AvatarFileError, match="gaussians.safetensors is missing"):
        load_avatar(d)


def _tensor_edit(key: str, change):
    def edit(tensors: dict) -> None:
        tensors[key] = change(tensors[key])
    return edit


CRAFTED_TENSORS = {
    "joint_out_of_range": (_tensor_edit("free.skin_joints", lambda t: t.index_fill(0, torch.tensor([3]), 55)),
                           "free.skin_joints holds indices from 0 to 55, but the body model"),
    "joint_negative": (_tensor_edit("free.skin_joints", lambda t: t.index_fill(0, torch.tensor([0]), -7)),
                       "free.skin_joints holds indices from -7"),
    "face_out_of_range": (_tensor_edit("bound.faces", lambda t: t + 10 ** 6), "bound.faces holds indices"),
    "means_shape": (_tensor_edit("free.means", lambda t: t[:, :2].contiguous()), "free.means has shape"),
    "joints_as_floats": (_tensor_edit("free.skin_joints", lambda t: t.float()), "free.skin_joints is float32"),
    "weights_as_ints": (_tensor_edit("free.skin_weights", lambda t: t.long()), "free.skin_weights is int64"),
    "nan_scales": (_tensor_edit("bound.log_scales", lambda t: t.index_fill(0, torch.tensor([1]), float("nan"))),
                   "bound.log_scales contains NaN"),
    "betas_nan": (_tensor_edit("betas", lambda t: torch.full_like(t, float("inf"))), "tensor betas must be"),
    "betas_too_many": (_tensor_edit("betas", lambda t: torch.zeros(5000)), "tensor betas must be at most"),
    "opacity_rows": (_tensor_edit("free.opacity_logits", lambda t: t[:-1].contiguous()), "free.opacity_logits has"),
}


@pytest.mark.parametrize("name", list(CRAFTED_TENSORS))
def test_crafted_avatar_tensors_are_refused_before_posing(avatar_dir, tmp_path, name):
    """Out-of-range indices load today and fail in posing (on CUDA a device-side assert that
    poisons the process): every tensor's shape, dtype, range and values are checked on load."""
    from safetensors.torch import load_file, save_file

    edit, message = CRAFTED_TENSORS[name]
    d = _copy(avatar_dir, tmp_path)
    tensors = load_file(str(d / "gaussians.safetensors"))
    edit(tensors)
    save_file(tensors, str(d / "gaussians.safetensors"))
    with pytest.raises(AvatarFileError) as exc:
        load_avatar(d)
    assert message in str(exc.value) and str(d) in str(exc.value)


CRAFTED_TEXT = {   # avatar.json edited as text: values json.dumps would not write
    "nan_setting": (lambda text: text.replace('"settings": {', '"settings": {"guidance": NaN, ', 1), "NaN"),
    "overflowing_beta": (lambda text: text.replace('"betas": [', '"betas": [1e999, ', 1), "too large"),
    "huge_int": (lambda text: text.replace('"seed": ', '"seed": 1' + "0" * 30 + ', "was": ', 1), "out of range"),
}
CRAFTED_META = {   # avatar.json edited as data
    "seed_text": (lambda meta: dict(meta, seed="1"), "'seed' must be an integer"),
    "count_text": (lambda meta: dict(meta, gaussians=dict(meta["gaussians"], free="6000")), "gaussians.free must be"),
    "count_negative": (lambda meta: dict(meta, gaussians=dict(meta["gaussians"], bound=-1)), "gaussians.bound must be"),
    "total_mismatch": (lambda meta: dict(meta, gaussians=dict(meta["gaussians"], total=1)), "not free + bound"),
    "kind_alien": (lambda meta: dict(meta, body_model=dict(meta["body_model"], kind="alien")), "body_model.kind"),
    "no_body": (lambda meta: {k: v for k, v in meta.items() if k != "body_model"}, "'body_model' is missing"),
    "settings_list": (lambda meta: dict(meta, settings=[1, 2]), "'settings' must be an object"),
    "deep": (lambda meta: dict(meta, settings={"a": json.loads("[" * 40 + "]" * 40)}), "more than 32 deep"),
}


@pytest.mark.parametrize("name", list(CRAFTED_TEXT) + list(CRAFTED_META))
def test_crafted_avatar_descriptions_are_refused(avatar_dir, tmp_path, name):
    """avatar.json's numbers finite (NaN and 1e999 once broke every later server reply that
    carried them) and its fields typed."""
    d = _copy(avatar_dir, tmp_path)
    text = (d / "avatar.json").read_text()
    if name in CRAFTED_TEXT:
        edit, message = CRAFTED_TEXT[name]
        text = edit(text)
    else:
        edit, message = CRAFTED_META[name]
        text = json.dumps(edit(json.loads(text)))
    (d / "avatar.json").write_text(text)
    with pytest.raises(AvatarFileError) as exc:
        load_avatar(d)
    assert message in str(exc.value) and "avatar.json" in str(exc.value)


def test_avatar_json_is_written_without_nan(small_avatar, tmp_path):
    import dataclasses

    bad = dataclasses.replace(small_avatar, meta=dataclasses.replace(small_avatar.meta, settings={"x": float("nan")}))
    with pytest.raises(AvatarFileError, match="NaN or infinite"):
        save_avatar(bad, tmp_path / "bad", preview=np.zeros((4, 4, 3), np.uint8))
    assert not (tmp_path / "bad").exists() and list(tmp_path.iterdir()) == []


def test_avatar_made_on_real_smplx_needs_that_model(avatar_dir, tmp_path):
    d = _copy(avatar_dir, tmp_path)
    meta = json.loads((d / "avatar.json").read_text())
    meta["body_model"].update(kind="smplx", name="SMPLX_NEUTRAL_2020.npz")
    (d / "avatar.json").write_text(json.dumps(meta))
    with pytest.raises(AvatarFileError, match="SMPLX_NEUTRAL_2020.npz.*DREAMWALTZ_SMPLX"):
        load_avatar(d)


def test_failed_save_leaves_the_old_folder_untouched(avatar_dir, small_avatar, tmp_path, monkeypatch):
    d = _copy(avatar_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    import backend.avatar.preview as preview

    def broken(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(preview, "render_preview", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_avatar(small_avatar, d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"], "no staging folder left behind"


# ---- commands -----------------------------------------------------------------------------------

def test_avatar_init_and_render_commands(tmp_path):
    av = tmp_path / "av"
    run_backend("avatar", "init", "--out", str(av), "--gaussians", "3000", check=True)
    assert load_avatar(av).num_gaussians == 3000
    frames = tmp_path / "frames"
    proc = run_backend("render", "--avatar", str(av), "--motion", "builtin:dance", "--out", str(frames),
                       "--width", "96", "--height", "128", "--frames", "0:3", "--seconds", "1", "--alpha", check=True)
    pngs = sorted(frames.glob("*.png"))
    assert [p.name for p in pngs] == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    from PIL import Image

    img = np.asarray(Image.open(pngs[1]))
    assert img.shape == (128, 96, 4)
    assert img[..., 3].max() == 255 and img[..., 3].min() == 0, "the avatar is drawn and the background is clear"
    assert "ms/frame" in proc.stderr
    video = tmp_path / "clip.mp4"
    run_backend("render", "--avatar", str(av), "--motion", "builtin:dance", "--out", str(video),
                "--width", "64", "--height", "64", "--seconds", "0.5", "--camera", "orbit", check=True)
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    assert meta["size"] == (64, 64) and meta["fps"] == 30
    assert sum(1 for _ in reader) == 15


def test_render_command_reports_bad_input_in_one_line(tmp_path, avatar_dir):
    proc = run_backend("render", "--avatar", str(tmp_path / "missing"), "--motion", "builtin:dance",
                       "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: avatar folder")
    proc = run_backend("render", "--avatar", str(avatar_dir), "--motion", "builtin:dance",
                       "--out", str(tmp_path / "o"), "--frames", "500:600")
    assert proc.returncode == 1 and "selects no frames" in proc.stderr


def test_export_ply_canonical_and_posed(tmp_path, avatar_dir):
    from backend.ply import read_ply

    rest = tmp_path / "rest.ply"
    run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(rest), check=True)
    posed = tmp_path / "posed.ply"
    run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(posed),
                "--motion", "builtin:dance", "--frame", "20", check=True)
    a, b = read_ply(rest), read_ply(posed)
    assert len(a) == len(b) == 6000
    assert (a.means - b.means).norm(dim=1).max() > 0.05
    raw = rest.read_bytes()
    header = raw[: raw.index(b"end_header")].decode("latin-1")
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    assert props == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
                     *[f"f_rest_{i}" for i in range(45)], "opacity",
                     "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def test_export_to_web_formats_and_other_frames(tmp_path, avatar_dir):
    from backend.gsio import read_gaussians

    glb = tmp_path / "chef.glb"
    run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(glb), check=True)
    colmap = tmp_path / "chef.ply"
    run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(colmap), "--up=-y", check=True)
    a, b = read_gaussians(glb), read_gaussians(colmap)
    assert len(a) == len(b) == 6000 and a.up == "y" and b.up == "-y"
    np.testing.assert_allclose(b.means, a.means * [1, -1, -1], atol=1e-5)
    bad = run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(tmp_path / "x.spz"), "--up=-y")
    assert bad.returncode != 0 and "Y up by specification" in bad.stderr and not (tmp_path / "x.spz").exists()
