"""The Motion type: joint order, time (duration, resampling, trimming), validation, rotations.

These run on synthetic motions whose correct answer is known in closed form, so they can
fail for the reasons users care about: a clip that plays at the wrong speed, a rotation that
takes the long way round, a frame that silently disappears.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.motion import CameraTrack, Motion, MotionError
from backend.motion.rotations import aa_to_quat, mat_to_aa, quat_to_aa, quat_to_mat


def rodrigues(aa):
    """Independent axis-angle -> matrix (not the package's own code path)."""
    aa = np.asarray(aa, float)
    th = np.linalg.norm(aa)
    if th < 1e-12:
        return np.eye(3)
    k = aa / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * K + (1 - math.cos(th)) * K @ K


def rot_angle_between(a, b):
    """Angle (rad) of the relative rotation between two axis-angles."""
    R = rodrigues(a).T @ rodrigues(b)
    return math.acos(max(-1.0, min(1.0, (np.trace(R) - 1) / 2)))


def make_motion(n=10, fps=30.0, expr=0, seed=0, **kw):
    rng = np.random.default_rng(seed)
    fp = rng.normal(0, 0.3, (n, 55, 3)).astype(np.float32)
    return Motion.from_full_pose(fps, fp, rng.normal(0, 1, (n, 3)), rng.normal(0, 1, (n, expr)), **kw)


def spinning(n, fps, omega=1.0, axis=(0, 1, 0)):
    """Root turning at `omega` rad/s about `axis`, walking 1 m/s along x, smiling linearly."""
    t = np.arange(n) / fps
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    fp = np.zeros((n, 55, 3), np.float32)
    fp[:, 0] = (omega * t)[:, None] * axis
    fp[:, 18] = (0.5 * omega * t)[:, None] * np.array([0, 0, 1.0])    # left elbow bends
    transl = np.stack([t, np.full(n, 0.9), np.zeros(n)], 1)
    return Motion.from_full_pose(fps, fp, transl, np.stack([t, -t], 1))


# ---------------------------------------------------------------------------- structure
def test_full_pose_is_in_smplx_joint_order():
    n = 3
    vals = {k: np.full(shape, i + 1, np.float32) for i, (k, shape) in enumerate([
        ("global_orient", (n, 3)), ("body_pose", (n, 21, 3)), ("jaw_pose", (n, 3)),
        ("leye_pose", (n, 3)), ("reye_pose", (n, 3)), ("left_hand_pose", (n, 15, 3)),
        ("right_hand_pose", (n, 15, 3))])}
    m = Motion(fps=30, expression=np.zeros((n, 0)), transl=np.zeros((n, 3)), **vals)
    fp = m.full_pose
    assert fp.shape == (n, 55, 3)
    expected = [1] + [2] * 21 + [3, 4, 5] + [6] * 15 + [7] * 15
    assert fp[0, :, 0].tolist() == expected
    back = Motion.from_full_pose(30, fp, m.transl)
    for k in vals:
        np.testing.assert_array_equal(getattr(back, k), vals[k])


def test_duration_is_frames_over_fps():
    m = make_motion(n=90, fps=30)
    assert m.num_frames == 90 and m.duration == pytest.approx(3.0)


# ---------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("src,dst", [(120, 30), (60, 24), (30, 25), (30, 29.97), (120.00004577636719, 30),
                                     (24, 60), (29.97, 30)])
@pytest.mark.parametrize("n", [1, 2, 601, 1000])
def test_resample_keeps_duration_within_one_frame(src, dst, n):
    m = make_motion(n=n, fps=src)
    r = m.resample(dst)
    assert r.fps == dst
    assert abs(r.duration - m.duration) <= 1.0 / dst + 1e-9
    assert r.num_frames >= 1
    r.validate()


