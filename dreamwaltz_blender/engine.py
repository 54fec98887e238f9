"""The DreamWaltz render engine: F12, Render Animation and Rendered viewport shading.

Per frame it reads the evaluated rigs (so keys, IK, constraints and NLA all count) and static
Gaussian objects, sends skinning transforms, expressions and the camera to the backend, and
fills the Combined and Depth passes, which reach the compositor's Render Layers node.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import session
from .camera import CameraCV, camera_to_opencv, crop_camera, render_region, render_size
from .paths import resolved_path
from .rig import OBJECT_KEY, avatar_path, expression_values, is_avatar_rig, local_rotations, skinning_transforms
from .scene_composite import shot_scene

DEPTH_EMPTY = 1.0e10  # Blender's Z for "nothing here"


def scene_request(depsgraph: Any) -> tuple[list[dict], list[dict]]:
    """Avatars and static Gaussian objects of the evaluated scene, as render request items: every
    instance, so a linked collection instance renders where its instancer puts it."""
    from .shape import current_betas, is_edited

    avatars, objects = [], []
    for inst in depsgraph.object_instances:
        obj = inst.object
        if obj.hide_render or not (is_avatar_rig(obj) or OBJECT_KEY in obj):
            continue
        world = np.array(inst.matrix_world, dtype=np.float64)  # valid only while iterating: copy
        if is_avatar_rig(obj):
            item = {"avatar": session.avatar_handle(avatar_path(obj)),
                    "transforms": skinning_transforms(obj, world).tolist(),
                    "local_rotations": local_rotations(obj).tolist()}
            if is_edited(obj):
                item["betas"] = current_betas(obj).tolist()
            expression = expression_values(obj)
            if any(expression):
                item["expression"] = expression
            avatars.append(item)
        else:
            objects.append({"object": session.object_handle(resolved_path(obj, OBJECT_KEY)), "matrix": world.tolist()})
    return avatars, objects


def frame_request(depsgraph: Any, camera: CameraCV) -> dict:
    """What a frame shows: the camera, its size, the avatars and static Gaussian objects."""
    avatars, objects = scene_request(depsgraph)
    return {"camera": camera.as_message(), "width": camera.width, "height": camera.height,
            "avatars": avatars, "objects": objects}


def render_frame(request: dict, **options: Any) -> dict:
    """RGBA and depth of a `frame_request`, rows bottom-up as Blender stores pixels, empty depth
    as Blender's; the arrays are views of shared memory (no copy), valid until the next frame."""
    return session.client().render(**request, passes=("rgba", "depth"), flip_y=True, depth_empty=DEPTH_EMPTY,
                                   copy=False, **options)


def render_camera(depsgraph: Any, camera: CameraCV, background: Any = None) -> dict:
    """One frame from the backend, scene-linear (Gaussian colours are display sRGB values, as in
    every 3DGS model trained on photos; Blender's Combined pass is scene-linear, so the Standard
    view shows them unchanged); `timing` in the reply says where the time went. Use the arrays
    at once (`render_frame`)."""
    t0 = time.perf_counter()
    request = frame_request(depsgraph, camera)
    t1 = time.perf_counter()
    reply = render_frame(request, color="linear", background=background)
    reply.setdefault("timing", {})["rig_ms"] = round((t1 - t0) * 1e3, 3)
    return reply


def world_background(scene: Any) -> list[float] | None:
    """Opaque film: the world colour behind the avatars, which the backend composites (and then
    alpha is 1); transparent film keeps alpha (None)."""
    if scene.render.film_transparent:
        return None
    colour = scene.world.color if scene.world else (0.05, 0.05, 0.05)
    return [float(c) for c in colour]


def _engine_base() -> Any:
    import bpy

    return bpy.types.RenderEngine


class DreamWaltzRenderEngine(_engine_base()):
    bl_idname = "DREAMWALTZ"
    bl_label = "DreamWaltz"
    bl_use_preview = False
    bl_use_postprocess = True
    bl_use_shading_nodes_custom = False

    def update_render_passes(self, scene: Any = None, renderlayer: Any = None) -> None:
        self.register_pass(scene, renderlayer, "Combined", 4, "RGBA", "COLOR")
        if renderlayer is not None and renderlayer.use_pass_z:
            self.register_pass(scene, renderlayer, "Depth", 1, "Z", "VALUE")

    def render(self, depsgraph: Any) -> None:
        start = time.perf_counter()
        scene = depsgraph.scene
        shot = shot_scene(scene)  # the user's scene when this is its avatars' companion
        width, height = render_size(shot)
        if self.test_break():
            return
        if shot.camera is None:
            self.report({"ERROR"}, "DreamWaltz: the scene has no camera")
            return
        self.update_stats("", f"DreamWaltz: frame {scene.frame_current}, posing and rasterizing")
        try:
            camera = camera_to_opencv(shot, shot.camera.evaluated_get(depsgraph), width, height)
            region = render_region(shot, width, height)
            if region is not None:  # Blender's result is the region's size, cropped or not
                camera = crop_camera(camera, region)
                width, height = camera.width, camera.height
            reply = render_camera(depsgraph, camera, world_background(scene))
        except Exception as exc:  # one clear report; Blender shows it in the status bar
            self.report({"ERROR"}, f"DreamWaltz render failed: {exc}")
            raise
        t0 = time.perf_counter()
        result = self.begin_result(0, 0, width, height)
        layer = result.layers[0]
        rgba = reply["rgba"]
        if not scene.render.film_transparent:  # over the world: opaque
            rgba = rgba.copy()
            rgba[..., 3] = 1.0
        # foreach_set copies in C; assigning `rect` walks a Python sequence (hundreds of ms at 1080p)
        layer.passes["Combined"].rect.foreach_set(rgba.reshape(-1))
        depth = layer.passes.find_by_name("Depth", "")
        if depth is not None:
            depth.rect.foreach_set(reply["depth"].reshape(-1))
        self.end_result(result)
        reply["timing"]["fill_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        reply["timing"]["engine_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        session.record_timing(reply["timing"])
        self.update_progress(1.0)

    # ---- viewport (Rendered shading) -------------------------------------------------------
    def view_update(self, context: Any, depsgraph: Any) -> None:
        self.tag_redraw()

    def view_draw(self, context: Any, depsgraph: Any) -> None:
        from . import viewport

        try:
            frame = viewport.rendered_frames().get(context.region.as_pointer(), depsgraph,
                                                   viewport.region_camera(context.region, context.region_data))
        except Exception as exc:
            self.report({"ERROR"}, f"DreamWaltz viewport: {exc}")
            return
        session.record_timing(frame.timing)
        viewport.draw_rendered(self, frame.data, depsgraph.scene)


def compatible_panels() -> list[Any]:
    """Blender's own panels that make sense for this engine (output, format, film, color)."""
    import bpy

    names = ("RENDER_PT_format", "RENDER_PT_frame_range", "RENDER_PT_output", "RENDER_PT_color_management",
             "RENDER_PT_film", "VIEWLAYER_PT_layer_passes", "DATA_PT_lens", "DATA_PT_camera")
    return [getattr(bpy.types, n) for n in names if hasattr(bpy.types, n)]
