"""The avatar in the user's own scene (real Blender, the real backend, Cycles at a tiny size):
meshes and Gaussians merged by depth in every frame of Render Animation, the proxy's shadow on
the floor, plates underneath, and the viewport drawn through Blender's own projection.

What the images should hold is computed here, independently: the avatar's pixels by the
backend's rasterizer through the camera Blender reports, the meshes' pixels from their corners
projected by that camera, the shadow from the proxy's vertices cast along the sun onto the floor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from .blender import run_blender
from .test_blender_addon import _plate

WIDTH, HEIGHT = 96, 72

SCENE = """
import bmesh
import numpy as np
from mathutils import Vector
from dreamwaltz_blender.camera import camera_to_opencv
from dreamwaltz_blender.rig import skinning_transforms

scene = bpy.context.scene
cam = scene_camera((0.0, -4.6, 1.3), (1.45, 0.0, 0.0), size=({width}, {height}), lens=35)

def box(name, size, location, color, emit=True):
    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.scale(bm, vec=size, verts=bm.verts)
    bm.to_mesh(mesh)
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    obj.location = location
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    shader = nodes.new("ShaderNodeEmission" if emit else "ShaderNodeBsdfDiffuse")
    shader.inputs["Color"].default_value = color
    links.new(shader.outputs[0], nodes.new("ShaderNodeOutputMaterial").inputs["Surface"])
    mesh.materials.append(mat)
    return obj

def corners(obj):
    return [list(obj.matrix_world @ v.co) for v in obj.data.vertices]
"""


def _hull_mask(points: np.ndarray, width: int, height: int, margin: float) -> np.ndarray:
    """Pixels whose centre lies inside the convex hull of 2D `points` by more than `margin`
    pixels (a negative margin grows the hull)."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and np.cross(np.subtract(out[-1], out[-2]), np.subtract(p, out[-2])) <= 0:
                out.pop()
            out.append(p)
        return out

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]  # counter-clockwise
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    inside = np.ones((height, width), bool)
    for a, b in zip(hull, hull[1:] + hull[:1]):
        edge = np.subtract(b, a)
        normal = np.array([-edge[1], edge[0]]) / np.linalg.norm(edge)
        inside &= (xx - a[0]) * normal[0] + (yy - a[1]) * normal[1] > margin
    return inside


def _project(w2c, K, points) -> np.ndarray:
    p = np.c_[np.asarray(points), np.ones(len(points))] @ np.asarray(w2c).T
    uv = p[:, :3] @ np.asarray(K).T
    return uv[:, :2] / uv[:, 2:3]


def _avatar(avatar_dir, transforms, w2c, K) -> dict:
    """The avatar alone, as the backend draws it: alpha and display colour (0-255)."""
    from backend.avatar import load_avatar, pose_with_transforms
    from backend.render import Camera, rasterize

    with torch.no_grad():
        g = pose_with_transforms(load_avatar(avatar_dir), np.asarray(transforms))
        out = rasterize(g, Camera(np.asarray(w2c), np.asarray(K), WIDTH, HEIGHT), backend="torch")
    alpha = out.alpha[..., 0].numpy()
    colour = out.rgb.numpy() / np.maximum(alpha[..., None], 1e-8)
    return {"alpha": alpha, "rgb": np.clip(colour * 255, 0, 255)}


