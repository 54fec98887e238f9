"""Every motion format, on real files: loads, right speed, upright, right conventions.

Real files come from ../shared/data/motions (or $DREAMWALTZ_DATA/motions); formats with no
public sample (Motion-X 322, Motion-X-ReEnact, TRAM) are built here from the real motions
in their documented layouts, and checked by posing the body model: the loaded clip must put
the body where the original put it, and the camera must see it where the original did.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from backend.motion import Motion, MotionError, detect_format, load_motion, save_motion
from backend.motion.rotations import mat_to_aa

ROOT = Path(__file__).resolve().parents[1]


def motions_dir() -> Path | None:
    env = os.environ.get("DREAMWALTZ_DATA")
    base = Path(env) if env else ROOT.parent / "shared" / "data"
    path = base / "motions"
    return path if path.is_dir() else None


MOTIONS = motions_dir()
NO_DATA = "the real motion files (../shared/data/motions or $DREAMWALTZ_DATA/motions) are not on this machine"


def real_files(folder: str) -> list:
    if MOTIONS is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_DATA), id=f"{folder}-absent")]
    files = sorted((MOTIONS / folder).glob("*"))
    assert files, f"{MOTIONS / folder} is empty"
    return [pytest.param(f, id=f"{folder}/{f.name[:50]}") for f in files]


def real(folder: str, name_part: str) -> Path:
    if MOTIONS is None:
        pytest.skip(NO_DATA)
    hits = [f for f in (MOTIONS / folder).glob("*") if name_part in f.name]
    assert len(hits) == 1, (folder, name_part, hits)
    return hits[0]


ALL_REAL = real_files("amass_npz") + real_files("aist_pkl") + real_files("talkshow_pkl") + real_files("smplx265_npy")


class ShiftedBody:
    """The open template with its whole rest body moved by `offset`.

    The template's rest pelvis sits at the origin, where turning "about the pelvis" and
    "about the origin" coincide; real SMPL-X's pelvis sits ~0.35 m lower. Moving the rest
    body moves every posed joint by the same offset (rotations act relative to the pelvis),
    so this is an exact body model whose pelvis is NOT at the origin: tests run with it can
    tell a pelvis-pivot conversion from a wrong one.
    """

    def __init__(self, body, offset):
        import torch

        self._body = body
        self._offset = torch.tensor(offset, dtype=torch.float32)
        self.num_betas = body.num_betas
        self.num_expression = body.num_expression

    def hand_pca(self, side):
        return self._body.hand_pca(side)

    def rest_joints(self, betas=None):
        return self._body.rest_joints(betas) + self._offset

    def forward(self, **kw):
        out = self._body.forward(**kw)
        out.joints = out.joints + self._offset
        return out


@pytest.fixture(scope="module")
def bm():
    from backend.body import BodyModel

    return ShiftedBody(BodyModel.load(), (0.003, -0.35, 0.012))


# ---------------------------------------------------------------------------- helpers
def rodrigues(aa):
    aa = np.asarray(aa, float)
    th = np.linalg.norm(aa, axis=-1, keepdims=True)[..., None]
    k = aa / np.maximum(np.linalg.norm(aa, axis=-1, keepdims=True), 1e-12)
    K = np.zeros(aa.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K


FLIP = np.diag([1.0, -1.0, -1.0])          # 180° about X: Y-up world <-> OpenCV-like y-down world
ZUP_TO_YUP = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])


def betas_for(bm, betas):
    if betas is None:
        return None
    b = np.zeros(bm.num_betas, np.float32)
    k = min(len(betas), bm.num_betas)
    b[:k] = betas[:k]
    return b


def pelvis(bm, betas=None):
    return bm.rest_joints(betas_for(bm, betas)).detach().cpu().numpy()[0].astype(np.float64)


def pose_joints(bm, idx=None, *, betas=None, **p):
    """Posed joints (k, 55, 3) from SMPL-X parameters (arrays with a leading frame axis)."""
    n = len(p["global_orient"])
    idx = np.arange(n) if idx is None else np.asarray(idx)
    args = {k: np.asarray(v, np.float32)[idx].reshape(len(idx), -1) for k, v in p.items()}
    return bm.forward(betas=betas_for(bm, betas), **args).joints.detach().cpu().numpy().astype(np.float64)


def motion_joints(bm, m: Motion, idx=None):
    return pose_joints(bm, idx, betas=m.betas, global_orient=m.global_orient, body_pose=m.body_pose,
                       left_hand_pose=m.left_hand_pose, right_hand_pose=m.right_hand_pose, jaw_pose=m.jaw_pose,
                       leye_pose=m.leye_pose, reye_pose=m.reye_pose, transl=m.transl)


def sample_idx(n, k=40):
    return np.unique(np.linspace(0, n - 1, min(k, n)).astype(int))


def assert_upright(bm, m: Motion):
    """Head (joint 15) above pelvis (joint 0) along +Y, median over the clip's frames."""
    J = motion_joints(bm, m, sample_idx(m.num_frames))
    dy = J[:, 15, 1] - J[:, 0, 1]
    assert np.median(dy) > 0.3, f"head is not above the pelvis: median dy {np.median(dy):.3f}"
    return J


