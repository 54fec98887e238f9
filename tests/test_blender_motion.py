"""Motion import options in real Blender: the source frame rate for files without one, the up
axis (detected from the body, AMASS layout included, or overridden) and the loader's notes."""

from __future__ import annotations

import numpy as np

from .blender import run_blender
from .test_blender_addon import _quat

Z_UP = "amass_npz/ccrpRepo__robot_retargeter__C17_-_run_change_direction_stageii.npz"  # SMPL-X, Z-up, 120 fps
DEMO_60 = "smplx265_npy/Yukun-Huang__DreamWaltz-G__aist.npy"                          # 265 columns, 60 fps


def _write_y_up_smplx_npz(path, motion) -> None:
    """The same motion as an AMASS-layout SMPL-X .npz whose world is Y-up (as many exports are)."""
    n = motion.num_frames
    poses = np.concatenate([motion.global_orient, motion.body_pose.reshape(n, -1), motion.jaw_pose,
                            motion.leye_pose, motion.reye_pose, motion.left_hand_pose.reshape(n, -1),
                            motion.right_hand_pose.reshape(n, -1)], axis=1)
    np.savez(path, poses=poses, trans=motion.transl, mocap_frame_rate=motion.fps, gender="neutral",
             betas=np.zeros(10), surface_model_type="smplx")


def test_up_axis_source_rate_and_notes(avatar_dir, body, shared_data, tmp_path):
    from backend.motion import load_motion

    z_up = shared_data / "motions" / Z_UP
    reference = load_motion(z_up, body_model=body)
    y_up = tmp_path / "y_up_smplx.npz"
    _write_y_up_smplx_npz(y_up, reference)
    demo = shared_data / "motions" / DEMO_60
    result = run_blender(f"""
        from dreamwaltz_blender.rig import JOINTS_KEY
        scene = bpy.context.scene
        scene.render.fps = 30
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        arm = bpy.context.active_object
        def pelvis(frame):
            scene.frame_set(frame)
            return list(arm.pose.bones["pelvis"].rotation_quaternion)
        out = {{}}
        for name, path, kw in (("z_up", {str(z_up)!r}, {{}}), ("y_up", {str(y_up)!r}, {{}}),
                               ("y_up_as_z", {str(y_up)!r}, {{"up_axis": "Z"}})):
            assert bpy.ops.dreamwaltz.import_motion(filepath=path, **kw) == {{"FINISHED"}}
            out[name] = [pelvis(scene.frame_start + f) for f in (0, 10, 20)]
        assert bpy.ops.dreamwaltz.import_motion(filepath={str(demo)!r}, use_source_fps=True) == {{"FINISHED"}}
        out["demo_default"] = [scene.render.fps / scene.render.fps_base, scene.frame_end - scene.frame_start + 1]
        assert bpy.ops.dreamwaltz.import_motion(filepath={str(demo)!r}, use_source_fps=True, source_fps=60) == {{"FINISHED"}}
        out["demo_60"] = [scene.render.fps / scene.render.fps_base, scene.frame_end - scene.frame_start + 1]
        result.update(out)
    """, tmp_path)
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(result["y_up"]) * np.asarray(result["z_up"]), -1)), 1.0,
                               atol=1e-4, err_msg="a Y-up SMPL-X .npz stands up like the Z-up original")
    expected = _quat(reference.resample(30.0).global_orient[[0, 10, 20]].astype(np.float64))
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(result["z_up"]) * expected, -1)), 1.0, atol=1e-4)
    lying = np.abs(np.sum(np.asarray(result["y_up_as_z"]) * np.asarray(result["z_up"]), -1))
    assert lying.max() < 0.95, "Up Axis overrides the detection"
    frames = load_motion(demo, body_model=body).num_frames
    assert result["demo_default"] == [30.0, frames]
    assert result["demo_60"] == [60.0, frames], "at its real rate the 60 fps demo plays in real time"
    log = result["_stdout"] + result["_stderr"]
    assert "assumed 30 fps" in log, "the loader's note is reported as a warning"
    assert "read as Y-up" in log
