"""The compositor: the avatars over a plate (a video, image sequence or still, also shown in the
camera view), merged by depth with the scene's meshes when the scene renders with them.

The render (or, with the meshes, the nearer of the scene's and the avatars' render with the
other one behind it, `scene_composite.py`) goes Alpha Over the plate; with a plate the view
transform is Standard so the plate's pixels pass through unchanged. Where the compositor lives
differs per Blender version (`compat.py`): the nodes are built in a fresh node group (5.x) or
beside the user's own nodes in the scene's tree (4.x), and the previous DreamWaltz nodes go only
once the new ones are complete.
"""

from __future__ import annotations

import os
import re
from typing import Any

TREE_NAME = "DreamWaltz Composite"


class PlateError(ValueError):
    pass


PLATE_KEY = "dreamwaltz_plate"  # on the movie clip and image a plate made (their paths are kept relative)


def load_clip(path: str) -> Any:
    """The plate as a movie clip: what the camera shows in the viewport, and its size, length and
    rate."""
    import bpy

    from .paths import stored_path

    if not os.path.exists(path):
        raise PlateError(f"the plate {path} does not exist")
    try:
        clip = bpy.data.movieclips.load(path, check_existing=True)
    except RuntimeError as exc:
        raise PlateError(f"Blender cannot read the plate {path}: {exc}") from exc
    if clip.size[0] == 0 or clip.size[1] == 0:
        raise PlateError(f"the plate {path} has no readable frames")
    clip[PLATE_KEY] = True
    if not clip.filepath.startswith("//"):
        clip.filepath = stored_path(path)
    return clip


def _first_number(path: str) -> int:
    match = re.search(r"(\d+)$", os.path.splitext(os.path.basename(path))[0])
    return int(match.group(1)) if match else 1


def plate_image(clip: Any) -> Any:
    """The plate as an image (what the compositor reads): past its last frame an image holds that
    frame, where a movie clip goes black."""
    import bpy

    path = bpy.path.abspath(clip.filepath, library=clip.library)
    image = bpy.data.images.load(path, check_existing=True)
    image.source = "MOVIE" if clip.source == "MOVIE" else ("SEQUENCE" if clip.frame_duration > 1 else "FILE")
    image[PLATE_KEY] = True
    if not image.filepath.startswith("//"):
        from .paths import stored_path

        image.filepath = stored_path(path)
    return image


def plate_datablocks() -> list[Any]:
    import bpy

    return [item for item in (*bpy.data.movieclips, *bpy.data.images) if item.get(PLATE_KEY)]


def motion_end(scene: Any) -> int | None:
    """The last keyed frame of the scene's avatar rigs (None without motion)."""
    import math

    from .rig import is_avatar_rig

    ends = [math.ceil(obj.animation_data.action.frame_range[1]) for obj in scene.objects
            if is_avatar_rig(obj) and obj.animation_data is not None and obj.animation_data.action is not None]
    return max(ends) if ends else None


def match_scene(scene: Any, clip: Any, frame_start: int | None = None) -> None:
    """Resolution from the plate; the frame range too, unless it is a still image (the scene's
    range stays) or shorter than the motion (the range keeps the motion; the plate holds)."""
    r = scene.render
    r.resolution_x, r.resolution_y = int(clip.size[0]), int(clip.size[1])
    r.resolution_percentage = 100
    start = scene.frame_start if frame_start is None else frame_start
    clip.frame_start = start
    scene.frame_start = start
    if clip.frame_duration > 1:
        end = start + clip.frame_duration - 1
        scene.frame_end = max(end, motion_end(scene) or end)
        if clip.fps > 0:
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


NODE_PREFIX = "DreamWaltz "


def _render_layers(tree: Any, scene: Any, location: tuple[float, float]) -> Any:
    layers: Any = tree.nodes.new("CompositorNodeRLayers")
    layers.scene = scene
    layers.layer = scene.view_layers[0].name
    layers.location = location
    return layers


def _over(tree: Any, background: Any, foreground: Any, location: tuple[float, float]) -> Any:
    """Premultiplied foreground over background (Alpha Over's default)."""
    from . import compat

    node: Any = tree.nodes.new("CompositorNodeAlphaOver")
    node.location = location
    bg, fg = compat.alpha_over_inputs(node)
    tree.links.new(background, bg)
    tree.links.new(foreground, fg)
    return node