@pytest.mark.parametrize("src,dst", [(120, 30), (60, 24), (30, 25), (30, 29.97), (24, 60)])
def test_resample_keeps_speed_not_decimation(src, dst):
    """Frame k must show the pose at k/dst seconds: same angular speed, same walking speed."""
    omega = 1.3
    m = spinning(int(4 * src), src, omega)
    r = m.resample(dst)
    t = np.arange(r.num_frames) / dst
    inside = t <= (m.num_frames - 1) / src          # beyond the last source frame it holds
    for k in np.nonzero(inside)[0]:
        assert rot_angle_between(r.global_orient[k], [0, omega * t[k], 0]) < 1e-4
        assert rot_angle_between(r.body_pose[k, 17], [0, 0, 0.5 * omega * t[k]]) < 1e-4
    np.testing.assert_allclose(r.transl[inside, 0], t[inside], atol=1e-5)
    np.testing.assert_allclose(r.expression[inside, 1], -t[inside], atol=1e-5)


def test_resample_120_to_30_copies_every_fourth_frame_exactly():
    m = make_motion(n=120, fps=120)
    r = m.resample(30)
    np.testing.assert_array_equal(r.full_pose, m.full_pose[::4])
    np.testing.assert_array_equal(r.transl, m.transl[::4])


def test_slerp_midpoint_hand_computed():
    """0.9·pi about X and 0.9·pi about Y: the slerp midpoint, computed by hand, is a rotation
    of 2·acos(2c / sqrt(4c² + 2s²)) about (1, 1, 0)/√2 with c = cos(0.45π), s = sin(0.45π).
    (Lerping the axis-angles would give 0.9π/√2·... = 1.999 rad, which this rejects.)"""
    fp = np.zeros((2, 55, 3), np.float32)
    fp[0, 0] = [0.9 * np.pi, 0, 0]
    fp[1, 0] = [0, 0.9 * np.pi, 0]
    m = Motion.from_full_pose(1.0, fp, np.zeros((2, 3)))
    r = m.resample(2.0)                       # samples at t = 0, 0.5, 1.0, 1.5 s
    assert r.num_frames == 4
    c, s = math.cos(0.45 * math.pi), math.sin(0.45 * math.pi)
    angle = 2 * math.acos(2 * c / math.sqrt(4 * c * c + 2 * s * s))
    expected = angle * np.array([1, 1, 0]) / math.sqrt(2)
    np.testing.assert_allclose(r.global_orient[1], expected, atol=1e-5)
    assert angle == pytest.approx(2.7006, abs=1e-3)
    np.testing.assert_allclose(r.global_orient[2], fp[1, 0], atol=1e-6)
    np.testing.assert_allclose(r.global_orient[3], fp[1, 0], atol=1e-6)   # held past the end


def test_slerp_takes_the_short_way_round():
    """+170° and -170° about Z are 20° apart: halfway is 180°, not the 0° a naive blend gives."""
    fp = np.zeros((2, 55, 3), np.float32)
    fp[0, 0] = [0, 0, math.radians(170)]
    fp[1, 0] = [0, 0, math.radians(-170)]
    r = Motion.from_full_pose(1.0, fp, np.zeros((2, 3))).resample(2.0)
    assert rot_angle_between(r.global_orient[1], [0, 0, math.pi]) < 1e-5


def test_resample_camera_slerps_orientation_and_lerps_centre():
    n = 2
    w2c = np.tile(np.eye(4), (n, 1, 1))
    R1 = rodrigues([0, math.radians(60), 0])            # camera-to-world rotation at frame 1
    c1 = np.array([2.0, 0.0, 4.0])
    w2c[1, :3, :3] = R1.T
    w2c[1, :3, 3] = -R1.T @ c1
    K = np.tile(np.diag([1000.0, 1000.0, 1.0]), (n, 1, 1))
    K[1, 0, 0] = K[1, 1, 1] = 2000.0
    m = make_motion(n=2, fps=1.0).replace(camera=CameraTrack(w2c, K, 640, 480))
    r = m.resample(2.0)
    mid = r.camera.world_to_camera[1]
    Rc2w = mid[:3, :3].T
    centre = -Rc2w @ mid[:3, 3]
    np.testing.assert_allclose(Rc2w, rodrigues([0, math.radians(30), 0]), atol=1e-9)
    np.testing.assert_allclose(centre, c1 / 2, atol=1e-9)
    assert r.camera.K[1, 0, 0] == pytest.approx(1500.0)
    assert (r.camera.width, r.camera.height) == (640, 480)