def look_at(centre, target):
    """OpenCV world-to-camera (x right, y down, z forward) for a Y-up world."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ centre
    return w2c


def orbit_cameras(targets, radius=3.0, height=0.4, turn=0.6):
    n = len(targets)
    out = np.zeros((n, 4, 4))
    for i, tgt in enumerate(targets):
        a = turn * i / max(n - 1, 1)
        out[i] = look_at(tgt + np.array([radius * math.sin(a), height, radius * math.cos(a)]), tgt)
    return out


def project(K, w2c, pts):
    """(k, J, 3) world points seen by per-frame cameras -> (k, J, 2) pixels."""
    cam = np.einsum("kij,kpj->kpi", w2c[:, :3, :3], pts) + w2c[:, None, :3, 3]
    uvw = np.einsum("kij,kpj->kpi", K, cam)
    return uvw[..., :2] / uvw[..., 2:]


def move_params(bm, m: Motion, R, t, betas=None):
    """SMPL-X orient/transl of `m` after the world moves by x' = R x + t (R per frame or fixed).

    Written out here, independently of the package (and checked by posing the body)."""
    n = m.num_frames
    R = np.broadcast_to(R, (n, 3, 3))
    t = np.broadcast_to(np.asarray(t, float), (n, 3))
    J0 = pelvis(bm, betas)
    orient = mat_to_aa(R @ rodrigues(m.global_orient.astype(float)))
    transl = np.einsum("nij,nj->ni", R, m.transl + J0) + t - J0
    return orient, transl


def clip(bm, name_part="C17", folder="amass_npz", frames=45, fps=30.0):
    return load_motion(real(folder, name_part), body_model=bm, fps=fps).trim(0, frames)


# ---------------------------------------------------------------------------- real files
AMASS_FPS = {"SynTalker": 30.0, "dmpl_sample": 120.00004577636719}


@pytest.mark.parametrize("path", real_files("amass_npz"))
def test_amass_files_load(path, bm):
    m = load_motion(path, body_model=bm)
    raw = np.load(path, allow_pickle=False)
    n = raw["poses"].shape[0]
    assert m.source_format == "amass"
    assert m.num_frames == n and m.body_pose.shape == (n, 21, 3) and m.left_hand_pose.shape == (n, 15, 3)
    expected_fps = next((v for k, v in AMASS_FPS.items() if k in path.name), 120.0)
    assert m.fps == pytest.approx(expected_fps, abs=1e-9)
    assert m.duration == pytest.approx(n / expected_fps)
    assert m.gender in ("male", "female", "neutral")
    if raw["poses"].shape[1] == 156:
        assert m.source_up_axis == "Z" and m.betas is None
        # SMPL-H hands are absolute and come straight from poses[:, 66:156]
        np.testing.assert_allclose(m.left_hand_pose.reshape(n, 45), raw["poses"][:, 66:111], atol=1e-6)
        np.testing.assert_array_equal(m.jaw_pose, 0)
    else:
        assert m.betas is not None and len(m.betas) == raw["betas"].size


def test_amass_zup_is_turned_upright_about_the_pelvis(bm):
    """Posing the loaded (Y-up) motion must give exactly the raw Z-up pose turned by -90° about X."""
    path = real("amass_npz", "human_body_prior__amass_sample")
    m = load_motion(path, body_model=bm)
    raw = np.load(path)
    p = raw["poses"]
    idx = sample_idx(len(p), 12)
    Jz = pose_joints(bm, idx, global_orient=p[:, :3], body_pose=p[:, 3:66], left_hand_pose=p[:, 66:111],
                     right_hand_pose=p[:, 111:156], transl=raw["trans"])
    Jy = motion_joints(bm, m, idx)
    np.testing.assert_allclose(Jy, Jz @ ZUP_TO_YUP.T, atol=2e-5)


def test_amass_reads_only_the_keys_it_needs():
    """One file holds a pickled dict (np.load refuses it without allow_pickle), another NaN markers."""
    pickled = real("amass_npz", "C17")
    with np.load(pickled, allow_pickle=False) as z, pytest.raises(ValueError):
        z["markers_latent_vids"]
    assert load_motion(pickled).num_frames == 366
    nan_markers = real("amass_npz", "nghorbani__amass__amass_sample")
    with np.load(nan_markers) as z:
        assert np.isnan(z["marker_data"]).any()
    m = load_motion(nan_markers)
    assert np.isfinite(m.full_pose).all()


def test_amass_gender_bytes_and_float32():
    m = load_motion(real("amass_npz", "dmpl_sample"))
    assert m.gender == "female" and isinstance(m.gender, str)
    with np.load(real("amass_npz", "SynTalker")) as z:
        assert z["poses"].dtype == np.float32 and z["betas"].shape == (300,)


def test_beat2_style_npz_is_yup_with_mean_relative_hands(bm):
    path = real("amass_npz", "SynTalker")
    with pytest.raises(MotionError, match="body_model") as exc:
        load_motion(path)
    assert exc.value.needs_body_model
    m = load_motion(path, body_model=bm)
    assert m.source_up_axis == "Y" and m.expression.shape == (1906, 100) and m.betas.shape == (300,)
    raw = np.load(path)["poses"]
    mean = bm.hand_pca("left")[1]
    np.testing.assert_allclose(m.left_hand_pose.reshape(-1, 45), raw[:, 75:120] + mean, atol=1e-5)
    np.testing.assert_allclose(m.global_orient, raw[:, :3], atol=1e-6)     # no rotation


@pytest.mark.parametrize("path", real_files("aist_pkl"))
def test_aist_files_load(path, bm):
    m = load_motion(path, body_model=bm)
    assert m.source_format == "aist" and m.fps == 60.0 and m.source_up_axis == "Y"
    assert m.body_pose.shape[1:] == (21, 3) and m.num_expression == 0
    assert np.all(np.abs(m.transl) < 10), "translation should be metres"


def test_aist_translation_divided_by_scaling():
    from backend.motion.safe_pickle import safe_load

    path = real("aist_pkl", "transflower")
    with open(path, "rb") as f:
        raw = safe_load(f)
    m = load_motion(path)
    np.testing.assert_allclose(m.transl, raw["smpl_trans"] / raw["smpl_scaling"][0], rtol=1e-6)
    np.testing.assert_allclose(m.body_pose.reshape(-1, 63), raw["smpl_poses"][:, 3:66], atol=1e-6)
    unscaled = load_motion(real("aist_pkl", "SMPL-to-FBX"))
    assert 0.5 < np.median(unscaled.transl[:, 1]) < 3.0


@pytest.mark.parametrize("path", real_files("talkshow_pkl"))
def test_talkshow_files_load(path, bm):
    from backend.motion.safe_pickle import safe_load

    m = load_motion(path, body_model=bm)
    with open(path, "rb") as f:
        raw = safe_load(f)
    n = raw["body_pose_axis"].shape[0]
    assert m.source_format == "talkshow" and m.fps == 30.0 and m.num_frames == n
    assert m.expression.shape == (n, 100) and m.betas.shape == (300,)
    assert m.source_up_axis == "-Y"          # fitted in the camera's y-down frame
    for side in ("left", "right"):
        comps, mean = bm.hand_pca(side)
        expected = raw[f"{side}_hand_pose"] @ comps[:12] + mean
        np.testing.assert_allclose(getattr(m, f"{side}_hand_pose").reshape(n, 45), expected, atol=1e-5)


def test_talkshow_needs_a_body_model_for_its_pca_hands():
    with pytest.raises(MotionError, match="left_hand_pose") as exc:
        load_motion(real("talkshow_pkl", "SHOW__all"))
    assert exc.value.needs_body_model


@pytest.mark.parametrize("path", real_files("smplx265_npy"))
def test_smplx265_files_load(path, bm):
    raw = np.load(path)
    m = load_motion(path, body_model=bm)
    assert m.source_format == "smplx265" and m.fps == 30.0 and m.num_frames == raw.shape[0]
    assert m.expression.shape == (raw.shape[0], 100)
    assert m.source_up_axis == ("Y" if "DreamWaltz-G" in path.name else "-Y")
    np.testing.assert_allclose(m.jaw_pose, raw[:, 0:3], atol=1e-6)
    np.testing.assert_allclose(m.right_hand_pose.reshape(-1, 45), raw[:, 120:165] + bm.hand_pca("right")[1], atol=1e-5)
    assert load_motion(path, body_model=bm, source_fps=60).fps == 60.0


@pytest.mark.parametrize("path", ALL_REAL)
def test_every_real_clip_stands_upright(path, bm):
    assert_upright(bm, load_motion(path, body_model=bm))


@pytest.mark.parametrize("path", ALL_REAL)
@pytest.mark.parametrize("target", [24.0, 25.0, 29.97, 30.0])
def test_real_clip_duration_survives_resampling(path, target, bm):
    m = load_motion(path, body_model=bm)
    r = load_motion(path, body_model=bm, fps=target)
    assert r.fps == target
    assert abs(r.duration - m.duration) <= 1.0 / target + 1e-9
    # same pose at the same time: the resampled midpoint matches the source at that time
    k = r.num_frames // 2
    src = k * m.fps / target
    if abs(src - round(src)) < 1e-6:
        np.testing.assert_allclose(r.body_pose[k], m.body_pose[int(round(src))], atol=1e-5)


# ---------------------------------------------------------------------------- content detection
def test_format_detected_from_content_not_extension(tmp_path):
    pkl = tmp_path / "dance.npz"
    shutil.copy(real("aist_pkl", "transflower"), pkl)
    npz = tmp_path / "walk.pkl"
    shutil.copy(real("amass_npz", "stand"), npz)
    npy = tmp_path / "talk.bin"
    shutil.copy(real("smplx265_npy", "oliver"), npy)
    assert detect_format(pkl) == "aist" and load_motion(pkl).source_format == "aist"
    assert detect_format(npz) == "amass" and load_motion(npz).num_frames == 360
    assert detect_format(npy) == "smplx265"


@pytest.mark.parametrize("content,match", [
    (b"hello, not a motion\n", "unknown motion format"),
    (b"", "empty"),
    (b'{"images": []}', "ReEnact"),
])
def test_unknown_formats_are_refused_listing_supported_ones(tmp_path, content, match):
    p = tmp_path / "thing.npz"
    p.write_bytes(content)
    with pytest.raises(MotionError, match=match) as exc:
        load_motion(p)
    assert str(p) in str(exc.value)
    if content:
        for fmt in ("amass", "aist", "motionx", "talkshow", "smplx265", "reenact", "tram", "dreamwaltz"):
            assert fmt in str(exc.value)


def test_wrong_column_count_and_missing_file(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((10, 300)))
    with pytest.raises(MotionError, match=r"\(10, 300\)"):
        load_motion(p)
    with pytest.raises(MotionError, match="no such file"):
        load_motion(tmp_path / "missing.npz")


def test_wrong_shapes_name_file_key_expected_found(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, poses=np.zeros((20, 100)), trans=np.zeros((20, 3)), mocap_framerate=120.0)
    with pytest.raises(MotionError) as exc:
        load_motion(p)
    msg = str(exc.value)
    assert str(p) in msg and "poses" in msg and "156" in msg and "(20, 100)" in msg
    np.savez(p, poses=np.zeros((20, 156)), trans=np.zeros((19, 3)), mocap_framerate=120.0)
    with pytest.raises(MotionError, match=r"trans.*20 frames.*19"):
        load_motion(p)
    np.savez(p, poses=np.zeros((0, 156)), trans=np.zeros((0, 3)), mocap_framerate=120.0)
    with pytest.raises(MotionError, match="at least 1 frame"):
        load_motion(p)


def test_nan_is_refused_or_repaired_by_interpolation(tmp_path):
    src = real("amass_npz", "enesduran")
    raw = dict(np.load(src))
    poses = raw["poses"].copy()
    poses[100:103, 3:6] = np.nan                         # left hip, 3 frames
    raw["trans"] = raw["trans"].copy()
    raw["trans"][50, 2] = np.inf
    p = tmp_path / "holes.npz"
    np.savez(p, **{**raw, "poses": poses})
    with pytest.raises(MotionError, match=r"holes.npz.*(body_pose|transl).*repair"):
        load_motion(p)
    with pytest.warns(RuntimeWarning, match="repaired 10 NaN/inf"):
        m = load_motion(p, repair=True)
    assert np.isfinite(m.full_pose).all() and np.isfinite(m.transl).all()
    clean = load_motion(src)
    # the filled frames lie between their neighbours (slerp), not at zero
    a, b = clean.body_pose[99, 0], clean.body_pose[103, 0]
    mid = m.body_pose[101, 0]
    assert np.linalg.norm(mid - (a + b) / 2) < 0.05 * max(1.0, np.linalg.norm(a - b))
    np.testing.assert_allclose(m.body_pose[:100], clean.body_pose[:100], atol=1e-6)
    np.testing.assert_allclose(m.transl[50], (clean.transl[49] + clean.transl[51]) / 2, atol=1e-3)


# ---------------------------------------------------------------------------- project file
def test_project_file_round_trip_is_atomic_and_plain(tmp_path, bm):
    m = clip(bm, frames=30)
    n = m.num_frames
    from backend.motion import CameraTrack

    m = m.replace(camera=CameraTrack(orbit_cameras(m.transl.astype(float)), np.tile(np.diag([900.0, 900, 1]), (n, 1, 1)), 1920, 1080))
    out = tmp_path / "sub" / "clip.npz"
    save_motion(m, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip.npz"]      # no temp file left
    with np.load(out, allow_pickle=False) as z:
        for key in ("fps", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose",
                    "leye_pose", "reye_pose", "expression", "transl", "betas", "camera_world_to_camera", "camera_K"):
            assert key in z.files
    back = load_motion(out)
    assert back.source_format == "dreamwaltz" and back.fps == m.fps and back.gender == m.gender
    np.testing.assert_array_equal(back.full_pose, m.full_pose)
    np.testing.assert_array_equal(back.transl, m.transl)
    np.testing.assert_array_equal(back.betas, m.betas)
    np.testing.assert_allclose(back.camera.world_to_camera, m.camera.world_to_camera)
    assert (back.camera.width, back.camera.height) == (1920, 1080)
    # a failed write leaves the previous file intact
    with pytest.raises(MotionError):
        save_motion(m.replace(transl=np.full((n, 3), np.nan, np.float32)), out)
    np.testing.assert_array_equal(load_motion(out).transl, m.transl)


# ---------------------------------------------------------------------------- Motion-X 322
def write_motionx(path, m: Motion, seed=0):
    n = m.num_frames
    rng = np.random.default_rng(seed)
    a = np.zeros((n, 322), np.float32)
    a[:, 0:3] = m.global_orient
    a[:, 3:66] = m.body_pose.reshape(n, 63)
    a[:, 66:111] = m.left_hand_pose.reshape(n, 45)
    a[:, 111:156] = m.right_hand_pose.reshape(n, 45)
    a[:, 156:159] = m.jaw_pose
    a[:, 159:209] = rng.normal(0, 0.5, (n, 50))
    a[:, 209:309] = rng.normal(0, 0.5, (n, 100))
    a[:, 309:312] = m.transl
    a[:, 312:322] = (m.betas[:10] if m.betas is not None else 0)
    with open(path, "wb") as f:                     # np.save(path) would append ".npy"
        np.save(f, a)
    return a


def test_motionx_322_fixture(tmp_path, bm):
    m = clip(bm, frames=60)
    p = tmp_path / "Dance_clip1.motion"           # odd extension: detected from the 322 columns
    a = write_motionx(p, m)
    x = load_motion(p, body_model=bm)
    assert x.source_format == "motionx" and x.fps == 30.0 and x.source_up_axis == "Y"
    np.testing.assert_array_equal(x.full_pose[:, :22], m.full_pose[:, :22])
    np.testing.assert_array_equal(x.left_hand_pose, m.left_hand_pose)
    np.testing.assert_array_equal(x.expression, a[:, 159:209])
    np.testing.assert_array_equal(x.transl, m.transl)
    np.testing.assert_array_equal(x.betas, a[0, 312:322])
    assert_upright(bm, x)
    assert load_motion(p, fps=24).duration == pytest.approx(2.0, abs=1 / 24)


# ---------------------------------------------------------------------------- Motion-X-ReEnact
def write_reenact(path, bm, m: Motion, w2c, intr=(1200.0, 1180.0, 640.0, 360.0), images=True, seed=0):
    """The clip filmed by `w2c`, stored as ReEnact does, in a camera-like y-down world (FLIP·W)."""
    n = m.num_frames
    betas = np.zeros(10) if m.betas is None else np.asarray(m.betas[:10], float)
    orient, transl = move_params(bm, m.replace(betas=betas), FLIP, np.zeros(3), betas)
    flip4 = np.eye(4)
    flip4[:3, :3] = FLIP
    w2c_file = w2c @ np.linalg.inv(flip4)
    expr = np.random.default_rng(seed).normal(0, 0.3, (n, 50))
    anns = []
    for i in range(n):
        anns.append({"id": 1000 + i, "image_id": i, "smplx_params": {
            "root_orient": orient[i].tolist(), "pose_body": m.body_pose[i].reshape(-1).tolist(),
            "pose_hand": np.concatenate([m.left_hand_pose[i].reshape(-1), m.right_hand_pose[i].reshape(-1)]).tolist(),
            "pose_jaw": m.jaw_pose[i].tolist(), "face_expr": expr[i].tolist(), "face_shape": [0.0] * 100,
            "trans": transl[i].tolist(), "betas": betas.tolist()},
            "cam_params": {"cam_R": w2c_file[i, :3, :3].tolist(), "cam_T": w2c_file[i, :3, 3].tolist(),
                           "intrins": list(intr), "world_scale": 1.0}})
    anns = anns[::2] + anns[1::2]                   # stored out of order: sorted by image_id on load
    doc = {"annotations": anns}
    if images:
        doc["images"] = [{"id": i, "file_name": f"clip/{i:06d}.png", "width": 1280, "height": 720} for i in range(n)]
    Path(path).write_text(json.dumps(doc))
    # the fixture itself must put the body where the original was, flipped
    J_file = pose_joints(bm, [0, n - 1], betas=betas, global_orient=orient, body_pose=m.body_pose, transl=transl)
    J_orig = pose_joints(bm, [0, n - 1], betas=betas, global_orient=m.global_orient, body_pose=m.body_pose, transl=m.transl)
    np.testing.assert_allclose(J_file, J_orig @ FLIP.T, atol=2e-5)
    return expr, betas


@pytest.mark.parametrize("images", [True, False])
def test_reenact_json_fixture_with_camera(tmp_path, bm, images):
    m = clip(bm, frames=40)
    n = m.num_frames
    w2c = orbit_cameras(m.transl.astype(float))
    p = tmp_path / "Play_the_guqin_clip2.json"
    expr, betas = write_reenact(p, bm, m.replace(betas=None), w2c, images=images)
    x = load_motion(p, body_model=bm)
    assert x.source_format == "reenact" and x.fps == 30.0 and x.source_up_axis == "-Y"
    assert x.num_frames == n and x.expression.shape == (n, 50)
    np.testing.assert_allclose(x.expression, expr, atol=1e-6)
    assert (x.camera.width, x.camera.height) == (1280, 720)
    idx = sample_idx(n, 10)
    m0 = m.replace(betas=betas.astype(np.float32))
    J_orig = motion_joints(bm, m0, idx)
    J_new = motion_joints(bm, x, idx)
    np.testing.assert_allclose(J_new, J_orig, atol=1e-4)          # back in the original Y-up world
    np.testing.assert_allclose(x.camera.world_to_camera, w2c, atol=1e-6)
    K = x.camera.K[idx]
    assert K[0, 0, 0] == 1200.0 and K[0, 1, 1] == 1180.0 and K[0, 0, 2] == 640.0 and K[0, 1, 2] == 360.0
    np.testing.assert_allclose(project(K, x.camera.world_to_camera[idx], J_new),
                               project(K, w2c[idx], J_orig), atol=0.05)      # same pixels
    assert_upright(bm, x)


# ---------------------------------------------------------------------------- TRAM
def write_tram(folder, bm, m: Motion, w2c, frame_offset=3, drop=(), layout="flat"):
    """TRAM's files for clip `m` filmed by `w2c`: the body in camera space per frame, the camera
    as camera-to-world in a SLAM world = the first camera's frame; hps values as torch tensors."""
    import torch

    n = m.num_frames
    R_w2c, t_w2c = w2c[:, :3, :3], w2c[:, :3, 3]
    orient_c, transl_c = move_params(bm, m.replace(betas=None), R_w2c, t_w2c)
    rot = np.tile(np.eye(3), (n, 24, 1, 1))
    rot[:, 0] = rodrigues(orient_c)
    rot[:, 1:22] = rodrigues(m.body_pose.astype(float))
    keep = np.array([i for i in range(n) if i not in set(drop)])
    hps = {"pred_cam": torch.zeros(len(keep), 3), "pred_pose": torch.zeros(len(keep), 144),
           "pred_shape": torch.randn(len(keep), 10),
           "pred_rotmat": torch.tensor(rot[keep], dtype=torch.float32),
           "pred_trans": torch.tensor(transl_c[keep, None, :], dtype=torch.float32),
           "frame": torch.tensor(keep + frame_offset)}
    # SLAM world = first camera of the VIDEO (frame 0, before the track starts)
    total = n + frame_offset + 2
    cams = np.concatenate([np.repeat(w2c[:1], frame_offset, 0), w2c, np.repeat(w2c[-1:], 2, 0)])
    R0, t0 = cams[0, :3, :3], cams[0, :3, 3]
    c2w = np.linalg.inv(cams)
    cam = {"pred_cam_R": (R0 @ c2w[:, :3, :3]).astype(np.float32),
           "pred_cam_T": (np.einsum("ij,nj->ni", R0, c2w[:, :3, 3]) + t0).astype(np.float32),
           "img_focal": np.float64(1111.0), "img_center": np.array([960.0, 540.0])}
    assert cam["pred_cam_R"].shape[0] == total
    folder = Path(folder)
    hps_dir = folder / "hps" if layout == "tram" else folder
    hps_dir.mkdir(parents=True, exist_ok=True)
    np.save(hps_dir / "hps_track_0.npy", hps, allow_pickle=True)
    np.save(folder / "camera.npy", cam, allow_pickle=True)
    # check the fixture: posing the camera-space body and moving it by camera-to-world gives the original
    Jc = pose_joints(bm, [0], global_orient=orient_c, body_pose=m.body_pose, transl=transl_c)[0]
    Jw = pose_joints(bm, [0], global_orient=m.global_orient, body_pose=m.body_pose, transl=m.transl)[0]
    np.testing.assert_allclose(Jc, Jw @ R_w2c[0].T + t_w2c[0], atol=2e-5)
    return hps_dir / "hps_track_0.npy", folder / "camera.npy", cams[0]


