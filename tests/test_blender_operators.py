"""Operators that behave like Blender's own (real Blender, the real backend): greyed out with a
reason, in the File menus, exporting PLY, and leaving the scene exactly as it was on failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .blender import run_blender


def test_operators_say_why_they_are_greyed_out_and_sit_in_the_file_menus(tmp_path):
    result = run_blender("""
        from dreamwaltz_blender import menus
        needs_rig = ["import_motion", "import_reenactment", "export_ply", "apply_shape", "reset_shape"]
        result["polls"] = {name: getattr(bpy.ops.dreamwaltz, name).poll() for name in needs_rig}
        try:
            bpy.ops.dreamwaltz.import_motion(filepath="/nowhere.npz")
        except RuntimeError as exc:
            result["message"] = str(exc)
        class Layout:
            operator_context = ""
            def __init__(self):
                self.ops = []
            def operator(self, idname, text="", icon="NONE"):
                self.ops.append((idname, text))
        entries = {}
        for menu, draw in (("TOPBAR_MT_file_import", menus.draw_import), ("TOPBAR_MT_file_export", menus.draw_export)):
            assert draw in getattr(bpy.types, menu)._dyn_ui_initialize(), menu
            holder = type("Menu", (), {"layout": Layout()})()
            draw(holder, bpy.context)
            entries[menu] = holder.layout.ops
        result["entries"] = entries
        result["exist"] = all(hasattr(bpy.types, "DREAMWALTZ_OT_" + op.split(".")[1])
                              for ops in entries.values() for op, _ in ops)
        result["weight_unit"] = bpy.types.Object.bl_rna.properties["dreamwaltz_shape"].fixed_type.properties["weight"].unit
        import addon_utils
        addon_utils.disable("dreamwaltz_blender", default_set=True)
        result["menus_after"] = [d.__name__ for d in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()
                                 if d.__module__.startswith("dreamwaltz")]
    """, tmp_path)
    assert result["polls"] == {k: False for k in result["polls"]}
    assert "Select an avatar rig first" in result["message"]
    imports = [op for op, _ in result["entries"]["TOPBAR_MT_file_import"]]
    assert imports == ["dreamwaltz.add_avatar", "dreamwaltz.import_motion", "dreamwaltz.import_ply"]
    assert [op for op, _ in result["entries"]["TOPBAR_MT_file_export"]] == ["dreamwaltz.export_ply"]
    assert result["exist"] and result["weight_unit"] == "MASS"
    assert result["menus_after"] == [], "disabling the add-on takes its menu entries away"


def test_export_ply_canonical_and_current_frame(avatar_dir, tmp_path):
    from backend.avatar import load_avatar, pose_with_params, pose_with_transforms
    from backend.ply import read_ply

    canonical, posed = tmp_path / "rest.ply", tmp_path / "posed"
    result = run_blender(f"""
        import numpy as np
        from dreamwaltz_blender.rig import skinning_transforms
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        arm = bpy.context.active_object
        assert bpy.ops.dreamwaltz.export_ply(filepath={str(canonical)!r}) == {{"FINISHED"}}
        arm.pose.bones["left_shoulder"].rotation_quaternion = (0.7071, 0.0, 0.0, 0.7071)
        arm.pose.bones["pelvis"].location = (0.0, 0.1, 0.0)
        bpy.context.view_layer.update()
        assert bpy.ops.dreamwaltz.export_ply(filepath={str(posed)!r}, pose="CURRENT") == {{"FINISHED"}}
        ev = arm.evaluated_get(bpy.context.evaluated_depsgraph_get())
        result["rig_transforms"] = np.linalg.inv(np.array(ev.matrix_world)) @ skinning_transforms(ev)
    """, tmp_path)
    avatar = load_avatar(avatar_dir)
    rest, moved = read_ply(canonical), read_ply(str(posed) + ".ply")
    with torch.no_grad():
        want_rest = pose_with_params(avatar).means
        want_moved = pose_with_transforms(avatar, np.asarray(result["rig_transforms"])).means
    assert len(rest) == len(moved) == avatar.num_gaussians
    assert torch.allclose(rest.means, want_rest, atol=1e-5)
    assert torch.allclose(moved.means, want_moved, atol=1e-4), "posed in the rig's Y-up space"
    assert (rest.means - moved.means).norm(dim=1).max() > 0.05


def test_failed_add_avatar_and_ply_import_change_nothing(avatar_dir, tmp_path):
    broken = tmp_path / "broken.ply"
    broken.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nend_header\n")
    result = run_blender(f"""
        from dreamwaltz_blender import shape
        scene_camera((0.0, -5.0, 1.0), (1.4, 0.0, 0.0))
        cube = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
        scene = bpy.context.scene
        scene.collection.objects.link(cube)
        cube.select_set(True)
        bpy.context.view_layer.objects.active = cube
        before = scene_state()
        real = shape.init_rig
        def failing(*args, **kw):
            raise RuntimeError("injected failure after the rig was built")
        shape.init_rig = failing
        try:
            bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        except RuntimeError as exc:
            result["avatar_error"] = str(exc)
        shape.init_rig = real
        result["avatar_changed"] = [k for k, v in scene_state().items() if before.get(k) != v]
        try:
            bpy.ops.dreamwaltz.import_ply(filepath={str(broken)!r})
        except RuntimeError as exc:
            result["ply_error"] = str(exc)
        result["ply_changed"] = [k for k, v in scene_state().items() if before.get(k) != v]
    """, tmp_path)
    assert "injected failure" in result["avatar_error"]
    assert result["avatar_changed"] == [], "no half-built rig, collection, selection or mode is left"
    assert "broken.ply" in result["ply_error"] and result["ply_changed"] == []


def test_slider_moves_are_queued_coalesced_and_end_at_the_latest(avatar_dir, body, tmp_path):
    result = run_blender(f"""
        import time
        from dreamwaltz_blender import session, shape
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        arm = bpy.context.active_object
        client = session.client()
        sent = []
        real_submit = client.submit
        client.submit = lambda op, **kw: sent.append(kw) or real_submit(op, **kw)
        for target in (1.70, 1.75, 1.80, 1.85, 1.92):   # a drag: moves faster than the backend answers
            shape.schedule(arm.name, height=target)
            t = time.perf_counter()
            shape.tick()
            result.setdefault("tick_ms", []).append((time.perf_counter() - t) * 1e3)
        while shape.tick():
            time.sleep(0.01)
        result.update(sent=[kw.get("height") for kw in sent], height=arm.dreamwaltz_shape.height,
                      betas=list(arm.dreamwaltz_shape.betas),
                      heads=[list(arm.data.bones[n].head_local) for n in arm["dreamwaltz_joints"].split(",")],
                      queues=len(shape._queues))
    """, tmp_path)
    assert result["sent"][0] == 1.70 and result["sent"][-1] == 1.92
    assert len(result["sent"]) < 5, "moves made while a request runs collapse into the latest"
    assert result["height"] == pytest.approx(1.92, abs=2e-3) and result["queues"] == 0
    np.testing.assert_allclose(result["heads"], body.rest_joints(torch.tensor(result["betas"])).numpy(), atol=1e-5)