def test_meshes_and_avatar_merge_by_depth_in_every_frame_and_the_proxy_shadows_the_floor(avatar_dir, tmp_path):
    from PIL import Image

    plate = _plate(tmp_path, WIDTH, HEIGHT)
    result = run_blender(SCENE.format(width=WIDTH, height=HEIGHT) + f"""
floor = box("Floor", (8, 8, 0.02), (0, 0, -0.01), (0.8, 0.8, 0.8, 1), emit=False)
front = box("Front", (0.7, 0.2, 0.6), (0.2, -1.0, 0.3), (1, 0, 0, 1))
back = box("Back", (1.0, 0.2, 1.0), (0.75, 1.5, 1.25), (0, 1, 0, 1))
sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
scene.collection.objects.link(sun)
sun_dir = Vector((-0.6, -0.35, -0.72)).normalized()
sun.rotation_euler = sun_dir.to_track_quat("-Z", "Y").to_euler()
sun.data.energy = 4.0
scene.render.engine = "CYCLES"
scene.cycles.samples, scene.cycles.seed, scene.cycles.use_denoising = 16, 7, False
scene.cycles.device = "CPU"

assert bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r}) == {{"FINISHED"}}
arm = bpy.context.active_object
proxy = [c for c in arm.children if c.type == "MESH"][0]
result["companion"] = [s.name for s in bpy.data.scenes if s != scene]
result["engines"] = [scene.render.engine, bpy.data.scenes[result["companion"][0]].render.engine]
result["proxy"] = dict(render=not proxy.hide_render, camera=proxy.visible_camera, shadow=proxy.visible_shadow)
bpy.context.view_layer.update()
lowest = min((proxy.matrix_world @ v.co).z for v in proxy.data.vertices)
arm.location.z -= lowest  # stand on the floor
for frame, x in ((1, 0.0), (2, 0.3)):
    arm.location.x = x
    arm.keyframe_insert("location", frame=frame)
scene.frame_start, scene.frame_end = 1, 2
assert bpy.ops.dreamwaltz.setup_plate(filepath={str(plate)!r}) == {{"FINISHED"}}
scene.frame_start, scene.frame_end = 1, 2
scene.render.image_settings.file_format = "PNG"
scene.render.image_settings.color_mode = "RGB"
scene.render.filepath = {str(tmp_path / "frame_")!r}
bpy.ops.render.render(animation=True)

frames = []
for frame in (1, 2):
    scene.frame_set(frame)
    dg = bpy.context.evaluated_depsgraph_get()
    c = camera_to_opencv(scene, cam)
    frames.append(dict(transforms=skinning_transforms(arm.evaluated_get(dg)), w2c=c.world_to_camera, K=c.K))
result["frames"] = frames
scene.frame_set(1)
dg = bpy.context.evaluated_depsgraph_get()
shape = proxy.evaluated_get(dg)
result["proxy_points"] = [list(shape.matrix_world @ v.co) for v in shape.data.vertices]
result["sun"] = list(sun_dir)
result.update(front=corners(front), back=corners(back), floor=corners(floor))
proxy.visible_shadow = False
scene.render.filepath = {str(tmp_path / "no_shadow.png")!r}
bpy.ops.render.render(write_still=True)
""", tmp_path, timeout=900)
    assert result["engines"] == ["CYCLES", "DREAMWALTZ"] and len(result["companion"]) == 1
    assert result["proxy"] == dict(render=True, camera=False, shadow=True), "the proxy is a shadow only"
    plate_px = np.asarray(Image.open(plate).convert("RGB")).astype(int)
    moved = []
    for i, frame in enumerate(result["frames"]):
        image = np.asarray(Image.open(tmp_path / f"frame_{i + 1:04d}.png").convert("RGB")).astype(int)
        w2c, K = frame["w2c"], frame["K"]
        avatar = _avatar(avatar_dir, frame["transforms"], w2c, K)
        solid, empty = avatar["alpha"] > 0.98, avatar["alpha"] < 1e-3
        moved.append(solid)
        front_in = _hull_mask(_project(w2c, K, result["front"]), WIDTH, HEIGHT, 1.5)
        front_out = ~_hull_mask(_project(w2c, K, result["front"]), WIDTH, HEIGHT, -2.0)
        back_in = _hull_mask(_project(w2c, K, result["back"]), WIDTH, HEIGHT, 1.5)
        back_out = ~_hull_mask(_project(w2c, K, result["back"]), WIDTH, HEIGHT, -2.0)
        floor_out = ~_hull_mask(_project(w2c, K, result["floor"]), WIDTH, HEIGHT, -2.0)
        red, green = np.array([255, 0, 0]), np.array([0, 255, 0])

        hidden = front_in & solid
        assert hidden.sum() > 15, "the front cube stands before the avatar's legs"
        assert (np.abs(image[front_in] - red).max(-1) <= 2).all(), f"frame {i + 1}: the cube in front hides the avatar"
        shown = solid & front_out
        err = np.abs(image[shown] - avatar["rgb"][shown]).max(-1)
        assert shown.sum() > 150 and np.percentile(err, 95) <= 6, \
            f"frame {i + 1}: the avatar shows where no mesh is before it (95th percentile error {np.percentile(err, 95)})"
        over_back = back_in & solid & front_out
        assert over_back.sum() > 10, "the avatar's arm passes before the back cube"
        assert (np.abs(image[over_back] - avatar["rgb"][over_back]).max(-1) <= 8).mean() > 0.95, \
            f"frame {i + 1}: the cube behind the avatar is hidden by it"
        back_only = back_in & empty & front_out
        assert back_only.sum() > 10 and (np.abs(image[back_only] - green).max(-1) <= 2).all()
        sky = floor_out & empty & back_out & front_out
        assert sky.sum() > 300 and np.abs(image[sky] - plate_px[sky]).max() <= 1, "the plate shows where nothing is"
    assert (moved[0] != moved[1]).sum() > 30, "the avatar moved between the frames"

    # the shadow: the proxy's vertices cast along the sun onto the floor (z = 0), seen by the camera
    first = result["frames"][0]
    points, sun = np.asarray(result["proxy_points"]), np.asarray(result["sun"])
    on_floor = points - (points[:, 2:3] / sun[2]) * sun
    uv = np.floor(_project(first["w2c"], first["K"], on_floor)).astype(int)
    keep = (uv[:, 0] >= 0) & (uv[:, 0] < WIDTH) & (uv[:, 1] >= 0) & (uv[:, 1] < HEIGHT)
    cast = np.zeros((HEIGHT, WIDTH), bool)
    cast[uv[keep, 1], uv[keep, 0]] = True
    near = np.zeros_like(cast)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            near |= np.roll(np.roll(cast, dy, 0), dx, 1)
    core = cast & np.roll(cast, 1, 0) & np.roll(cast, -1, 0) & np.roll(cast, 1, 1) & np.roll(cast, -1, 1)
    avatar = _avatar(avatar_dir, first["transforms"], first["w2c"], first["K"])
    floor_in = _hull_mask(_project(first["w2c"], first["K"], result["floor"]), WIDTH, HEIGHT, 1.5)
    meshes = _hull_mask(_project(first["w2c"], first["K"], result["front"]), WIDTH, HEIGHT, -2.0) | \
        _hull_mask(_project(first["w2c"], first["K"], result["back"]), WIDTH, HEIGHT, -2.0)
    floor_only = floor_in & (avatar["alpha"] < 1e-3) & ~meshes
    shadowed, lit = floor_only & core, floor_only & ~near
    with_shadow = np.asarray(Image.open(tmp_path / "frame_0001.png").convert("L")).astype(float)
    without = np.asarray(Image.open(tmp_path / "no_shadow.png").convert("L")).astype(float)
    assert shadowed.sum() > 20, "the shadow falls on floor the camera sees"
    ratio = with_shadow[shadowed].mean() / without[shadowed].mean()
    assert ratio < 0.6, f"the floor is darker where the avatar's shadow falls ({ratio:.2f} of its brightness)"
    assert np.abs(with_shadow[lit] - without[lit]).mean() < 2.0, "away from the shadow the floor is unchanged"