def tram_clip(bm):
    return load_motion(real("amass_npz", "human_body_prior__amass_sample"), body_model=bm, fps=30).trim(0, 36)


@pytest.mark.parametrize("layout", ["flat", "tram"])
def test_tram_fixture_with_camera(tmp_path, bm, layout):
    m = tram_clip(bm)
    n = m.num_frames
    w2c = orbit_cameras(m.transl.astype(float) + [0, 0.2, 0], radius=4.0, height=0.3, turn=0.8)
    hps_file, cam_file, first_cam = write_tram(tmp_path / "seq", bm, m, w2c, layout=layout)
    for target in (tmp_path / "seq", hps_file, cam_file):
        x = load_motion(target, body_model=bm)
        assert x.source_format == "tram" and x.fps == 30.0 and x.num_frames == n
        assert x.source_up_axis == "-Y" and x.camera is not None
        assert (x.camera.width, x.camera.height) == (1920, 1080)
        np.testing.assert_allclose(x.camera.K[:, 0, 0], 1111.0)
    # the loaded world is the first video camera's frame turned upright (FLIP)
    idx = sample_idx(n, 10)
    J_orig = motion_joints(bm, m, idx)
    J_new = motion_joints(bm, x, idx)
    expected = (J_orig @ first_cam[:3, :3].T + first_cam[:3, 3]) @ FLIP.T
    np.testing.assert_allclose(J_new[:, :22], expected[:, :22], atol=2e-4)
    K = x.camera.K[idx]
    np.testing.assert_allclose(project(K, x.camera.world_to_camera[idx], J_new[:, :22]),
                               project(K, w2c[idx], J_orig[:, :22]), atol=0.05)
    assert_upright(bm, x)


