"""Body shape on the rig: 10 beta sliders, height (m) and weight (kg), live rig rebuild, reset.

Moving a slider asks the backend for the new shape's rest joints and body surface (and, for
height and weight, the betas that reach the target; see backend/avatar/measure.py), then moves
the bones' rest positions and reshapes the proxy mesh. The render engine sends the rig's betas,
so the Gaussians follow. The trained shape is kept on the rig, so Reset returns to it exactly.
"""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np
from bpy.props import FloatProperty, FloatVectorProperty, PointerProperty

from . import session
from .operators import NeedsRig, Reporting, require_rig
from .rig import avatar_path, ordered_pose_bones

TRAINED_KEY = "dreamwaltz_trained_betas"
MAX_BETA = 5.0
NUM_SLIDERS = 10
_busy: set[str] = set()


def trained_betas(arm: Any) -> np.ndarray:
    return np.asarray(arm.get(TRAINED_KEY, [0.0] * NUM_SLIDERS), dtype=np.float64)


def current_betas(arm: Any) -> np.ndarray:
    """Full betas: the sliders over the trained values (a real SMPL-X may have more than 10)."""
    out = trained_betas(arm).copy()
    k = min(NUM_SLIDERS, len(out))
    out[:k] = np.asarray(arm.dreamwaltz_shape.betas[:k])
    return out


def is_edited(arm: Any) -> bool:
    return bool(np.any(np.abs(current_betas(arm) - trained_betas(arm)) > 1e-7))


def _request(arm: Any, **fields: Any) -> dict:
    client = session.client()
    reply = client.request("shape", avatar=session.avatar_handle(avatar_path(arm)), **fields)
    reply.update(client.arrays(reply, copy=True))
    client.release(reply["slot"])
    return reply


def apply(context: Any, arm: Any, betas: np.ndarray | None = None, height: float | None = None,
          weight: float | None = None) -> dict:
    """Reshape the rig: bone rest positions, proxy mesh, and the sliders' displayed values."""
    fields: dict[str, Any] = {"betas": [float(b) for b in (current_betas(arm) if betas is None else betas)]}
    if height is not None:
        fields["height"] = float(height)
    if weight is not None:
        fields["weight"] = float(weight)
    reply = _request(arm, **fields)
    _set_rest_joints(context, arm, reply["rest_joints"])
    for child in arm.children:
        if child.type == "MESH" and len(child.data.vertices) == len(reply["vertices"]):
            child.data.vertices.foreach_set("co", reply["vertices"].reshape(-1))
            child.data.update()
    _busy.add(arm.name)
    try:
        shape = arm.dreamwaltz_shape
        k = min(NUM_SLIDERS, len(reply["betas"]))
        shape.betas[:k] = reply["betas"][:k]
        shape.height = reply["height"]
        shape.weight = reply["weight"]
    finally:
        _busy.discard(arm.name)
    return reply


def _set_rest_joints(context: Any, arm: Any, joints: np.ndarray) -> None:
    previous_active, previous_mode = context.view_layer.objects.active, context.mode
    if previous_mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    edit = arm.data.edit_bones
    for pb, head in zip(ordered_pose_bones(arm), joints):
        b = edit[pb.name]
        length = b.length
        b.head = tuple(float(x) for x in head)
        b.tail = (float(head[0]), float(head[1]) + length, float(head[2]))
        b.roll = 0.0
    bpy.ops.object.mode_set(mode="OBJECT")
    context.view_layer.objects.active = previous_active


def _deferred(name: str, **targets: Any) -> None:
    """Slider callbacks run where mode switches are not allowed: rebuild from a timer."""
    def run() -> None:
        arm = bpy.data.objects.get(name)
        if arm is None:
            return None
        context = bpy.context
        with context.temp_override(active_object=arm, object=arm):
            try:
                apply(context, arm, **targets)
            except Exception as exc:  # shown in the status bar; the rig is left as it was
                print(f"DreamWaltz shape update failed: {exc}")
        return None

    bpy.app.timers.register(run, first_interval=0.0)


