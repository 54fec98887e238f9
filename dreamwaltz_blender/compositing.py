"""Plates: a video or image sequence behind the avatars, in the camera view and the compositor.

Blender 5.0 composites through `scene.compositing_node_group` (a node group with a Group
Output). The avatar's render goes Alpha Over the plate; the view transform is Standard so the
plate's pixels pass through unchanged.
"""

from __future__ import annotations

import os
from typing import Any, cast

TREE_NAME = "DreamWaltz Composite"


class PlateError(ValueError):
    pass


def load_clip(path: str) -> Any:
    import bpy

    if not os.path.exists(path):
        raise PlateError(f"the plate {path} does not exist")
    try:
        clip = bpy.data.movieclips.load(path, check_existing=True)
    except RuntimeError as exc:
        raise PlateError(f"Blender cannot read the plate {path}: {exc}") from exc
    if clip.size[0] == 0 or clip.size[1] == 0:
        raise PlateError(f"the plate {path} has no readable frames")
    return clip


def match_scene(scene: Any, clip: Any, frame_start: int | None = None) -> None:
    r = scene.render
    r.resolution_x, r.resolution_y = int(clip.size[0]), int(clip.size[1])
    r.resolution_percentage = 100
    start = scene.frame_start if frame_start is None else frame_start
    clip.frame_start = start
    scene.frame_start = start
    scene.frame_end = start + max(clip.frame_duration, 1) - 1
    if clip.fps > 0 and clip.frame_duration > 1:
        from .animation import set_scene_fps

        set_scene_fps(scene, float(clip.fps))


def show_in_camera(camera_obj: Any, clip: Any) -> None:
    data = camera_obj.data
    data.show_background_images = True
    for bg in data.background_images:
        if bg.source == "MOVIE_CLIP" and bg.clip == clip:
            return
    bg = data.background_images.new()
    bg.source = "MOVIE_CLIP"
    bg.clip = clip
    bg.alpha = 1.0


def _output(node: Any, name: str) -> Any:
    sockets = node.outputs
    assert sockets is not None
    return sockets[name]


def build_compositor(scene: Any, clip: Any) -> Any:
    """Render Layers Alpha Over the plate (Blender 5.0 node groups); returns the node tree."""
    import bpy

    tree = bpy.data.node_groups.get(TREE_NAME) or bpy.data.node_groups.new(TREE_NAME, "CompositorNodeTree")
    tree.nodes.clear()
    interface = cast("bpy.types.NodeTreeInterface", tree.interface)
    if not any(getattr(s, "in_out", "") == "OUTPUT" for s in interface.items_tree):
        interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = cast("bpy.types.CompositorNodeRLayers", tree.nodes.new("CompositorNodeRLayers"))
    layers.scene = scene
    layers.location = (-400, 200)
    plate = cast("bpy.types.CompositorNodeMovieClip", tree.nodes.new("CompositorNodeMovieClip"))
    plate.clip = clip
    plate.location = (-400, -100)
    over = cast("bpy.types.Node", tree.nodes.new("CompositorNodeAlphaOver"))
    over.location = (0, 100)
    out = tree.nodes.new("NodeGroupOutput")
    out.location = (250, 100)
    links = cast("bpy.types.NodeLinks", tree.links)
    links.new(_output(plate, "Image"), over.inputs["Background"])
    links.new(_output(layers, "Image"), over.inputs["Foreground"])
    links.new(over.outputs[0], out.inputs[0])
    scene.compositing_node_group = tree
    scene.render.use_compositing = True
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    return tree


def setup_plate(scene: Any, path: str, frame_start: int | None = None) -> Any:
    """Everything the plate operator does; returns the movie clip."""
    clip = load_clip(path)
    match_scene(scene, clip, frame_start)
    if scene.camera is not None:
        show_in_camera(scene.camera, clip)
    build_compositor(scene, clip)
    return clip
