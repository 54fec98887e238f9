"""Every difference between the Blender versions the add-on supports, in one place.

Supported: 4.2 LTS, 4.5 LTS, 5.0 and the newest 5.x (DESIGN.md §3). The rest of the add-on
asks this module instead of testing `bpy.app.version` itself:

- actions: legacy F-curves below 4.4; layered actions (slots, a keyframe strip's channelbag)
  from 4.4, with `fcurves.new(group_name=)` only from 5.0;
- the compositor: the scene's own `node_tree` in 4.x, a node group in
  `scene.compositing_node_group` in 5.0-5.2, a compositor effect's node group from 5.3;
- node sockets: Alpha Over's inputs are "Image", "Image" in 4.x, "Background", "Foreground"
  from 5.0; the result goes to a Composite node in 4.x and to the group's output from 5.0.
"""

from __future__ import annotations

from typing import Any, Iterator

MINIMUM = (4, 2, 0)
LAYERED_ACTIONS = (4, 4, 0)
FCURVE_GROUP_NAME = (5, 0, 0)
NODE_GROUP_COMPOSITOR = (5, 0, 0)
COMPOSITOR_EFFECTS = (5, 3, 0)


def version() -> tuple[int, int, int]:
    import bpy

    return tuple(bpy.app.version)[:3]  # type: ignore[return-value]


def version_text(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v[:2]) if len(v) < 3 or v[2] == 0 else ".".join(str(x) for x in v)


def unsupported_reason(v: tuple[int, ...] | None = None) -> str | None:
    """Why this Blender cannot run the add-on (None when it can)."""
    v = tuple(v or version())
    if v < MINIMUM:
        return (f"DreamWaltz needs Blender {version_text(MINIMUM)} or newer (4.2 LTS, 4.5 LTS, 5.0 or 5.x); "
                f"this is Blender {version_text(v)}")
    return None


# ---- actions --------------------------------------------------------------------------------
class ActionWriter:
    """A new action assigned to one ID, to which F-curves are added by data path."""

    def __init__(self, action: Any, channels: Any, layered: bool) -> None:
        self.action = action
        self._channels = channels      # the channelbag (layered) or the action itself (legacy)
        self._layered = layered

    def fcurve(self, data_path: str, index: int, group: str) -> Any:
        curves = self._channels.fcurves
        if not self._layered:
            return curves.new(data_path, index=index, action_group=group)
        if version() >= FCURVE_GROUP_NAME:
            return curves.new(data_path, index=index, group_name=group)
        fc = curves.new(data_path, index=index)
        groups = self._channels.groups
        fc.group = groups.get(group) or groups.new(group)
        return fc


def new_action(owner: Any, name: str) -> ActionWriter:
    """A new, empty action named `name`, assigned to `owner` (an object), ready for keys."""
    import bpy

    anim = owner.animation_data or owner.animation_data_create()
    action: Any = bpy.data.actions.new(name)  # typed for one version; the branches cover them all
    if version() < LAYERED_ACTIONS:
        action.id_root = "OBJECT"
        anim.action = action
        return ActionWriter(action, action, layered=False)
    slot = action.slots.new(id_type="OBJECT", name=owner.name)
    strip: Any = action.layers.new("Motion").strips.new(type="KEYFRAME")
    channelbag = strip.channelbag(slot, ensure=True)
    anim.action = action
    anim.action_slot = slot
    return ActionWriter(action, channelbag, layered=True)


def is_layered(action: Any) -> bool:
    return bool(getattr(action, "is_action_layered", False))


def action_fcurves(action: Any) -> Iterator[Any]:
    """Every F-curve of an action, legacy or layered (all layers, strips and slots)."""
    if not is_layered(action):
        yield from getattr(action, "fcurves", ())
        return
    for layer in action.layers:
        for strip in layer.strips:
            for bag in getattr(strip, "channelbags", ()):
                yield from bag.fcurves


# ---- the compositor ------------------------------------------------------------------------
def uses_scene_tree() -> bool:
    """4.x: the scene composites through its own embedded node tree (`scene.node_tree`)."""
    return version() < NODE_GROUP_COMPOSITOR


def scene_tree(scene: Any) -> Any:
    """4.x only: the scene's own compositor tree, switched on (created by Blender if needed)."""
    scene.use_nodes = True
    return scene.node_tree


