"""The add-on in real Blender (the bpy 5.0.1 wheel) with the real backend process.

Each test runs a script in a Blender subprocess (tests/blender_entry.py) and checks what it
reports against the backend computed here, independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.body import JOINT_NAMES, PARENTS

from .blender import run_blender
from .conftest import data_dir

MOTION_FILES = sorted(p for p in (data_dir() / "motions").rglob("*") if p.suffix in (".npz", ".npy", ".pkl")) \
    if data_dir() else []


def _quat(aa: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    s = np.where(angle > 1e-8, np.sin(angle / 2) / np.maximum(angle, 1e-12), 0.5)
    return np.concatenate([np.cos(angle / 2), aa * s], axis=-1)


def test_register_add_two_avatars_and_unregister(avatar_dir, body, tmp_path):
    result = run_blender(f"""
        import addon_utils
        from dreamwaltz_blender import session
        from dreamwaltz_blender.rig import JOINTS_KEY
        result["registered"] = hasattr(bpy.types, "DREAMWALTZ_OT_add_avatar")
        for _ in range(2):
            assert bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r}) == {{"FINISHED"}}
        arm = bpy.context.active_object
        result["rigs"] = [o.name for o in bpy.data.objects if o.type == "ARMATURE"]
        result["collections"] = [c.name for c in bpy.context.scene.collection.children]
        names = arm[JOINTS_KEY].split(",")
        result["names"] = names
        result["parents"] = [names.index(arm.data.bones[n].parent.name) if arm.data.bones[n].parent else -1 for n in names]
        result["heads"] = [list(arm.data.bones[n].head_local) for n in names]
        result["rest_rotations_identity"] = all(
            (abs(__import__("numpy").array(arm.data.bones[n].matrix_local)[:3, :3] - __import__("numpy").eye(3)).max() < 1e-6)
            for n in names)
        proxy = [c for c in arm.children if c.type == "MESH"][0]
        result["proxy"] = dict(verts=len(proxy.data.vertices), groups=len(proxy.vertex_groups),
                               modifier=proxy.modifiers[0].type, target=proxy.modifiers[0].object.name == arm.name)
        result["expression"] = len(arm["expression"])
        pid = session.client().pid
        addon_utils.disable("dreamwaltz_blender", default_set=True)
        result["unregistered"] = not hasattr(bpy.types, "DREAMWALTZ_OT_add_avatar")
        import os
        try:
            os.kill(pid, 0)
            result["backend_alive_after"] = True
        except OSError:
            result["backend_alive_after"] = False
    """, tmp_path)
    assert result["registered"] and result["unregistered"]
    assert not result["backend_alive_after"], "unregistering stops the backend"
    assert len(result["rigs"]) == 2 and len(result["collections"]) == 2
    assert result["names"] == list(JOINT_NAMES)
    assert result["parents"] == list(PARENTS)
    assert result["rest_rotations_identity"], "every bone's rest frame is the SMPL-X model frame"
    np.testing.assert_allclose(result["heads"], body.rest_joints().numpy(), atol=1e-5)
    assert result["proxy"] == dict(verts=body.num_vertices, groups=55, modifier="ARMATURE", target=True)
    assert result["expression"] == body.num_expression


def test_add_avatar_reports_a_bad_folder(tmp_path):
    result = run_blender(f"""
        try:
            bpy.ops.dreamwaltz.add_avatar(filepath={str(tmp_path / "nothing")!r})
            result["raised"] = False
        except RuntimeError as exc:
            result["raised"] = str(exc)
        result["objects"] = len(bpy.data.objects)
    """, tmp_path)
    assert "does not exist" in result["raised"]
    assert result["objects"] == 0


@pytest.mark.skipif(not MOTION_FILES, reason="the real motion files (../shared/data) are not on this machine")
def test_every_real_motion_imports_with_the_right_rotations(avatar_dir, body, tmp_path):
    from backend.motion import load_motion

    files = [str(p) for p in MOTION_FILES]
    result = run_blender(f"""
        import numpy as np
        from dreamwaltz_blender import compat
        from dreamwaltz_blender.rig import JOINTS_KEY
        bpy.context.scene.render.fps = 24
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        arm = bpy.context.active_object
        names = arm[JOINTS_KEY].split(",")
        out = {{}}
        for path in {files!r}:
            assert bpy.ops.dreamwaltz.import_motion(filepath=path) == {{"FINISHED"}}, path
            scene = bpy.context.scene
            n = scene.frame_end - scene.frame_start + 1
            frames = sorted({{0, n // 3, n - 1}})
            quats, locs = [], []
            for f in frames:
                scene.frame_set(scene.frame_start + f)
                quats.append([list(arm.pose.bones[b].rotation_quaternion) for b in names])
                locs.append(list(arm.pose.bones["pelvis"].location))
            out[path] = dict(n=n, frames=frames, quats=quats, locs=locs,
                             action=arm.animation_data.action.name, layered=compat.is_layered(arm.animation_data.action))
        result["motions"] = out
        result["layered_actions"] = compat.version() >= compat.LAYERED_ACTIONS
    """, tmp_path, timeout=900)
    for path in files:
        got = result["motions"][path]
        motion = load_motion(path, body_model=body).resample(24.0)
        assert got["n"] == motion.num_frames, path
        assert got["layered"] == result["layered_actions"], "a layered action where Blender has them (4.4 on)"
        expected = _quat(motion.full_pose[got["frames"]].astype(np.float64))
        dots = np.abs(np.sum(np.asarray(got["quats"]) * expected, axis=-1))
        assert dots.min() > 0.9999, f"{Path(path).name}: bone rotations differ (min |dot| {dots.min():.6f})"
        transl = motion.transl[got["frames"]].astype(np.float64)
        if not motion.transl.any():  # no translation in the file: the avatar stands on the floor
            transl[:, 1] += -body.shaped_vertices(None)[:, 1].min().item()
        np.testing.assert_allclose(got["locs"], transl, atol=1e-4, err_msg=path)


def _plate(tmp_path: Path, width: int, height: int) -> Path:
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 90)], -1).astype(np.uint8)
    folder = tmp_path / "plate"
    folder.mkdir()
    for i in range(1, 4):
        Image.fromarray(img).save(folder / f"plate_{i:04d}.png")
    return folder / "plate_0001.png"


def test_render_composites_the_avatar_over_the_plate(avatar_dir, tmp_path):
    from PIL import Image

    from backend.avatar import load_avatar, pose_with_transforms
    from backend.render import Camera, rasterize

    width, height = 160, 120
    plate = _plate(tmp_path, width, height)
    out = tmp_path / "frame.png"
    result = run_blender(f"""
        import numpy as np
        from dreamwaltz_blender.camera import camera_to_opencv
        from dreamwaltz_blender.rig import skinning_transforms
        scene = bpy.context.scene
        cam = scene_camera((0.3, -4.2, 1.05), (1.5708, 0.0, 0.05))
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        assert bpy.ops.dreamwaltz.setup_plate(filepath={str(plate)!r}) == {{"FINISHED"}}
        bpy.ops.dreamwaltz.use_engine()
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGB"
        scene.render.filepath = {str(out)!r}
        bpy.ops.render.render(write_still=True)
        dg = bpy.context.evaluated_depsgraph_get()
        arm = bpy.context.active_object.evaluated_get(dg)
        c = camera_to_opencv(scene, cam)
        result.update(w2c=c.world_to_camera, K=c.K, transforms=skinning_transforms(arm),
                      size=[scene.render.resolution_x, scene.render.resolution_y],
                      transform=scene.view_settings.view_transform)
    """, tmp_path)
    assert result["size"] == [width, height] and result["transform"] == "Standard"
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    plate_px = np.asarray(Image.open(plate).convert("RGB")).astype(int)
    avatar = load_avatar(avatar_dir)
    with torch.no_grad():
        g = pose_with_transforms(avatar, np.asarray(result["transforms"]))
        cam = Camera(np.asarray(result["w2c"]), np.asarray(result["K"]), width, height)
        alpha = rasterize(g, cam, backend="torch").alpha[..., 0].numpy()
    inside, outside = alpha > 0.98, alpha < 1e-3
    assert inside.sum() > 200, "the avatar should cover part of the frame"
    diff = np.abs(image - plate_px).max(-1)
    assert diff[outside].max() <= 1, "where there is no avatar the plate passes unchanged"
    assert (diff[inside] > 20).mean() > 0.95, "where the avatar is, the image differs from the plate"


def test_camera_conversion_matches_blender_projection(tmp_path):
    result = run_blender("""
        import numpy as np
        from bpy_extras.object_utils import world_to_camera_view
        from mathutils import Vector
        from dreamwaltz_blender.camera import camera_to_opencv, apply_opencv
        scene = bpy.context.scene
        cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
        scene.collection.objects.link(cam)
        rng = np.random.default_rng(0)
        worst, worst_round = 0.0, 0.0
        cases = [(1920, 1080, 1, 1, "AUTO"), (720, 1280, 1, 1, "AUTO"), (1000, 800, 2, 1, "VERTICAL"),
                 (640, 480, 1, 3, "HORIZONTAL"), (333, 777, 1, 1, "VERTICAL"), (1280, 720, 1, 1, "AUTO")]
        for k, (w, h, ax, ay, fit) in enumerate(cases):
            r = scene.render
            r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 50 if k == 2 else 100
            r.pixel_aspect_x, r.pixel_aspect_y = ax, ay
            cam.data.sensor_fit = fit
            cam.data.lens = float(rng.uniform(18, 85))
            cam.data.shift_x, cam.data.shift_y = rng.uniform(-0.3, 0.3, 2)
            cam.location = tuple(rng.normal(0, 3, 3))
            cam.rotation_euler = tuple(rng.uniform(-3, 3, 3))
            bpy.context.view_layer.update()
            c = camera_to_opencv(scene, cam)
            pts = np.array(cam.matrix_world) @ np.c_[rng.uniform(-1, 1, (50, 2)) * 2, -rng.uniform(1, 10, 50), np.ones(50)].T
            pts = pts[:3].T
            ours = c.project(pts)
            for p, o in zip(pts, ours):
                v = world_to_camera_view(scene, cam, Vector(p))
                worst = max(worst, abs(o[0] / c.width - v.x) * c.width, abs((1 - o[1] / c.height) - v.y) * c.height,
                            abs(o[2] - v.z))
            apply_opencv(cam, scene, c.world_to_camera, c.K, c.width, c.height)
            bpy.context.view_layer.update()
            back = camera_to_opencv(scene, cam)
            worst_round = max(worst_round, abs(back.project(pts) - ours).max())
        result.update(worst=worst, worst_round=worst_round)
    """, tmp_path)
    assert result["worst"] < 1e-2, f"projection differs from Blender's (float32) by {result['worst']} px"
    assert result["worst_round"] < 1e-2, "a camera set from OpenCV form converts back to the same camera"


@pytest.mark.skipif(not MOTION_FILES, reason="the real motion files (../shared/data) are not on this machine")
def test_reenactment_shot_puts_the_pelvis_where_the_clip_camera_sees_it(avatar_dir, body, tmp_path):
    from backend.motion import load_motion

    from .test_motion_formats import clip, orbit_cameras, write_reenact

    m = clip(body, frames=12)
    w2c = orbit_cameras(m.transl.astype(float))
    clip_path = tmp_path / "Dance_clip7.json"
    write_reenact(clip_path, body, m.replace(betas=None), w2c)
    plate = _plate(tmp_path, 1280, 720)
    loaded = load_motion(clip_path, body_model=body)
    joints = body.forward(betas=None, transl=loaded.transl,
                          **{k: getattr(loaded, k).reshape(loaded.num_frames, -1) for k in
                             ("global_orient", "body_pose")}).joints[:, 0].numpy()
    cam = loaded.camera
    p = np.einsum("nij,nj->ni", cam.world_to_camera, np.c_[joints, np.ones(len(joints))])[:, :3]
    uv = np.einsum("nij,nj->ni", cam.K, p)
    expected = uv[:, :2] / uv[:, 2:]
    result = run_blender(f"""
        from bpy_extras.object_utils import world_to_camera_view
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        arm = bpy.context.active_object
        assert bpy.ops.dreamwaltz.import_reenactment(filepath={str(clip_path)!r}, plate={str(plate)!r}) == {{"FINISHED"}}
        scene = bpy.context.scene
        pixels = []
        for i in range({loaded.num_frames}):
            scene.frame_set(scene.frame_start + i)
            dg = bpy.context.evaluated_depsgraph_get()
            a = arm.evaluated_get(dg)
            head = a.matrix_world @ a.pose.bones["pelvis"].head
            v = world_to_camera_view(scene, scene.camera.evaluated_get(dg), head)
            pixels.append([v.x * scene.render.resolution_x, (1 - v.y) * scene.render.resolution_y])
        result.update(pixels=pixels, size=[scene.render.resolution_x, scene.render.resolution_y],
                      frames=[scene.frame_start, scene.frame_end], fps=scene.render.fps / scene.render.fps_base)
    """, tmp_path)
    assert result["size"] == [1280, 720]
    assert result["frames"][1] - result["frames"][0] + 1 == loaded.num_frames
    assert result["fps"] == pytest.approx(loaded.fps)
    np.testing.assert_allclose(result["pixels"], expected, atol=0.5)


def test_height_slider_reshapes_the_rig_and_the_render_and_reset_restores_it(avatar_dir, body, tmp_path):
    from PIL import Image

    before, after = tmp_path / "before.png", tmp_path / "after.png"
    result = run_blender(f"""
        import numpy as np
        from dreamwaltz_blender.rig import JOINTS_KEY
        scene = bpy.context.scene
        scene_camera((0.0, -9.0, 0.9), (1.5708, 0.0, 0.0), size=(120, 160), lens=85)
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        bpy.ops.dreamwaltz.use_engine()
        scene.render.film_transparent = True
        scene.render.image_settings.color_mode = "RGBA"
        arm = bpy.context.active_object
        names = arm[JOINTS_KEY].split(",")
        proxy = [c for c in arm.children if c.type == "MESH"][0]
        def snapshot():
            heads = [list(arm.data.bones[n].head_local) for n in names]
            co = np.zeros(len(proxy.data.vertices) * 3, np.float32)
            proxy.data.vertices.foreach_get("co", co)
            return heads, co
        heads0, co0 = snapshot()
        result["height0"] = arm.dreamwaltz_shape.height
        scene.render.filepath = {str(before)!r}
        bpy.ops.render.render(write_still=True)
        assert bpy.ops.dreamwaltz.apply_shape(height=1.90) == {{"FINISHED"}}
        heads1, co1 = snapshot()
        result.update(height1=arm.dreamwaltz_shape.height, betas1=list(arm.dreamwaltz_shape.betas),
                      heads1=heads1, co1_max=float(np.abs(co1 - co0).max()))
        scene.render.filepath = {str(after)!r}
        bpy.ops.render.render(write_still=True)
        assert bpy.ops.dreamwaltz.reset_shape() == {{"FINISHED"}}
        heads2, co2 = snapshot()
        result.update(reset_heads_equal=heads2 == heads0, reset_co_equal=bool((co2 == co0).all()),
                      height2=arm.dreamwaltz_shape.height, betas2=list(arm.dreamwaltz_shape.betas))
    """, tmp_path)
    assert result["height0"] == pytest.approx(_height_of(body, [0.0] * 10), abs=1e-4)
    assert result["height1"] == pytest.approx(1.90, abs=2e-3)
    expected = body.rest_joints(torch.tensor(result["betas1"])).numpy()
    np.testing.assert_allclose(result["heads1"], expected, atol=1e-5)
    assert result["co1_max"] > 0.05, "the proxy mesh is reshaped"
    assert result["reset_heads_equal"] and result["reset_co_equal"], "reset returns exactly to the trained rig"
    assert result["betas2"] == [0.0] * 10 and result["height2"] == pytest.approx(result["height0"])
    h = lambda p: np.ptp(np.nonzero(np.asarray(Image.open(p))[..., 3].max(1) > 128)[0])  # noqa: E731
    assert h(after) / h(before) == pytest.approx(1.90 / result["height0"], rel=0.04)


def _height_of(body, betas) -> float:
    v = body.shaped_vertices(torch.tensor(betas))
    return float(v[:, 1].max() - v[:, 1].min())


def test_create_panel_trains_an_avatar_and_adds_it(tmp_path):
    from .conftest import run_backend

    models = tmp_path / "models"
    run_backend("dev", "tiny-models", "--out", str(models), check=True)
    run = tmp_path / "run"
    result = run_blender(f"""
        import os
        from dreamwaltz_blender import create
        seen = []
        real_handle = create.handle_event
        def spy(progress, event):
            real_handle(progress, event)
            seen.append([event.get("event"), progress.state, progress.stage, create.is_active(progress),
                         create.status_text(progress)])
        create.handle_event = spy
        prefs = bpy.context.preferences.addons["dreamwaltz_blender"].preferences
        prefs.sd_model = {str(models / "stable-diffusion")!r}
        prefs.controlnet = {str(models / "controlnet")!r}
        s = bpy.context.scene.dreamwaltz_create
        s.prompt, s.preset, s.steps, s.run_folder = "a chef dressed in white", "draft", 4, {str(run)!r}
        assert bpy.ops.dreamwaltz.create_avatar() == {{"FINISHED"}}
        result["seen"] = seen[:]
        p = bpy.context.window_manager.dreamwaltz_progress
        result.update(state=p.state, step=p.step, total=p.total, avatar=p.avatar,
                      preview="DreamWaltz Preview" in bpy.data.images, recipe=p.recipe, stages=p.stages,
                      recipes=[i.identifier for i in s.bl_rna.properties["recipe"].enum_items])
        assert bpy.ops.dreamwaltz.add_created() == {{"FINISHED"}}
        result["rig"] = bpy.context.active_object.name
        # a finished run resumed is just its avatar again
        assert bpy.ops.dreamwaltz.create_avatar(resume=True) == {{"FINISHED"}}
        result["resumed_state"] = p.state
        # the fast encoder chosen in the preferences reaches the job
        prefs.tiny_encoder = {str(models / "taesd")!r}
        s.steps, s.run_folder = 2, {str(tmp_path / "fast")!r}
        assert bpy.ops.dreamwaltz.create_avatar() == {{"FINISHED"}}
        result["fast_state"] = p.state
        # a model that is not there: the whole (several-line) error is kept, reported and shown
        prefs.sd_model = {str(tmp_path / "no-such-model")!r}
        s.run_folder = {str(tmp_path / "bad")!r}
        try:
            bpy.ops.dreamwaltz.create_avatar()
        except RuntimeError as exc:
            result["report"] = str(exc)
        result.update(failed_state=p.state, message=p.message, lines=create.error_lines(p.message, 60),
                      details=bpy.ops.dreamwaltz.create_error.poll())
    """, tmp_path)
    assert result["fast_state"] == "done"
    assert json.loads((tmp_path / "fast" / "config.json").read_text())["sds"]["encoder"] == "tiny"
    assert result["state"] == "done" and result["avatar"] == str(run / "avatar")
    from backend.protocol import TRAIN_RECIPES

    assert result["recipe"] == "fast" and result["stages"] == 3  # the progress events name recipe and stages
    assert result["recipes"] == list(TRAIN_RECIPES)
    from backend.avatar import read_meta

    meta = read_meta(run / "avatar")
    assert meta["prompt"] == "a chef dressed in white" and meta["provenance"]["iterations"] == 4
    assert result["preview"] and result["rig"].endswith("_rig")
    assert result["resumed_state"] == "done"
    seen = result["seen"]
    first_step = next(i for i, e in enumerate(seen) if e[0] == "job_progress" and e[2] != "loading models")
    loading = [e for e in seen[:first_step] if e[2] == "loading models"]
    assert loading and loading[0][3] and loading[0][4] == "Loading models", "loading shows, with Cancel"
    assert [e for e in seen[:first_step] if e[1] == "started"] and all(e[3] for e in seen[:first_step])
    assert result["failed_state"] == "failed" and result["details"]
    assert "no-such-model" in result["message"] and "\n" in result["message"]
    assert result["message"].splitlines()[-1] in result["report"], "the report holds the whole error"
    squeeze = lambda text: "".join(text.split())  # noqa: E731
    assert squeeze("".join(result["lines"])) == squeeze(result["message"]), "the details popup shows all of it"
    assert max(len(line) for line in result["lines"]) <= 60


def test_static_gaussian_objects_and_constrained_rigs_render(avatar_dir, tmp_path):
    from PIL import Image

    from .conftest import run_backend

    ply = tmp_path / "statue.ply"
    run_backend("export-ply", "--avatar", str(avatar_dir), "--out", str(ply), check=True)
    shots = {name: tmp_path / f"{name}.png" for name in ("both", "constrained")}
    result = run_blender(f"""
        scene = bpy.context.scene
        scene_camera((0.6, -7.0, 0.95), (1.5708, 0.0, 0.0), size=(200, 100))
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        arm = bpy.context.active_object
        assert bpy.ops.dreamwaltz.import_ply(filepath={str(ply)!r}) == {{"FINISHED"}}
        statue = [o for o in bpy.data.objects if "dreamwaltz_ply" in o][0]
        statue.location = (2.2, 0.0, 0.944)
        bpy.ops.dreamwaltz.use_engine()
        scene.render.film_transparent = True
        scene.render.image_settings.color_mode = "RGBA"
        scene.render.filepath = {str(shots["both"])!r}
        bpy.ops.render.render(write_still=True)
        # a constraint (not a key) moves the arm: the engine reads the evaluated rig
        target = bpy.data.objects.new("Target", None)
        scene.collection.objects.link(target)
        target.location = (-0.3, 0.0, 3.45)
        c = arm.pose.bones["right_shoulder"].constraints.new("DAMPED_TRACK")
        c.target, c.track_axis = target, "TRACK_NEGATIVE_X"
        scene.render.filepath = {str(shots["constrained"])!r}
        bpy.ops.render.render(write_still=True)
        result["statue_gaussians"] = statue["dreamwaltz_gaussians"]
        result["auto_rotation"] = tuple(round(v, 4) for v in statue.rotation_euler)
        assert bpy.ops.dreamwaltz.import_ply(filepath={str(ply)!r}, up_axis="NEG_Y") == {{"FINISHED"}}
        result["colmap_rotation"] = tuple(round(v, 4) for v in bpy.context.collection.objects[-1].rotation_euler)
    """, tmp_path)
    assert result["statue_gaussians"] == 6000
    assert tuple(result["auto_rotation"]) == (1.5708, 0.0, 0.0), "our export says Y up: turned to Blender's Z up"
    assert tuple(result["colmap_rotation"]) == (-1.5708, 0.0, 0.0)
    both = np.asarray(Image.open(shots["both"]))[..., 3] > 128
    columns = np.nonzero(both.any(0))[0]
    gaps = np.nonzero(np.diff(columns) > 3)[0]
    assert len(gaps) >= 1, "two separate figures: the avatar and the static Gaussian object"
    constrained = np.asarray(Image.open(shots["constrained"]))[..., 3] > 128
    changed = both != constrained
    assert changed.sum() > 50, "the constraint moved the rendered arm"
    assert changed[:, 125:].sum() == 0, "the static object did not move"


def test_a_saved_blend_file_renders_again_after_reopening(avatar_dir, tmp_path):
    from PIL import Image

    blend, frame = tmp_path / "shot.blend", tmp_path / "again.png"
    result = run_blender(f"""
        from dreamwaltz_blender import session
        scene = bpy.context.scene
        scene_camera((0.0, -6.0, 0.95), (1.5708, 0.0, 0.0), size=(80, 120))
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        bpy.ops.dreamwaltz.apply_shape(height=1.85)
        bpy.ops.dreamwaltz.use_engine()
        scene.render.film_transparent = True
        bpy.ops.wm.save_as_mainfile(filepath={str(blend)!r})
        session.shutdown()  # as if Blender had been closed
        bpy.ops.wm.open_mainfile(filepath={str(blend)!r})
        scene = bpy.context.scene
        arm = [o for o in scene.objects if o.type == "ARMATURE"][0]
        result["height"] = arm.dreamwaltz_shape.height
        scene.render.image_settings.color_mode = "RGBA"
        scene.render.filepath = {str(frame)!r}
        bpy.ops.render.render(write_still=True)
    """, tmp_path)
    assert result["height"] == pytest.approx(1.85, abs=2e-3)
    alpha = np.asarray(Image.open(frame))[..., 3]
    assert (alpha > 128).sum() > 300, "the reopened scene renders its avatar"


def test_a_backend_python_that_does_not_exist_is_one_clear_error(avatar_dir, tmp_path):
    result = run_blender(f"""
        prefs = bpy.context.preferences.addons["dreamwaltz_blender"].preferences
        prefs.python = "/nonexistent/python3"
        try:
            bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
            result["error"] = None
        except RuntimeError as exc:
            result["error"] = str(exc)
        result["objects"] = len(bpy.data.objects)
    """, tmp_path)
    assert "/nonexistent/python3" in result["error"]
    assert result["objects"] == 0, "nothing half-built is left in the scene"
