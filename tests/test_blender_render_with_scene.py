"""The avatar in the user's own scene (real Blender, the real backend, Cycles at a tiny size):
meshes and Gaussians merged by depth in every frame of Render Animation, the proxy's shadow on
the floor, plates underneath, and the viewport drawn through Blender's own projection.

What the images should hold is computed here, independently: the avatar's pixels by the
backend's rasterizer through the camera Blender reports, the meshes' pixels from their corners
projected by that camera, the shadow from the proxy's vertices cast along the sun onto the floor.
"""

from __future__ import annotations

import json
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


def _needs_background_gpu() -> None:
    """Skip, before the test's Blender runs, where it has no `gpu.init` (5.2 and older)."""
    from .blender import blender_python, has_gpu_init

    if not has_gpu_init(blender_python()):
        pytest.skip("this Blender has no gpu.init for a background GPU context")


def _project(w2c, K, points) -> np.ndarray:
    p = np.c_[np.asarray(points), np.ones(len(points))] @ np.asarray(w2c).T
    uv = p[:, :3] @ np.asarray(K).T
    return uv[:, :2] / uv[:, 2:3]


def _avatar(avatar_dir, transforms, w2c, K, width=WIDTH, height=HEIGHT, near=None, far=None) -> dict:
    """The avatar alone, as the backend draws it: alpha, unpremultiplied display colour
    (`colour`, 0-1) and that as 8-bit values (`rgb`)."""
    from backend.avatar import load_avatar, pose_with_transforms
    from backend.render import Camera, rasterize

    clip = {k: v for k, v in (("near", near), ("far", far)) if v is not None}
    with torch.no_grad():
        g = pose_with_transforms(load_avatar(avatar_dir), np.asarray(transforms))
        out = rasterize(g, Camera(np.asarray(w2c), np.asarray(K), width, height, **clip), backend="torch")
    alpha = out.alpha[..., 0].numpy()
    colour = out.rgb.numpy() / np.maximum(alpha[..., None], 1e-8)
    return {"alpha": alpha, "colour": colour, "rgb": np.clip(colour * 255, 0, 255)}


@pytest.mark.versions
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
scene.cycles.samples, scene.cycles.seed, scene.cycles.use_denoising = 8, 7, False
scene.cycles.device = "CPU"