def new_compositor_group(name: str) -> Any:
    """5.x: a compositor node group with one colour output, to become the scene's compositor."""
    import bpy

    tree: Any = bpy.data.node_groups.new(name, "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    return tree


def scene_compositor(scene: Any) -> Any:
    """The node tree the scene composites through now (None when it has none)."""
    if uses_scene_tree():
        return scene.node_tree if scene.use_nodes else None
    if version() >= COMPOSITOR_EFFECTS:
        for effect in scene.compositor_effects:
            if effect.node_group is not None:
                return effect.node_group
        return None
    return scene.compositing_node_group


def set_scene_compositor(scene: Any, tree: Any, previous: Any = None) -> None:
    """5.x: make `tree` the scene's compositor, in place of `previous` where that is one of
    the scene's (its effect keeps its place in the stack from 5.3 on)."""
    if version() >= COMPOSITOR_EFFECTS:
        effects = scene.compositor_effects
        effect = next((e for e in effects if previous is not None and e.node_group == previous), None)
        if effect is None:
            effect = effects.new(name=tree.name)
        effect.node_group = tree
        return
    scene.compositing_node_group = tree


def compositor_effects_snapshot(scene: Any) -> Any:
    """What `restore_compositor` needs to undo `set_scene_compositor`."""
    if version() >= COMPOSITOR_EFFECTS:
        return [(e, e.node_group) for e in scene.compositor_effects]
    if uses_scene_tree():
        return None
    return scene.compositing_node_group


def restore_compositor(scene: Any, snapshot: Any) -> None:
    if version() >= COMPOSITOR_EFFECTS:
        kept = {e.as_pointer(): group for e, group in snapshot}
        for effect in list(scene.compositor_effects):
            if effect.as_pointer() not in kept:
                scene.compositor_effects.remove(effect)
            elif effect.node_group != kept[effect.as_pointer()]:
                effect.node_group = kept[effect.as_pointer()]
    elif not uses_scene_tree():
        scene.compositing_node_group = snapshot


def output_socket(tree: Any) -> Any:
    """The input socket that takes the composited image: the Composite node's (4.x, added if
    missing) or the group output's (5.x)."""
    kind = "CompositorNodeComposite" if uses_scene_tree() else "NodeGroupOutput"
    node = next((n for n in tree.nodes if n.bl_idname == kind), None)
    if node is None:
        node = tree.nodes.new(kind)
        node.location = (300, 100)
    return node.inputs[0]


def alpha_over_inputs(node: Any) -> tuple[Any, Any]:
    """(background, foreground) inputs of an Alpha Over node."""
    if uses_scene_tree():
        return node.inputs[1], node.inputs[2]  # "Fac", "Image" (background), "Image" (foreground)
    return node.inputs["Background"], node.inputs["Foreground"]


# ---- scene composition (meshes by the user's engine, avatars by DreamWaltz) ----------------
EEVEE_NEXT_NAME = (5, 0, 0)


def eevee_engine() -> str:
    """EEVEE's engine id: "BLENDER_EEVEE_NEXT" in 4.2-4.5, "BLENDER_EEVEE" again from 5.0."""
    return "BLENDER_EEVEE_NEXT" if version() < EEVEE_NEXT_NAME else "BLENDER_EEVEE"


def z_combine_inputs(node: Any) -> tuple[Any, Any, Any, Any]:
    """(image A, depth A, image B, depth B) of a Z Combine node, which outputs the image of the
    nearer depth; alpha mixing is switched off (it is a straight-alpha mix, wrong for
    premultiplied renders: callers do the "over" themselves). A property in 4.2, a socket from
    5.0, both in 4.5."""
    if hasattr(node, "use_alpha"):
        node.use_alpha = False
        node.use_antialias_z = False
    for name in ("Use Alpha", "Anti-Alias"):
        socket = node.inputs.get(name)
        if socket is not None:
            socket.default_value = False
    inputs = node.inputs
    return inputs[0], inputs[1], inputs[2], inputs[3]


def writes_depth(shader_info: Any) -> None:
    """Declare that a fragment shader writes gl_FragDepth (`depth_write` from 4.5; OpenGL, all
    4.2 has, needs no declaration)."""
    if hasattr(shader_info, "depth_write"):
        shader_info.depth_write("ANY")
