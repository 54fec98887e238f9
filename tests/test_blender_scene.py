"""Scene behaviours users rely on, in real Blender with the real backend: Render Region, linked
collection instances, still and short plates, an avatar on the floor, and paths that move with
the .blend."""

from __future__ import annotations

import shutil

import numpy as np
import torch
from PIL import Image

from .blender import run_blender

CAMERA = "scene_camera((0.2, -5.0, 0.9), (1.5708, 0.0, 0.0), size=(100, 80))"


def _alpha(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA")).astype(int)


def test_render_region_with_and_without_crop(avatar_dir, tmp_path):
    shots = {k: tmp_path / f"{k}.png" for k in ("full", "crop", "nocrop")}
    run_blender(f"""
        scene = bpy.context.scene
        {CAMERA}
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        bpy.ops.dreamwaltz.use_engine()
        r = scene.render
        r.film_transparent = True
        r.image_settings.color_mode = "RGBA"
        r.filepath = {str(shots["full"])!r}
        bpy.ops.render.render(write_still=True)
        r.use_border = True
        r.border_min_x, r.border_max_x, r.border_min_y, r.border_max_y = 0.25, 0.75, 0.1, 0.6
        for crop in (True, False):
            r.use_crop_to_border = crop
            r.filepath = {str(tmp_path)!r} + ("/crop.png" if crop else "/nocrop.png")
            bpy.ops.render.render(write_still=True)
    """, tmp_path)
    full, crop, nocrop = (_alpha(shots[k]) for k in ("full", "crop", "nocrop"))
    region = full[80 - 48:80 - 8, 25:75]          # rows from the top: y 0.1-0.6 of 80 is rows 32..72
    assert crop.shape == (40, 50, 4)
    assert (region[..., 3] > 128).sum() > 100, "the region holds part of the avatar"
    assert np.abs(crop - region).max() <= 2, "the cropped region is that part of the full frame"
    assert nocrop.shape == full.shape
    assert np.abs(nocrop[32:72, 25:75] - region).max() <= 2
    outside = np.ones(full.shape[:2], bool)
    outside[32:72, 25:75] = False
    assert nocrop[outside][:, 3].max() == 0, "outside the region nothing renders"


def test_a_linked_collection_instance_renders_where_its_instancer_puts_it(avatar_dir, tmp_path):
    from backend.avatar import load_avatar, pose_with_transforms
    from backend.render import Camera, rasterize

    (tmp_path / "lib").mkdir()
    (tmp_path / "shot").mkdir()
    lib = tmp_path / "lib" / "avatar.blend"
    frame = tmp_path / "instance.png"
    result = run_blender(f"""
        import numpy as np
        from dreamwaltz_blender.camera import camera_to_opencv
        from dreamwaltz_blender.rig import ordered_pose_bones
        bpy.ops.wm.save_as_mainfile(filepath={str(lib)!r})
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        arm = bpy.context.active_object
        name = arm.users_collection[0].name
        result["stored"] = arm["dreamwaltz_avatar"]
        bpy.ops.wm.save_as_mainfile(filepath={str(lib)!r})
        bpy.ops.wm.read_homefile(use_empty=True)
        with bpy.data.libraries.load({str(lib)!r}, link=True) as (src, dst):
            dst.collections = [name]
        scene = bpy.context.scene
        holder = bpy.data.objects.new("Avatar Instance", None)
        holder.instance_type, holder.instance_collection = "COLLECTION", dst.collections[0]
        holder.location = (0.6, 0.0, 0.0)
        holder.rotation_euler = (0.0, 0.0, 0.4)
        scene.collection.objects.link(holder)
        cam = {CAMERA}
        bpy.ops.dreamwaltz.use_engine()
        scene.render.film_transparent = True
        scene.render.image_settings.color_mode = "RGBA"
        scene.render.filepath = {str(frame)!r}
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / "shot" / "shot.blend")!r})
        bpy.ops.render.render(write_still=True)
        rig = [o for o in bpy.data.objects if o.type == "ARMATURE"][0]
        world = np.array(holder.matrix_world) @ np.array(rig.matrix_world)
        result["transforms"] = [world @ np.array(pb.matrix) @ np.linalg.inv(np.array(pb.bone.matrix_local))
                                for pb in ordered_pose_bones(rig)]
        c = camera_to_opencv(scene, cam)
        result.update(w2c=c.world_to_camera, K=c.K)
    """, tmp_path)
    assert result["stored"].startswith("//"), "stored relative to the library's .blend"
    with torch.no_grad():
        g = pose_with_transforms(load_avatar(avatar_dir), np.asarray(result["transforms"]))
        want = rasterize(g, Camera(np.asarray(result["w2c"]), np.asarray(result["K"]), 100, 80),
                         backend="torch").alpha[..., 0].numpy() > 0.5
    got = _alpha(frame)[..., 3] > 128
    assert want.sum() > 200
    assert (got & want).sum() / (got | want).sum() > 0.95, "the instance renders, moved and turned by its instancer"


def _sequence(folder, colours) -> str:
    folder.mkdir()
    for i, colour in enumerate(colours, start=1):
        Image.new("RGB", (100, 80), colour).save(folder / f"plate_{i:04d}.png")
    return str(folder / "plate_0001.png")


def test_still_plate_keeps_the_range_and_a_short_plate_holds_its_last_frame(avatar_dir, tmp_path):
    still = tmp_path / "still.png"
    Image.new("RGB", (100, 80), (30, 60, 90)).save(still)
    short = _sequence(tmp_path / "short", [(200, 40, 40), (40, 200, 40), (40, 40, 200)])
    motion = tmp_path / "walk.npz"
    rng = np.random.default_rng(1)
    np.savez(motion, poses=rng.normal(0, 0.1, (12, 156)), trans=np.c_[np.zeros((12, 2)), np.full(12, 0.9)],
             mocap_framerate=24.0, gender="neutral")
    late = tmp_path / "late.png"
    result = run_blender(f"""
        scene = bpy.context.scene
        scene.render.fps = 24
        scene.frame_start, scene.frame_end = 1, 40
        {CAMERA}
        bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
        assert bpy.ops.dreamwaltz.setup_plate(filepath={str(still)!r}) == {{"FINISHED"}}
        result["still_range"] = [scene.frame_start, scene.frame_end]
        assert bpy.ops.dreamwaltz.import_motion(filepath={str(motion)!r}) == {{"FINISHED"}}
        assert bpy.ops.dreamwaltz.setup_plate(filepath={short!r}) == {{"FINISHED"}}
        result["short_range"] = [scene.frame_start, scene.frame_end]
        bpy.ops.dreamwaltz.use_engine()
        scene.frame_set(10)
        scene.render.image_settings.color_mode = "RGB"
        scene.render.filepath = {str(late)!r}
        bpy.ops.render.render(write_still=True)
    """, tmp_path)
    assert result["still_range"] == [1, 40], "a still image keeps the scene's frame range"
    assert result["short_range"] == [1, 12], "the range keeps the motion, longer than the 3-frame plate"
    image = np.asarray(Image.open(late).convert("RGB")).astype(int)
    corners = np.concatenate([image[:8, :8].reshape(-1, 3), image[-8:, -8:].reshape(-1, 3)])
    assert np.abs(corners - [40, 40, 200]).max() <= 1, "frame 10 shows the plate's last frame, not black"


def test_a_new_avatar_stands_on_the_floor_and_paths_move_with_the_shot(avatar_dir, tmp_path):
    shot = tmp_path / "machine_a"
    (shot / "avatars").mkdir(parents=True)
    shutil.copytree(avatar_dir, shot / "avatars" / "mannequin")
    plate = _sequence(shot / "plate", [(90, 90, 90)] * 2)
    blend = shot / "shot.blend"
    result = run_blender(f"""
        import numpy as np
        scene = bpy.context.scene
        {CAMERA}
        bpy.ops.dreamwaltz.add_avatar(filepath={str(shot / "avatars" / "mannequin")!r})
        arm = bpy.context.active_object
        proxy = [c for c in arm.children if c.type == "MESH"][0]
        ev = proxy.evaluated_get(bpy.context.evaluated_depsgraph_get())
        mesh = ev.to_mesh()
        co = np.zeros(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        world = (np.array(ev.matrix_world) @ np.c_[co.reshape(-1, 3), np.ones(len(mesh.vertices))].T)[:3].T
        result["min_z"] = float(world[:, 2].min())
        ev.to_mesh_clear()
        assert bpy.ops.dreamwaltz.setup_plate(filepath={plate!r}) == {{"FINISHED"}}
        result["before_save"] = arm["dreamwaltz_avatar"]
        bpy.ops.wm.save_as_mainfile(filepath={str(blend)!r})
        result["after_save"] = arm["dreamwaltz_avatar"]
        result["plates"] = sorted(i.filepath for i in (*bpy.data.movieclips, *bpy.data.images) if i.get("dreamwaltz_plate"))
    """, tmp_path)
    assert abs(result["min_z"]) < 1e-3, "the feet are on the floor"
    assert result["before_save"] == str(shot / "avatars" / "mannequin"), "an unsaved file keeps absolute paths"
    assert result["after_save"] == "//avatars/mannequin", "saving stores them relative to the .blend"
    assert result["plates"] and all(p.startswith("//plate/") for p in result["plates"])
    moved = tmp_path / "machine_b"
    shutil.move(str(shot), str(moved))
    frame = tmp_path / "moved.png"
    run_blender(f"""
        bpy.ops.wm.open_mainfile(filepath={str(moved / "shot.blend")!r})
        scene = bpy.context.scene
        bpy.ops.dreamwaltz.use_engine()
        scene.render.image_settings.color_mode = "RGB"
        scene.render.filepath = {str(frame)!r}
        bpy.ops.render.render(write_still=True)
    """, tmp_path)
    image = np.asarray(Image.open(frame).convert("RGB")).astype(int)
    assert np.abs(image[:5, :5] - 90).max() <= 1, "the moved shot finds its plate"
    assert (np.abs(image - 90).max(-1) > 20).sum() > 200, "and its avatar"