def test_tram_track_gaps_are_interpolated(tmp_path, bm):
    m = tram_clip(bm)
    w2c = orbit_cameras(m.transl.astype(float), radius=4.0)
    write_tram(tmp_path, bm, m, w2c, drop=(10, 11))
    with pytest.warns(RuntimeWarning, match="misses 2"):
        x = load_motion(tmp_path, body_model=bm)
    assert x.num_frames == m.num_frames
    J = motion_joints(bm, x, [9, 10, 11, 12])
    # interpolated frames stay between their neighbours
    for j in (0, 15, 20):
        lo = np.minimum(J[0, j], J[3, j]) - 0.05
        hi = np.maximum(J[0, j], J[3, j]) + 0.05
        assert np.all((J[1:3, j] >= lo) & (J[1:3, j] <= hi))


def test_tram_needs_both_files(tmp_path, bm):
    m = tram_clip(bm)
    hps_file, cam_file, _ = write_tram(tmp_path, bm, m, orbit_cameras(m.transl.astype(float)))
    cam_file.unlink()
    with pytest.raises(MotionError, match="camera.npy"):
        load_motion(hps_file)


def test_npz_body_matches_the_body_model_without_torch():
    """The add-on's torch-free stand-in reads the same hand space and pelvis from the file."""
    from backend.body import BodyModel
    from backend.motion import NpzBody

    body = BodyModel.load()
    nb = NpzBody(body.path)
    b = np.random.default_rng(3).normal(size=body.num_betas)
    np.testing.assert_allclose(nb.rest_joints(b), body.rest_joints(b).detach().numpy(), atol=1e-5)
    for side in ("left", "right"):
        for a, e in zip(nb.hand_pca(side), body.hand_pca(side)):
            np.testing.assert_allclose(a, e)
    path = real("talkshow_pkl", "116212")
    np.testing.assert_allclose(load_motion(path, body_model=nb).full_pose,
                               load_motion(path, body_model=body).full_pose, atol=1e-6)
