"""An operator that fails changes nothing: what it touched is put back, what it made is removed.

`Change` is opened before an operator's work. It remembers every datablock that exists (new
ones are removed on failure), and the operator names the existing data it is about to change
(`keep`: an RNA struct's writable properties; `keep_scene`, `keep_rig`: everything those
operators touch, node links and background images included). `undo()` restores them in
reverse order, then removes the new datablocks.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

log = logging.getLogger("dreamwaltz.rollback")

VALUE_TYPES = {"BOOLEAN", "INT", "FLOAT", "STRING", "ENUM", "POINTER"}
SKIPPED = {"rna_type", "matrix_world", "matrix_local", "matrix_basis", "matrix_parent_inverse", "matrix",
           "frame_current_final", "mode"}


def _ids() -> Iterator[Any]:
    import bpy

    for name in dir(bpy.data):
        collection = getattr(bpy.data, name, None)
        if isinstance(collection, bpy.types.bpy_prop_collection):
            for item in collection:
                if isinstance(item, bpy.types.ID):
                    yield item


def _plain(value: Any) -> Any:
    """A comparable copy of an RNA value (vectors, colours and arrays become tuples)."""
    if isinstance(value, (bool, int, float, str, set)) or value is None:
        return value
    if hasattr(value, "bl_rna"):
        return value  # a pointer
    try:
        return tuple(_plain(v) for v in value)
    except TypeError:
        return value


def struct_values(struct: Any) -> dict[str, Any]:
    """The writable plain and pointer properties of an RNA struct."""
    out = {}
    for prop in struct.bl_rna.properties:
        name = prop.identifier
        if prop.is_readonly or prop.type not in VALUE_TYPES or name in SKIPPED:
            continue
        try:
            out[name] = _plain(getattr(struct, name))
        except (AttributeError, RuntimeError, TypeError):
            continue
    return out


def restore_values(struct: Any, values: dict[str, Any]) -> None:
    for name, old in values.items():
        try:
            if _plain(getattr(struct, name)) != old:
                setattr(struct, name, old)
        except (AttributeError, RuntimeError, TypeError, ValueError) as exc:
            log.debug("could not restore %s.%s: %s", struct, name, exc)


class Change:
    """What one operator changes, so that a failure can put it all back."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self._before = {id_.session_uid for id_ in _ids()}
        self._undo: list[Callable[[], None]] = []
        self._mode = context.mode
        self._keep_selection()

    def on_undo(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def keep(self, *structs: Any) -> None:
        """Remember the properties of existing structs (None and new datablocks are skipped)."""
        for struct in structs:
            if struct is None:
                continue
            values = struct_values(struct)
            self._undo.append(lambda s=struct, v=values: restore_values(s, v))

    def keep_nodes(self, tree: Any) -> None:
        """A node tree's nodes and links: nodes added later are removed, lost links come back."""
        if tree is None:
            return
        names = {n.name for n in tree.nodes}
        links = [(lk.from_node.name, lk.from_socket.identifier, lk.to_node.name, lk.to_socket.identifier)
                 for lk in tree.links]

        def restore() -> None:
            for node in [n for n in tree.nodes if n.name not in names]:
                tree.nodes.remove(node)
            present = {(lk.from_node.name, lk.from_socket.identifier, lk.to_node.name, lk.to_socket.identifier)
                       for lk in tree.links}
            for a, out, b, inp in links:
                if (a, out, b, inp) not in present:
                    src = next(s for s in tree.nodes[a].outputs if s.identifier == out)
                    dst = next(s for s in tree.nodes[b].inputs if s.identifier == inp)
                    tree.links.new(src, dst)

        self._undo.append(restore)

    def keep_collection_length(self, collection: Any) -> None:
        """Items appended to an RNA collection (e.g. a camera's background images) are removed."""
        count = len(collection)

        def restore() -> None:
            while len(collection) > count:
                collection.remove(collection[len(collection) - 1])

        self._undo.append(restore)

    def keep_scene(self, scene: Any) -> None:
        """Everything a scene-wide operator may touch: the scene, its render, colour and frame
        settings, its camera (object, lens, background images) and its compositor."""
        from . import compat

        self.keep(scene, scene.render, scene.view_settings, scene.display_settings,
                  getattr(scene.render, "image_settings", None))
        camera = scene.camera
        if camera is not None:
            self.keep(camera, camera.data)
            self.keep_collection_length(camera.data.background_images)
            for bg in camera.data.background_images:
                self.keep(bg)
        snapshot = compat.compositor_effects_snapshot(scene)
        self.on_undo(lambda: compat.restore_compositor(scene, snapshot))
        if compat.uses_scene_tree() and scene.node_tree is not None:
            self.keep_nodes(scene.node_tree)
        elif compat.uses_scene_tree():  # a tree made now cannot be deleted (4.x): it is left empty
            self.on_undo(lambda: scene.node_tree.nodes.clear() if scene.node_tree is not None else None)
        for layer in scene.view_layers:
            self.keep(layer)

    def keep_rig(self, arm: Any) -> None:
        """An avatar rig's object, pose bones and animation (the action it had included)."""
        self.keep(arm, arm.data)
        for pb in arm.pose.bones:
            self.keep(pb)
        anim = arm.animation_data
        if anim is None:
            self.on_undo(lambda: arm.animation_data_clear() if arm.animation_data is not None else None)
            return
        self.keep(anim)
        if anim.action is not None:
            self.keep(anim.action)

    def _keep_selection(self) -> None:
        context = self.context
        view_layer = getattr(context, "view_layer", None)
        if view_layer is None:
            return
        selected = [o for o in view_layer.objects if o.select_get()]
        self.keep(view_layer.objects)

        def restore() -> None:
            for obj in view_layer.objects:
                obj.select_set(obj in selected)

        self._undo.append(restore)

    def undo(self) -> None:
        """Put back what was kept (newest first), then remove the datablocks made since."""
        import bpy

        if self.context.mode != self._mode and self._mode == "OBJECT" and self.context.mode.startswith("EDIT"):
            bpy.ops.object.mode_set(mode="OBJECT")
        for fn in reversed(self._undo):
            try:
                fn()
            except Exception as exc:  # one restore failing must not stop the others
                log.warning("rollback step failed: %s", exc)
        made = [id_ for id_ in _ids() if id_.session_uid not in self._before]
        if made:
            bpy.data.batch_remove(made)
        self._undo.clear()