assert bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r}) == {{"FINISHED"}}
arm = bpy.context.active_object
proxy = [c for c in arm.children if c.type == "MESH"][0]
result["companion"] = [s.name for s in bpy.data.scenes if s != scene]
result["engines"] = [scene.render.engine, bpy.data.scenes[result["companion"][0]].render.engine]
result["proxy"] = dict(render=not proxy.hide_render, camera=proxy.visible_camera, shadow=proxy.visible_shadow)
shape = proxy.evaluated_get(bpy.context.evaluated_depsgraph_get())
result["lowest"] = min((shape.matrix_world @ v.co).z for v in shape.data.vertices)  # Add Avatar stands it on z = 0
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
""", tmp_path, timeout=900)
    assert result["engines"] == ["CYCLES", "DREAMWALTZ"] and len(result["companion"]) == 1
    assert result["proxy"] == dict(render=True, camera=False, shadow=True), "the proxy is a shadow only"
    assert abs(result["lowest"]) < 0.02, "the avatar stands on the floor"
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
        print(f"frame {i + 1}: front cube over the avatar {hidden.sum()} px, worst {np.abs(image[front_in] - red).max()}; "
              f"avatar shown {shown.sum()} px, p95 error {np.percentile(err, 95):.1f}; avatar before the back cube "
              f"{over_back.sum()} px, {(np.abs(image[over_back] - avatar['rgb'][over_back]).max(-1) <= 8).mean():.3f} "
              f"within 8; back cube alone {back_only.sum()} px; plate {sky.sum()} px")
    assert (moved[0] != moved[1]).sum() > 30, "the avatar moved between the frames"

    # the shadow: the proxy's vertices cast along the sun onto the floor (z = 0), seen by the camera
    first = result["frames"][0]
    points, sun = np.asarray(result["proxy_points"]), np.asarray(result["sun"])
    on_floor = points - (points[:, 2:3] / sun[2]) * sun  # each point moved along the sun to z = 0
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
    for cube in ("front", "back"):  # the cubes' own shadows
        corners = np.asarray(result[cube])
        meshes |= _hull_mask(_project(first["w2c"], first["K"], corners - (corners[:, 2:3] / sun[2]) * sun),
                             WIDTH, HEIGHT, -2.0)
    floor_only = floor_in & (avatar["alpha"] < 1e-3) & ~meshes
    shadowed, lit = floor_only & core, floor_only & ~near
    image = np.asarray(Image.open(tmp_path / "frame_0001.png").convert("L")).astype(float)
    assert shadowed.sum() > 20 and lit.sum() > 1000, "the shadow falls on floor the camera sees"
    ratio = image[shadowed].mean() / np.median(image[lit])
    print(f"shadow: {shadowed.sum()} px at {ratio:.2f} of the lit floor's brightness ({lit.sum()} px)")
    assert ratio < 0.6, f"the floor is darker where the avatar's shadow falls ({ratio:.2f} of its brightness)"
    assert np.percentile(np.abs(image[lit] - np.median(image[lit])), 95) < 20, "elsewhere the sunlit floor is even"


@pytest.mark.versions
def test_render_with_scene_refuses_what_it_cannot_do_and_changes_nothing(avatar_dir, tmp_path):
    out = tmp_path / "ortho.png"
    result = run_blender(SCENE.format(width=64, height=48) + f"""
from dreamwaltz_blender import compat, compositing

def changed(before):
    # all but the scene's user count: Blender adds one to it when a Render Layers node is
    # pointed at another scene and never takes it back (a count, nothing a user sees)
    after, out = scene_state(), []
    for state in (before, after):
        state["scene"].pop("users", None)
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k), after.get(k)
        if a != b:
            both = isinstance(a, dict) and isinstance(b, dict)
            out += [f"{{k}}.{{n}}" for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)] if both else [k]
    return out

def refused(**kw):
    before = scene_state()
    try:
        bpy.ops.dreamwaltz.render_with_scene(**kw)
        return None, changed(before)
    except RuntimeError as exc:
        return str(exc), changed(before)

class OtherEngine(bpy.types.RenderEngine):
    bl_idname = "OTHER_ENGINE"
    bl_label = "Other"
bpy.utils.register_class(OtherEngine)

if compat.uses_scene_tree():   # the user's own compositor, which a failure must leave alone
    scene.use_nodes = True
else:
    compat.set_scene_compositor(scene, bpy.data.node_groups.new("User Compositor", "CompositorNodeTree"))
assert bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r}) == {{"FINISHED"}}
arm = bpy.context.active_object
result["alone_scenes"] = len(bpy.data.scenes)
result["no_meshes"] = refused()
cube = box("Cube", (0.6, 0.6, 0.6), (1.3, 0.0, 0.0), (0.2, 0.4, 0.9, 1))
scene.render.engine = "OTHER_ENGINE"
result["no_depth"] = refused()
assert bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r}) == {{"FINISHED"}}
bpy.context.active_object.location.x = -1.4
result["added_without_depth"] = len(bpy.data.scenes)
scene.render.engine = "CYCLES"
cam.data.type = "PANO"
result["panoramic"] = refused()
cam.data.type = "PERSP"
real = compositing._add_plate_nodes
def failing(*args, **kw):
    real(*args, **kw)
    raise RuntimeError("injected failure while building the compositor")
compositing._add_plate_nodes = failing
result["half_way"] = refused()
compositing._add_plate_nodes = real
for _ in range(2):
    assert bpy.ops.dreamwaltz.render_with_scene() == {{"FINISHED"}}