def _on_betas(self: Any, context: Any) -> None:
    arm = self.id_data
    if arm.name not in _busy and not bpy.app.background:
        _deferred(arm.name)


def _on_height(self: Any, context: Any) -> None:
    arm = self.id_data
    if arm.name not in _busy and not bpy.app.background:
        _deferred(arm.name, height=self.height)


def _on_weight(self: Any, context: Any) -> None:
    arm = self.id_data
    if arm.name not in _busy and not bpy.app.background:
        _deferred(arm.name, weight=self.weight)


class DreamWaltzShape(bpy.types.PropertyGroup):
    betas: FloatVectorProperty(  # type: ignore[valid-type]
        name="Betas", size=NUM_SLIDERS, min=-MAX_BETA, max=MAX_BETA, update=_on_betas,
        description="Body shape coefficients (standard deviations; clamped to ±5)")
    height: FloatProperty(  # type: ignore[valid-type]
        name="Height", unit="LENGTH", min=0.5, max=2.6, update=_on_height,
        description="Standing height; sets the betas that reach it and keep the weight")
    weight: FloatProperty(  # type: ignore[valid-type]
        name="Weight", unit="MASS", min=10.0, max=300.0, update=_on_weight,
        description="Body mass from volume at 985 kg/m³; sets the betas that reach it and keep the height")


class DREAMWALTZ_OT_apply_shape(NeedsRig, Reporting, bpy.types.Operator):
    """Rebuild the active avatar's rig for its shape sliders (bones' rest positions, proxy mesh)"""

    bl_idname = "dreamwaltz.apply_shape"
    bl_label = "Apply Shape"
    bl_options = {"REGISTER", "UNDO"}
    height: FloatProperty(name="Height", default=0.0, unit="LENGTH")  # type: ignore[valid-type]
    weight: FloatProperty(name="Weight", default=0.0, unit="MASS")  # type: ignore[valid-type]

    def apply(self, context: Any) -> set[str]:
        arm = require_rig(context)
        reply = apply(context, arm, height=self.height or None, weight=self.weight or None)
        self.report({"INFO"}, f"shape: {reply['height']:.3f} m, {reply['weight']:.1f} kg")
        return {"FINISHED"}


class DREAMWALTZ_OT_reset_shape(NeedsRig, Reporting, bpy.types.Operator):
    """Return the active avatar to the body shape it was trained with"""

    bl_idname = "dreamwaltz.reset_shape"
    bl_label = "Reset Shape"
    bl_options = {"REGISTER", "UNDO"}

    def apply(self, context: Any) -> set[str]:
        arm = require_rig(context)
        apply(context, arm, betas=trained_betas(arm))
        return {"FINISHED"}


def init_rig(arm: Any, trained: list[float], report: dict | None = None) -> None:
    """Store the trained shape on a new rig and show it on the sliders."""
    arm[TRAINED_KEY] = [float(b) for b in trained]
    _busy.add(arm.name)
    try:
        k = min(NUM_SLIDERS, len(trained))
        arm.dreamwaltz_shape.betas[:k] = trained[:k]
        if report is not None:
            arm.dreamwaltz_shape.height = report["height"]
            arm.dreamwaltz_shape.weight = report["weight"]
    finally:
        _busy.discard(arm.name)


def register() -> None:
    bpy.utils.register_class(DreamWaltzShape)
    setattr(bpy.types.Object, "dreamwaltz_shape", PointerProperty(type=DreamWaltzShape))
    bpy.utils.register_class(DREAMWALTZ_OT_apply_shape)
    bpy.utils.register_class(DREAMWALTZ_OT_reset_shape)


def unregister() -> None:
    bpy.utils.unregister_class(DREAMWALTZ_OT_reset_shape)
    bpy.utils.unregister_class(DREAMWALTZ_OT_apply_shape)
    delattr(bpy.types.Object, "dreamwaltz_shape")
    bpy.utils.unregister_class(DreamWaltzShape)