def test_resample_rejects_bad_fps():
    with pytest.raises(MotionError, match="fps"):
        make_motion().resample(0)
    with pytest.raises(MotionError, match="fps"):
        make_motion().resample(float("nan"))


# ---------------------------------------------------------------------------- trimming
def test_trim_frames_and_seconds():
    m = make_motion(n=100, fps=50)
    a = m.trim(10, 60)
    assert a.num_frames == 50
    np.testing.assert_array_equal(a.full_pose, m.full_pose[10:60])
    b = m.trim(0.2, 1.2, unit="seconds")
    np.testing.assert_array_equal(b.full_pose, a.full_pose)
    assert m.trim(end=5).num_frames == 5
    assert m.trim(start=95).num_frames == 5
    assert m.trim(start=90, end=1000).num_frames == 10       # end clamps to the clip


@pytest.mark.parametrize("start,end", [(50, 50), (60, 10), (-1, 5), (200, None)])
def test_trim_rejects_empty_or_negative_ranges(start, end):
    with pytest.raises(MotionError, match="trim"):
        make_motion(n=100).trim(start, end)


def test_trim_carries_the_camera():
    n = 6
    cam = CameraTrack(np.tile(np.eye(4), (n, 1, 1)), np.tile(np.eye(3), (n, 1, 1)))
    cam.world_to_camera[:, 0, 3] = np.arange(n)
    m = make_motion(n=n).replace(camera=cam).trim(2, 4)
    assert m.camera.world_to_camera[:, 0, 3].tolist() == [2, 3]


# ---------------------------------------------------------------------------- validation
def test_validate_names_the_key_and_shape():
    m = make_motion(n=5)
    bad = m.replace(body_pose=np.zeros((5, 23, 3), np.float32))
    with pytest.raises(MotionError, match=r"body_pose.*\(5, 21, 3\).*\(5, 23, 3\)"):
        bad.validate("clip.npz")
    with pytest.raises(MotionError, match="clip.npz"):
        bad.validate("clip.npz")


def test_validate_refuses_nan_and_suggests_repair():
    m = make_motion(n=5)
    t = m.transl.copy()
    t[3, 1] = np.inf
    with pytest.raises(MotionError, match=r"transl.*frame 3.*repair"):
        m.replace(transl=t).validate()


def test_validate_refuses_zero_frames_and_bad_fps():
    with pytest.raises(MotionError, match="at least 1 frame"):
        make_motion(n=0).validate()
    with pytest.raises(MotionError, match="fps"):
        make_motion(n=3, fps=-1).validate()


def test_one_frame_is_a_valid_still_pose():
    m = make_motion(n=1, fps=30).validate()
    assert m.resample(24).num_frames == 1


def test_camera_must_be_a_rotation():
    n = 2
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, 0, 0] = 3.0
    m = make_motion(n=n).replace(camera=CameraTrack(w2c, np.tile(np.eye(3), (n, 1, 1))))
    with pytest.raises(MotionError, match="camera.world_to_camera"):
        m.validate()


# ---------------------------------------------------------------------------- rotations
angles = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.tuples(angles, angles, angles))
def test_axis_angle_round_trips_and_matches_rodrigues(v):
    aa = np.array(v)
    if np.linalg.norm(aa) > 3.1:
        aa = aa / np.linalg.norm(aa) * 3.1
    np.testing.assert_allclose(quat_to_mat(aa_to_quat(aa)), rodrigues(aa), atol=1e-9)
    np.testing.assert_allclose(quat_to_aa(aa_to_quat(aa)), aa, atol=1e-7)
    np.testing.assert_allclose(mat_to_aa(rodrigues(aa)), aa, atol=1e-6)