companion = [s for s in bpy.data.scenes if s != scene]
result["companions"] = [s.name for s in companion]
result["compositor"] = scene_state()["compositor"]
bpy.context.window.scene = companion[0]
result["from_companion"] = refused()
bpy.context.window.scene = scene

# an orthographic camera renders too: the avatar where the backend draws it through that camera
cam.data.type, cam.data.ortho_scale = "ORTHO", 3.0
scene.cycles.samples = 1
scene.render.film_transparent = True
scene.render.image_settings.file_format, scene.render.image_settings.color_mode = "PNG", "RGBA"
scene.render.filepath = {str(out)!r}
bpy.ops.render.render(write_still=True)
dg = bpy.context.evaluated_depsgraph_get()
c = camera_to_opencv(scene, cam)
result["ortho"] = dict(w2c=c.world_to_camera, K=c.K, ortho=c.ortho, near=c.near, far=c.far,
                       transforms=[skinning_transforms(o.evaluated_get(dg)) for o in scene.objects
                                   if o.type == "ARMATURE"])
from bpy_extras.object_utils import world_to_camera_view
pts = np.array([[0.3, 0.2, 1.0], [-0.7, 1.0, 0.2], [0.1, -1.0, 1.7]])
result["ortho_points"] = dict(ours=c.project(pts), blender=[list(world_to_camera_view(scene, cam, Vector(p)))
                                                             for p in pts])

# Use DreamWaltz Renderer: the Gaussians alone again
assert bpy.ops.dreamwaltz.use_engine() == {{"FINISHED"}}
state = scene_state()
result["alone_again"] = dict(scenes=[s.name for s in bpy.data.scenes], compositor=state["compositor"],
                             proxies=[o.hide_render for o in scene.objects if o.type == "MESH" and o.parent])
