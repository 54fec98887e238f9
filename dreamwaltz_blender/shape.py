"""Body shape on the rig: 10 beta sliders, height (m) and weight (kg), live rig rebuild, reset.

Moving a slider asks the backend for the new shape's rest joints and body surface (and, for
height and weight, the betas that reach the target; see backend/avatar/measure.py), then moves
the bones' rest positions and reshapes the proxy mesh. The render engine sends the rig's betas,
so the Gaussians follow. The trained shape is kept on the rig, so Reset returns to it exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import bpy
import numpy as np
from bpy.props import FloatProperty, FloatVectorProperty, PointerProperty

from . import session
from .client import BackendError
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


def _fields(arm: Any, betas: np.ndarray | None = None, height: float | None = None,
            weight: float | None = None) -> dict:
    fields: dict[str, Any] = {"avatar": session.avatar_handle(avatar_path(arm)),
                              "betas": [float(b) for b in (current_betas(arm) if betas is None else betas)]}
    if height is not None:
        fields["height"] = float(height)
    if weight is not None:
        fields["weight"] = float(weight)
    return fields


def _request(arm: Any, **fields: Any) -> dict:
    client = session.client()
    reply = client.request("shape", **_fields(arm, **fields))
    reply.update(client.arrays(reply, copy=True))
    return reply


def apply(context: Any, arm: Any, betas: np.ndarray | None = None, height: float | None = None,
          weight: float | None = None) -> dict:
    """Reshape the rig now (blocking: for operators and scripts)."""
    reply = _request(arm, betas=betas, height=height, weight=weight)
    apply_reply(context, arm, reply)
    return reply


def apply_reply(context: Any, arm: Any, reply: dict, sliders: bool = True) -> None:
    """A shape reply onto the rig: bone rest positions, proxy mesh, and (unless a newer slider
    move is waiting) the sliders' displayed values."""
    _set_rest_joints(context, arm, reply["rest_joints"])
    for child in arm.children:
        if child.type == "MESH" and len(child.data.vertices) == len(reply["vertices"]):
            child.data.vertices.foreach_set("co", reply["vertices"].reshape(-1))
            child.data.update()
    if not sliders:
        return
    _busy.add(arm.name)
    try:
        shape = arm.dreamwaltz_shape
        k = min(NUM_SLIDERS, len(reply["betas"]))
        shape.betas[:k] = reply["betas"][:k]
        shape.height = reply["height"]
        shape.weight = reply["weight"]
    finally:
        _busy.discard(arm.name)


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


@dataclasses.dataclass
class SliderQueue:
    """One rig's slider moves, coalesced: at most one shape request in flight; moves made while
    it runs collapse into the latest, sent once the reply is on the rig. The main thread only
    sends and applies; the backend computes in its own process."""

    wanted: dict | None = None   # the latest move not sent yet: {} (betas), {"height": h} or {"weight": w}
    future: Any = None
    error: str = ""


_queues: dict[str, SliderQueue] = {}  # per rig name, between timer calls (Blender's timers need it)


def schedule(name: str, **targets: Any) -> None:
    _queues.setdefault(name, SliderQueue()).wanted = targets
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.0)


def tick() -> bool:
    """Apply finished replies and send waiting moves, without waiting; True while work is left."""
    for name, queue in list(_queues.items()):
        arm = bpy.data.objects.get(name)
        if arm is None:
            del _queues[name]
            continue
        try:
            if queue.future is not None and queue.future.done():
                future, queue.future = queue.future, None
                client = session.client()
                reply = client.result(future, 0)
                reply.update(client.arrays(reply, copy=True))
                with bpy.context.temp_override(active_object=arm, object=arm):
                    apply_reply(bpy.context, arm, reply, sliders=queue.wanted is None)
            if queue.future is None and queue.wanted is not None:
                targets, queue.wanted = queue.wanted, None
                queue.future = session.client().submit("shape", **_fields(arm, **targets))
        except (BackendError, RuntimeError, ValueError) as exc:  # the rig stays as it was
            queue.error, queue.future, queue.wanted = str(exc), None, None
            print(f"DreamWaltz shape update failed: {exc}")
        if queue.future is None and queue.wanted is None:
            del _queues[name]
    return bool(_queues)


def _tick() -> float | None:
    return 0.02 if tick() else None


def _on_betas(self: Any, context: Any) -> None:
    arm = self.id_data
    if arm.name not in _busy and not bpy.app.background:
        schedule(arm.name)


def _on_height(self: Any, context: Any) -> None:
    arm = self.id_data
    if arm.name not in _busy and not bpy.app.background:
        schedule(arm.name, height=self.height)


def _on_weight(self: Any, context: Any) -> None:
    arm = self.id_data
    if arm.name not in _busy and not bpy.app.background:
        schedule(arm.name, weight=self.weight)


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
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    _queues.clear()
    bpy.utils.unregister_class(DREAMWALTZ_OT_reset_shape)
    bpy.utils.unregister_class(DREAMWALTZ_OT_apply_shape)
    delattr(bpy.types.Object, "dreamwaltz_shape")
    bpy.utils.unregister_class(DreamWaltzShape)