def _depth_merge(tree: Any, scene: Any, avatars: Any) -> tuple[Any, list[tuple[Any, str]]]:
    """Per pixel the nearer of the scene's render and the avatars', over the other: both
    "over"s are made and Z Combine keeps the one whose front layer is nearer."""
    from . import compat

    meshes = _render_layers(tree, scene, (-700, 300))
    figures = _render_layers(tree, avatars, (-700, -50))
    figures_front = _over(tree, _output(meshes, "Image"), _output(figures, "Image"), (-400, 300))
    meshes_front = _over(tree, _output(figures, "Image"), _output(meshes, "Image"), (-400, 50))
    nearer: Any = tree.nodes.new("CompositorNodeZcombine")
    nearer.location = (-150, 200)
    image_a, depth_a, image_b, depth_b = compat.z_combine_inputs(nearer)
    links: Any = tree.links
    links.new(figures_front.outputs[0], image_a)
    links.new(_output(figures, "Depth"), depth_a)
    links.new(meshes_front.outputs[0], image_b)
    links.new(_output(meshes, "Depth"), depth_b)
    return nearer.outputs[0], [(meshes, "Render Layers"), (figures, "Avatar Layers"), (figures_front, "Avatars Over"),
                               (meshes_front, "Meshes Over"), (nearer, "Nearer")]


def _add_plate_nodes(tree: Any, scene: Any, clip: Any) -> list[tuple[Any, str]]:
    """The scene's render (merged by depth with its avatars' when it has a companion scene)
    Alpha Over the plate (when there is one), into the tree's output; returns the new nodes and
    the names they are to have."""
    from . import compat
    from .scene_composite import companion

    avatars = companion(scene)
    if avatars is not None:
        image, nodes = _depth_merge(tree, scene, avatars)
    else:
        layers = _render_layers(tree, scene, (-400, 200))
        image, nodes = _output(layers, "Image"), [(layers, "Render Layers")]
    if clip is not None:
        plate: Any = tree.nodes.new("CompositorNodeImage")
        plate.image = plate_image(clip)
        plate.frame_start, plate.frame_duration = clip.frame_start, max(int(clip.frame_duration), 1)
        plate.frame_offset = _first_number(clip.filepath) - 1 if plate.image.source == "SEQUENCE" else 0
        plate.use_cyclic, plate.use_auto_refresh = False, True
        plate.location = (-400, -300)
        over = _over(tree, _output(plate, "Image"), image, (100, 100))
        image = over.outputs[0]
        nodes += [(plate, "Plate"), (over, "Alpha Over")]
    tree.links.new(image, compat.output_socket(tree))
    return nodes


def current_plate(scene: Any) -> Any:
    """The movie clip of the plate behind the avatars in the scene's DreamWaltz compositor (None
    without one)."""
    import bpy

    from . import compat

    tree = compat.scene_compositor(scene)
    if tree is None or not (compat.uses_scene_tree() or tree.name.startswith(TREE_NAME)):
        return None
    node = tree.nodes.get(NODE_PREFIX + "Plate")
    image = getattr(node, "image", None)
    if image is None:
        return None
    path = bpy.path.abspath(image.filepath, library=image.library)
    return next((clip for clip in bpy.data.movieclips if clip.get(PLATE_KEY)
                 and bpy.path.abspath(clip.filepath, library=clip.library) == path), None)


KEEP = object()


def build_compositor(scene: Any, clip: Any = KEEP) -> Any:
    """The scene composites its render (merged with its avatars' by depth, when it renders with
    its meshes) over `clip` (by default the plate it has, if any); returns the node tree."""
    import bpy

    from . import compat

    if clip is KEEP:
        clip = current_plate(scene)
    if compat.uses_scene_tree():
        tree = compat.scene_tree(scene)
        old = [n for n in tree.nodes if n.name.startswith(NODE_PREFIX)]
        new = _add_plate_nodes(tree, scene, clip)
        for node in old:
            tree.nodes.remove(node)
    else:
        previous = compat.scene_compositor(scene)
        tree = compat.new_compositor_group(TREE_NAME)
        new = _add_plate_nodes(tree, scene, clip)
        compat.set_scene_compositor(scene, tree, previous)
        if previous is not None and previous.name.startswith(TREE_NAME) and previous.users == 0:
            bpy.data.node_groups.remove(previous)
        tree.name = TREE_NAME
    for node, name in new:
        node.name = node.label = NODE_PREFIX + name
    scene.render.use_compositing = True
    if clip is not None:
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