""", tmp_path, timeout=900)
    message, changed = result["no_meshes"]
    assert "no meshes" in message and changed == []
    assert result["alone_scenes"] == 1, "Add Avatar in a scene without meshes renders the avatar alone"
    message, changed = result["no_depth"]
    assert "'OTHER_ENGINE' gives no depth pass" in message and changed == []
    assert result["added_without_depth"] == 1, "Add Avatar still adds the avatar; the scene stays as it was"
    message, changed = result["panoramic"]
    assert "panoramic" in message and changed == []
    message, changed = result["half_way"]
    assert "injected failure" in message and changed == [], "a failure half-way leaves no trace"
    assert len(result["companions"]) == 1, "running it again reuses the avatars' scene"
    compositor = result["compositor"]
    tree = compositor["tree"] if isinstance(compositor, dict) and "tree" in compositor else compositor
    if isinstance(tree, list):
        tree = [t for _, t in tree if t][0]
    assert sum("DreamWaltz" in n for n in tree["nodes"]) == 5, tree["nodes"]
    message, changed = result["from_companion"]
    assert "avatars' own scene" in message and changed == []
    alone = result["alone_again"]
    assert alone["scenes"] == ["Scene"] and alone["proxies"] == [True, True]
    assert "Nearer" not in json.dumps(alone["compositor"]), "the depth merge is gone with the companion scene"

    from PIL import Image

    from backend.avatar import load_avatar, pose_with_transforms
    from backend.render import Camera, GaussianSet, rasterize

    pts = result["ortho_points"]
    blender = np.asarray(pts["blender"])
    np.testing.assert_allclose(np.asarray(pts["ours"])[:, 0], blender[:, 0] * 64, atol=1e-3)
    np.testing.assert_allclose(np.asarray(pts["ours"])[:, 1], (1 - blender[:, 1]) * 48, atol=1e-3)
    o = result["ortho"]
    assert o["ortho"]
    alpha = np.asarray(Image.open(out))[..., 3] / 255.0
    avatar = load_avatar(avatar_dir)
    with torch.no_grad():
        both = GaussianSet.concat([pose_with_transforms(avatar, np.asarray(t)) for t in o["transforms"]])
        camera = Camera(np.asarray(o["w2c"]), np.asarray(o["K"]), 64, 48, o["near"], o["far"], model="ortho")
        expected = rasterize(both, camera, backend="torch").alpha[..., 0].numpy()
    cube_free = np.ones_like(alpha, bool)
    cube_free[:, 44:] = False  # the cube stands to the right
    solid, empty = (expected > 0.98) & cube_free, (expected < 1e-3) & cube_free
    assert solid.sum() > 40 and (alpha[solid] > 0.97).all() and (alpha[empty] < 0.02).all(), \
        "through an orthographic camera the avatar is drawn where the backend draws it"


def test_viewport_frames_are_rendered_only_when_the_request_changes(avatar_dir, tmp_path):
    """Without a GPU (the frames' upload is a copy here): a redraw that changes nothing reuses
    the frame; a pose, a view or another region asks the backend again. And the viewport's
    camera, made from a projection matrix, is the camera object's own for every kind of camera."""
    result = run_blender(SCENE.format(width=64, height=48) + f"""
from dreamwaltz_blender.viewport import ViewFrames
bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
arm = bpy.context.active_object
frames = ViewFrames(lambda reply: reply["rgba"].copy(), color="srgb", slot="test")
view = camera_to_opencv(scene, cam)
dg = bpy.context.evaluated_depsgraph_get()
first = frames.get("region", dg, view)
again = frames.get("region", dg, view)
counts = [frames.renders, again is first]
arm.pose.bones["left_elbow"].rotation_quaternion = (0.9, 0.0, 0.0, 0.44)
dg = bpy.context.evaluated_depsgraph_get()
posed = frames.get("region", dg, view)
counts += [frames.renders, float(np.abs(posed.data - first.data).max())]
frames.get("region", dg, camera_to_opencv(scene, cam, 32, 24))
frames.get("other region", dg, view)
frames.get("other region", dg, view)
counts.append(frames.renders)
# the least recently drawn region's frame goes when more regions than MAX_REGIONS have drawn
from dreamwaltz_blender.viewport import MAX_REGIONS
frames.get("region", dg, view)
for i in range(MAX_REGIONS - 1):
    frames.get(f"new region {{i}}", dg, view)
before = frames.renders
frames.get("region", dg, view)
kept = frames.renders - before
frames.get("other region", dg, view)
result["evicted"] = [kept, frames.renders - before]
result["counts"] = counts
result["timing"] = sorted(posed.timing)

# a camera view's projection matrix (Blender's own, for any lens, shift, sensor fit and
# orthographic camera) gives the same camera as the camera object does
from dreamwaltz_blender.camera import view_to_opencv
worst = 0.0
rng = np.random.default_rng(1)
for kind in ("PERSP", "ORTHO"):
    for w, h, fit in ((1920, 1080, "AUTO"), (600, 900, "HORIZONTAL"), (640, 480, "VERTICAL")):
        scene.render.resolution_x, scene.render.resolution_y = w, h
        cam.data.type, cam.data.sensor_fit = kind, fit
        cam.data.shift_x, cam.data.shift_y = rng.uniform(-0.3, 0.3, 2)
        cam.data.lens, cam.data.ortho_scale = rng.uniform(20, 80), rng.uniform(1, 6)
        bpy.context.view_layer.update()
        dg = bpy.context.evaluated_depsgraph_get()
        P = cam.evaluated_get(dg).calc_matrix_camera(dg, x=w, y=h)
        ours = view_to_opencv(P, cam.matrix_world.inverted(), w, h)
        theirs = camera_to_opencv(scene, cam)
        pts = (np.array(cam.matrix_world) @ np.c_[rng.uniform(-1, 1, (20, 2)), -rng.uniform(1, 8, 20), np.ones(20)].T)[:3].T
        worst = max(worst, float(np.abs(ours.project(pts) - theirs.project(pts)).max()))
        assert ours.ortho == (kind == "ORTHO") and abs(ours.near - theirs.near) < 1e-3
result["worst"] = worst
""", tmp_path)
    counts = result["counts"]
    assert counts[:3] == [1, True, 2] and counts[4] == 4
    assert counts[3] > 0.1, "the new pose is drawn"
    assert result["evicted"] == [0, 1], "the region drawn longest ago is rendered again, the others reuse theirs"
    assert {"rig_ms", "upload_ms", "pose_ms", "raster_ms"} <= set(result["timing"])
    assert result["worst"] < 1e-2, "the viewport's camera from a projection matrix is the camera's"


@pytest.mark.versions
def test_viewport_projection_matches_blender_in_camera_ortho_and_perspective_views(avatar_dir, tmp_path):
    """The camera the viewport renders with projects the proxy's joints where Blender's own
    drawing does (`location_3d_to_region_2d`) in a camera view (zoomed, panned, lens shift), an
    orthographic and a perspective view; and the overlay shader, drawn into an off-screen buffer
    over meshes at known depths, shows the Gaussians only where they are nearer. Blender needs
    a GPU context for the view matrices to update (`gpu.init`, Blender 5.3 and newer)."""
    _needs_background_gpu()
    result = run_blender(SCENE.format(width=64, height=48) + f"""
import gpu
gpu.init()
from bpy_extras.view3d_utils import location_3d_to_region_2d
from dreamwaltz_blender.viewport import region_camera
bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
arm = bpy.context.active_object
arm.pose.bones["right_shoulder"].rotation_quaternion = (0.92, 0.0, 0.38, 0.0)
cam.data.shift_x, cam.data.shift_y, cam.data.lens = 0.07, -0.04, 28.0
bpy.context.view_layer.update()
joints = [list(arm.matrix_world @ pb.head) for pb in arm.pose.bones]
window = bpy.context.window_manager.windows[0]
area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
region = next(r for r in area.regions if r.type == "WINDOW")
rv3d = area.spaces[0].region_3d
views = {{}}
for name, perspective, zoom, offset in (("camera", "CAMERA", 12.0, (0.08, -0.05)), ("ortho", "ORTHO", 0, (0, 0)),
                                         ("persp", "PERSP", 0, (0, 0))):
    rv3d.view_perspective = perspective
    rv3d.view_camera_zoom, rv3d.view_camera_offset = zoom, offset
    if name != "camera":
        rv3d.view_location, rv3d.view_distance = (0.2, 0.0, 1.0), 5.0
        rv3d.view_rotation = Vector((0.3, -1.0, 0.4)).to_track_quat("Z", "Y")
    with bpy.context.temp_override(window=window, area=area, region=region):
        rv3d.update()
    view = region_camera(region, rv3d)
    ours = view.project(np.array(joints))
    theirs = [location_3d_to_region_2d(region, rv3d, Vector(j)) for j in joints]
    views[name] = dict(ours=ours[:, :2], theirs=[[t.x, region.height - t.y] for t in theirs], ortho=view.ortho,
                       size=[region.width, region.height])
result["views"] = views
""", tmp_path)
    for name, view in result["views"].items():
        ours, theirs = np.asarray(view["ours"]), np.asarray(view["theirs"])
        inside = (theirs[:, 0] > 0) & (theirs[:, 0] < view["size"][0]) & (theirs[:, 1] > 0) & (theirs[:, 1] < view["size"][1])
        assert inside.sum() > 40, f"{name}: the joints are in view"
        print(f"{name}: {inside.sum()} joints in view, worst {np.abs(ours - theirs).max():.5f} px from Blender's")
        np.testing.assert_allclose(ours, theirs, atol=0.02, err_msg=name)
        assert view["ortho"] == (name == "ortho")


@pytest.mark.versions
def test_overlay_shows_the_gaussians_only_where_they_are_nearer_than_the_meshes(avatar_dir, tmp_path):
    """The overlay's shader, drawn into an off-screen buffer (a GPU context: `gpu.init`, Blender
    5.3 and newer) after a wall that covers the left half of the view, 3 m (before the avatar)
    or 7 m (behind it) from the camera: the wall hides the avatar or the avatar hides the wall."""
    _needs_background_gpu()
    result = run_blender(SCENE.format(width=64, height=48) + f"""
import gpu
gpu.init()
from gpu_extras.batch import batch_for_shader
from dreamwaltz_blender.camera import view_to_opencv
from dreamwaltz_blender.viewport import ViewFrames, draw_overlay_frame, upload_textures
bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r})
dg = bpy.context.evaluated_depsgraph_get()
P = cam.evaluated_get(dg).calc_matrix_camera(dg, x=64, y=48)
V = cam.matrix_world.inverted()
view = view_to_opencv(P, V, 64, 48)
frame = ViewFrames(upload_textures, color="srgb", slot="overlay").get("region", dg, view)
flat = gpu.shader.from_builtin("UNIFORM_COLOR")
offscreen = gpu.types.GPUOffScreen(64, 48)
images = {{}}
for case, d in (("front", 3.0), ("behind", 7.0)):
    wall = [tuple(cam.matrix_world @ Vector((x * d, y * d, -d))) for x, y in ((-5, -5), (0, -5), (0, 5), (-5, 5))]
    with offscreen.bind():
        fb = gpu.state.active_framebuffer_get()
        fb.clear(color=(0.0, 0.0, 1.0, 1.0), depth=1.0)
        with gpu.matrix.push_pop(), gpu.matrix.push_pop_projection():
            gpu.matrix.load_matrix(V)
            gpu.matrix.load_projection_matrix(P)
            gpu.state.depth_test_set("LESS")
            gpu.state.depth_mask_set(True)
            flat.bind()
            flat.uniform_float("color", (1.0, 1.0, 0.0, 1.0))
            batch_for_shader(flat, "TRI_FAN", {{"pos": wall}}).draw(flat)
            gpu.state.depth_mask_set(False)
            draw_overlay_frame(frame.data, P)
        pixels = fb.read_color(0, 0, 64, 48, 4, 0, "FLOAT")
    images[case] = np.asarray(pixels, dtype=np.float32).reshape(48, 64, 4)[::-1]
result.update(images=images, w2c=view.world_to_camera, K=view.K, near=view.near, far=view.far,
              transforms=skinning_transforms(bpy.context.active_object.evaluated_get(dg)))
""", tmp_path)
    drawn = _avatar(avatar_dir, result["transforms"], result["w2c"], result["K"], 64, 48, result["near"], result["far"])
    alpha, colour = drawn["alpha"], drawn["colour"]
    edge = int(round(np.asarray(result["K"])[0][2]))
    left = np.zeros_like(alpha, bool)
    left[:, : edge - 1] = True
    right = np.zeros_like(alpha, bool)
    right[:, edge + 1:] = True
    solid, empty = alpha > 0.98, alpha < 1e-3
    yellow, blue = np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    front, behind = (np.asarray(result["images"][k])[..., :3] for k in ("front", "behind"))
    assert (solid & left).sum() > 20 and (solid & right).sum() > 20, "the wall's edge crosses the avatar"
    assert np.abs(front[left] - yellow).max() < 0.01, "a wall before the avatar hides it"
    assert np.abs(front[solid & right] - colour[solid & right]).max() < 0.02
    assert np.abs(front[empty & right] - blue).max() < 0.01
    assert np.abs(behind[solid & left] - colour[solid & left]).max() < 0.02, "the avatar hides a wall behind it"
    assert np.abs(behind[empty & left] - yellow).max() < 0.01
