"""The smoke flow that runs on every supported Blender: 4.2 LTS, 4.5 LTS, 5.0 and the newest 5.x.

scripts/blender_versions.sh runs the tests marked `versions` once per Blender (through
$DREAMWALTZ_TEST_BLENDER, tests/blender.py); the plain test run covers them on 5.0. Each flow
is one Blender process: register from the repository, Add Avatar, Import Motion, Set Up Plate,
F12, and the failures of the version-sensitive operators, which must leave the scene exactly
as it was. The pixels and bone rotations are checked against the backend computed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from .blender import run_blender
from .test_blender_addon import _plate, _quat

pytestmark = pytest.mark.versions

MOTION = "amass_npz/nghorbani__amass__dmpl_sample.npz"      # AMASS SMPL-H, 120 fps
SECOND = "talkshow_pkl/manvir016__TFG_final__115700-00_01_40-00_01_42.pkl"  # expressions, 30 fps


def test_smoke_flow_and_failures_that_change_nothing(avatar_dir, body, shared_data, tmp_path):
    from PIL import Image

    from backend.avatar import load_avatar, pose_with_transforms
    from backend.motion import load_motion
    from backend.render import Camera, rasterize

    width, height = 160, 120
    plate = _plate(tmp_path, width, height)
    motion, second = shared_data / "motions" / MOTION, shared_data / "motions" / SECOND
    bad = tmp_path / "not_a_motion.npz"
    bad.write_bytes(b"this is not a numpy archive")
    out = tmp_path / "frame.png"
    result = run_blender(f"""
        import numpy as np
        from dreamwaltz_blender import compat, animation, compositing
        from dreamwaltz_blender.camera import camera_to_opencv
        from dreamwaltz_blender.rig import JOINTS_KEY, skinning_transforms

        def changed(before):
            after = scene_state()
            return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))

        def refused(op, **kw):
            try:
                op(**kw)
            except RuntimeError as exc:
                return str(exc)
            return None

        scene = bpy.context.scene
        scene.render.fps = 30
        cam = scene_camera((0.3, -4.2, 0.1), (1.5708, 0.0, 0.05))
        if compat.uses_scene_tree():   # the user's own compositor, which a failure must leave alone
            scene.use_nodes = True
        else:
            user = bpy.data.node_groups.new("User Compositor", "CompositorNodeTree")
            compat.set_scene_compositor(scene, user)
        assert bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r}) == {{"FINISHED"}}
        arm = bpy.context.active_object
        names = arm[JOINTS_KEY].split(",")

        before = scene_state()
        result["bad_motion"] = refused(bpy.ops.dreamwaltz.import_motion, filepath={str(bad)!r})
        result["bad_motion_changed"] = changed(before)

        assert bpy.ops.dreamwaltz.import_motion(filepath={str(motion)!r}) == {{"FINISHED"}}
        action = arm.animation_data.action
        result["action"] = dict(name=action.name, layered=compat.is_layered(action),
                                curves=len(list(compat.action_fcurves(action))),
                                groups=sorted({{fc.group.name for fc in compat.action_fcurves(action) if fc.group}}))
        n = scene.frame_end - scene.frame_start + 1
        frames = sorted({{0, n // 2, n - 1}})
        quats, locs = [], []
        for f in frames:
            scene.frame_set(scene.frame_start + f)
            quats.append([list(arm.pose.bones[b].rotation_quaternion) for b in names])
            locs.append(list(arm.pose.bones["pelvis"].location))
        result["motion"] = dict(n=n, frames=frames, quats=quats, locs=locs)

        real_write = animation._write_curve
        calls = [0]
        def failing_write(*args, **kw):
            calls[0] += 1
            if calls[0] > 40:
                raise RuntimeError("injected failure while keying")
            return real_write(*args, **kw)
        animation._write_curve = failing_write
        before = scene_state()
        result["mid_motion"] = refused(bpy.ops.dreamwaltz.import_motion, filepath={str(second)!r})
        result["mid_motion_changed"] = changed(before)
        animation._write_curve = real_write

        before = scene_state()
        result["missing_plate"] = refused(bpy.ops.dreamwaltz.setup_plate, filepath={str(tmp_path / "none.mp4")!r})
        result["missing_plate_changed"] = changed(before)
        real_nodes = compositing._add_plate_nodes
        def failing_nodes(*args, **kw):
            real_nodes(*args, **kw)
            raise RuntimeError("injected failure while building the compositor")
        compositing._add_plate_nodes = failing_nodes
        result["mid_plate"] = refused(bpy.ops.dreamwaltz.setup_plate, filepath={str(plate)!r})
        result["mid_plate_changed"] = changed(before)
        compositing._add_plate_nodes = real_nodes

        prefs = bpy.context.preferences.addons["dreamwaltz_blender"].preferences
        prefs.python = {str(tmp_path / "no-python")!r}  # a backend that cannot start
        before = scene_state()
        result["no_backend"] = refused(bpy.ops.dreamwaltz.import_motion, filepath={str(second)!r})
        result["no_backend_changed"] = changed(before)
        prefs.python = ""

        for _ in range(2):  # set up twice: the second replaces the first
            assert bpy.ops.dreamwaltz.setup_plate(filepath={str(plate)!r}) == {{"FINISHED"}}
        result["compositor"] = scene_state()["compositor"]
        bpy.ops.dreamwaltz.use_engine()
        scene.frame_set(scene.frame_start + 1)
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGB"
        scene.render.filepath = {str(out)!r}
        bpy.ops.render.render(write_still=True)
        dg = bpy.context.evaluated_depsgraph_get()
        c = camera_to_opencv(scene, cam)
        result.update(w2c=c.world_to_camera, K=c.K, transforms=skinning_transforms(arm.evaluated_get(dg)),
                      size=[scene.render.resolution_x, scene.render.resolution_y],
                      transform=scene.view_settings.view_transform)
        import addon_utils
        addon_utils.disable("dreamwaltz_blender", default_set=True)
        result["unregistered"] = not hasattr(bpy.types, "DREAMWALTZ_OT_add_avatar")
    """, tmp_path, timeout=900)
    version = tuple(result["blender"])
    print("Blender", version)

    assert "not_a_motion.npz" in result["bad_motion"] and result["bad_motion_changed"] == []
    assert "injected failure" in result["mid_motion"]
    assert result["mid_motion_changed"] == [], "a motion that fails half-way leaves no trace"
    assert "none.mp4" in result["missing_plate"] and result["missing_plate_changed"] == []
    assert "injected failure" in result["mid_plate"]
    assert result["mid_plate_changed"] == [], "a plate that fails half-way leaves no trace"
    assert "no-python" in result["no_backend"] and "preferences" in result["no_backend"]
    assert result["no_backend_changed"] == [], "a backend that cannot start changes nothing"

    loaded = load_motion(motion, body_model=body).resample(30.0)
    got = result["motion"]
    assert got["n"] == loaded.num_frames
    assert result["action"]["layered"] == (version >= (4, 4))
    assert result["action"]["curves"] == 55 * 4 + 3 + body.num_expression
    assert "pelvis" in result["action"]["groups"] and "Expression" in result["action"]["groups"]
    dots = np.abs(np.sum(np.asarray(got["quats"]) * _quat(loaded.full_pose[got["frames"]].astype(np.float64)), -1))
    assert dots.min() > 0.9999, f"bone rotations differ (min |dot| {dots.min():.6f})"
    np.testing.assert_allclose(got["locs"], loaded.transl[got["frames"]], atol=1e-4)

    compositor = result["compositor"]
    if version < (5, 0):
        assert compositor["use_nodes"]
        nodes = compositor["tree"]["nodes"]
        assert sum("DreamWaltz" in n for n in nodes) == 3, nodes
        assert "DreamWaltz Alpha Over.Image>Composite.Image" in compositor["tree"]["links"]
    elif version < (5, 3):
        assert compositor["name"] == "DreamWaltz Composite"
    else:
        assert [name for name, tree in compositor if tree and tree["name"] == "DreamWaltz Composite"]
        assert len(compositor) == 1, "the plate's effect takes the place of the user's compositor"

    assert result["size"] == [width, height] and result["transform"] == "Standard"
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    plate_px = np.asarray(Image.open(plate).convert("RGB")).astype(int)
    with torch.no_grad():
        g = pose_with_transforms(load_avatar(avatar_dir), np.asarray(result["transforms"]))
        alpha = rasterize(g, Camera(np.asarray(result["w2c"]), np.asarray(result["K"]), width, height),
                          backend="torch").alpha[..., 0].numpy()
    inside, outside = alpha > 0.98, alpha < 1e-3
    assert inside.sum() > 200, "the avatar should cover part of the frame"
    diff = np.abs(image - plate_px).max(-1)
    assert diff[outside].max() <= 1, "where there is no avatar the plate passes unchanged"
    assert (diff[inside] > 20).mean() > 0.95, "where the avatar is, the image differs from the plate"
    assert result["unregistered"]


def test_below_the_minimum_the_addon_refuses_to_enable(tmp_path):
    result = run_blender("""
        import addon_utils
        from dreamwaltz_blender import compat
        addon_utils.disable("dreamwaltz_blender", default_set=True)
        real = compat.version
        compat.version = lambda: (4, 1, 1)
        try:
            addon_utils.enable("dreamwaltz_blender", default_set=True, handle_error=lambda exc: result.update(error=str(exc)))
        finally:
            compat.version = real
        result["registered"] = hasattr(bpy.types, "DREAMWALTZ_OT_add_avatar")
    """, tmp_path)
    assert "Blender 4.2 or newer" in result["error"] and "4.1.1" in result["error"]
    assert not result["registered"]
