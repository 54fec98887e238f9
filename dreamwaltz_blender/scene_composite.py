"""Render with the scene: the user's meshes by their own engine (EEVEE, Cycles, Workbench), the
avatars by DreamWaltz, merged by depth in the compositor, in one F12 and in every frame of
Render Animation.

Blender gives a scene one engine, so the avatars render in a companion scene: its engine is
DreamWaltz and its background set is the user's scene, so it sees the same rigs, objects and
camera at the same frame with nothing to keep in sync. The user's compositor reads both scenes'
Render Layers (Blender renders every scene a Render Layers node names, at the frame and size of
the render) and keeps, per pixel, the nearer of the two with the other behind it
(`compositing.py`). Each avatar's proxy mesh becomes a shadow caster for the user's engine:
invisible to the camera and to reflections, so the figure stands on the floor in its shadow.
"""

from __future__ import annotations

from typing import Any

from .rig import OBJECT_KEY, is_avatar_rig

COMPANION_KEY = "dreamwaltz_avatar_scene"   # on the user's scene: its DreamWaltz companion
SHOT_KEY = "dreamwaltz_shot"                 # on the companion: it renders its background set's avatars
GEOMETRY = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME", "GPENCIL", "GREASEPENCIL"}
DEPTH_ENGINES = ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "CYCLES", "BLENDER_WORKBENCH")
CAMERA_RAYS = ("visible_camera", "visible_diffuse", "visible_glossy", "visible_transmission",
               "visible_volume_scatter")


class SceneCompositeError(ValueError):
    pass


def is_proxy(obj: Any) -> bool:
    return obj.type == "MESH" and obj.parent is not None and is_avatar_rig(obj.parent)


def scene_geometry(scene: Any) -> list[Any]:
    """What the user's engine draws: renderable geometry that is not DreamWaltz's own (proxies,
    the bounding boxes of Gaussian objects), collection instances included."""
    out = []
    for obj in scene.objects:
        if obj.hide_render or is_proxy(obj) or OBJECT_KEY in obj:
            continue
        if obj.type in GEOMETRY or (obj.type == "EMPTY" and obj.instance_type == "COLLECTION"
                                    and obj.instance_collection is not None):
            out.append(obj)
    return out


def avatar_rigs(scene: Any) -> list[Any]:
    return [o for o in scene.objects if is_avatar_rig(o)]


def scene_has_gaussians(scene: Any) -> bool:
    """Avatars or static Gaussian objects in the scene."""
    return any(is_avatar_rig(o) or OBJECT_KEY in o for o in scene.objects)


def companion(scene: Any) -> Any:
    """The scene's DreamWaltz companion, if it has one still tied to it."""
    other = scene.get(COMPANION_KEY)
    if other is None or not other.get(SHOT_KEY) or other.background_set != scene:
        return None
    return other


def shot_scene(scene: Any) -> Any:
    """The scene whose camera and render settings a render of `scene` uses: the user's scene
    when `scene` is its companion."""
    return scene.background_set if scene.get(SHOT_KEY) and scene.background_set is not None else scene


def engine_for(scene: Any, engine: str) -> str:
    """The engine the meshes render with: `engine` ("SCENE": the scene's own, EEVEE where that
    is DreamWaltz), checked to be one that writes a depth pass."""
    from . import compat

    chosen = scene.render.engine if engine == "SCENE" else engine
    if chosen == "EEVEE" or chosen == "DREAMWALTZ":
        chosen = compat.eevee_engine()
    if chosen not in DEPTH_ENGINES:
        raise SceneCompositeError(
            f"the scene's render engine {chosen!r} gives no depth pass to merge the avatars with; render the "
            "meshes with EEVEE, Cycles or Workbench")
    return chosen


def check(scene: Any, engine: str = "SCENE") -> str:
    """The engine to use, or the one reason this scene cannot render with its avatars."""
    if scene.get(SHOT_KEY):
        raise SceneCompositeError(f"{scene.name!r} is the avatars' own scene; run this from the scene it belongs to")
    if not scene_geometry(scene):
        raise SceneCompositeError(
            f"the scene {scene.name!r} has no meshes to render the avatars with (DreamWaltz alone renders the "
            "Gaussians: Use DreamWaltz Renderer)")
    if not scene_has_gaussians(scene):
        raise SceneCompositeError(f"the scene {scene.name!r} has no avatars or Gaussian objects (Add Avatar first)")
    if scene.camera is None:
        raise SceneCompositeError(f"the scene {scene.name!r} has no camera")
    if scene.camera.data.type not in ("PERSP", "ORTHO"):
        raise SceneCompositeError(f"the camera {scene.camera.name!r} is panoramic; DreamWaltz renders perspective "
                                  "and orthographic cameras")
    return engine_for(scene, engine)


def cast_shadows(proxy: Any) -> None:
    """The proxy renders in the user's engine as a shadow only."""
    proxy.hide_render = False
    for name in CAMERA_RAYS:
        if hasattr(proxy, name):
            setattr(proxy, name, False)
    proxy.visible_shadow = True


def proxies(scene: Any) -> list[Any]:
    return [c for rig in avatar_rigs(scene) for c in rig.children if is_proxy(c)]


def make_companion(scene: Any) -> Any:
    import bpy

    other: Any = companion(scene)
    if other is None:
        other = bpy.data.scenes.new(f"{scene.name} DreamWaltz")
        other[SHOT_KEY] = True
        other.background_set = scene
        scene[COMPANION_KEY] = other
    other.render.engine = "DREAMWALTZ"
    other.render.film_transparent = True
    other.render.use_compositing = False
    other.render.use_sequencer = False
    other.camera = scene.camera
    for layer in other.view_layers:
        layer.use_pass_z = True
    return other


def render_with_scene(change: Any, scene: Any, engine: str = "SCENE") -> tuple[str, Any]:
    """Render with Scene: `scene` checked, kept in `change` (a rollback.Change) and set up;
    returns the meshes' engine and the companion scene."""
    chosen = check(scene, engine)
    keep(change, scene)
    return chosen, set_up(scene, chosen)


def set_up(scene: Any, engine: str) -> Any:
    """Everything Render with Scene does to a checked scene, meshes in `engine` (as `check`
    resolved it); returns the companion scene."""
    from .compositing import build_compositor

    scene.render.engine = engine
    other = make_companion(scene)
    scene.view_layers[0].use_pass_z = True
    scene.render.use_motion_blur = False  # Gaussians have none: a blurred mesh over a sharp avatar mismatches
    for proxy in proxies(scene):
        cast_shadows(proxy)
    build_compositor(scene)
    return other


def tear_down(scene: Any) -> None:
    """Back to the avatars alone: the companion scene goes, the proxies are for the viewport
    only again, and the compositor (if DreamWaltz made one) keeps its plate without the merge."""
    import bpy

    from .compositing import build_compositor

    other = companion(scene)
    if other is None:
        return
    del scene[COMPANION_KEY]
    for proxy in proxies(scene):
        proxy.hide_render = True
    build_compositor(scene)
    bpy.data.scenes.remove(other)  # last: a failure before it leaves the companion to put back


def keep(change: Any, scene: Any) -> None:
    """What `set_up` touches, for a rollback.Change: the scene (render settings, view layers,
    compositor), the proxies and the scene's link to its companion."""
    change.keep_scene(scene)
    for proxy in proxies(scene):
        change.keep(proxy)
    other = scene.get(COMPANION_KEY)

    def restore() -> None:
        if other is None:
            scene.pop(COMPANION_KEY, None)
        else:
            scene[COMPANION_KEY] = other

    change.on_undo(restore)
