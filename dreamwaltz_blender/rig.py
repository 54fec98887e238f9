"""The avatar's rig in Blender: an SMPL-X armature, a proxy mesh, expression properties.

Every bone's rest frame equals the SMPL-X model frame (bones point along +Y with zero roll), so
an SMPL-X local axis-angle is keyed directly as the pose bone's quaternion and the pelvis bone's
location is SMPL-X's translation; the armature object carries the Y-up -> Z-up rotation
(DESIGN.md §3). Skinning transforms for the backend come from the evaluated pose bones, so
whatever moves the bones (keys, IK, constraints, NLA) moves the avatar.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

AVATAR_KEY = "dreamwaltz_avatar"          # object property: the avatar folder of a rig
EXPRESSION_KEY = "expression"             # animatable array property on the rig object
OBJECT_KEY = "dreamwaltz_ply"             # object property: the .ply of a static Gaussian object
JOINTS_KEY = "dreamwaltz_joints"          # rig property: joint names in SMPL-X order, comma-separated
FLOOR_KEY = "dreamwaltz_floor"            # rig property: pelvis height that puts the rest body's feet at z = 0
Y_UP_TO_Z_UP = (math.pi / 2, 0.0, 0.0)    # rotation_euler of the armature object


def bone_length(name: str) -> float:
    if any(f in name for f in ("index", "middle", "ring", "pinky", "thumb")):
        return 0.015
    if "eye" in name or name == "jaw":
        return 0.02
    return 0.06


def build_rig(context: Any, name: str, rig: dict, avatar_path: str) -> Any:
    """Armature + proxy mesh in a new collection named after the avatar; returns the armature."""
    import bpy

    collection = bpy.data.collections.new(name)
    context.scene.collection.children.link(collection)
    arm_data = bpy.data.armatures.new(f"{name}_rig")
    arm = bpy.data.objects.new(f"{name}_rig", arm_data)
    collection.objects.link(arm)
    arm.rotation_mode = "XYZ"
    arm.rotation_euler = Y_UP_TO_Z_UP
    from .paths import stored_path

    arm[AVATAR_KEY] = stored_path(avatar_path)
    arm["dreamwaltz_num_betas"] = int(rig["num_betas"])
    arm[JOINTS_KEY] = ",".join(rig["joint_names"])
    _add_bones(context, arm, rig["joint_names"], rig["parents"], rig["rest_joints"])
    for pb in getattr(arm.pose, "bones", ()):
        pb.rotation_mode = "QUATERNION"
    floor = float(-np.min(rig["vertices"][:, 1]))  # the rest body's soles, below the pelvis (Y-up)
    arm[FLOOR_KEY] = floor
    ordered_pose_bones(arm)[0].location = (0.0, floor, 0.0)  # the pelvis: stands on the floor (z = 0)
    _add_expression(arm, int(rig["num_expression"]))
    mesh = _proxy_mesh(name, rig)
    collection.objects.link(mesh)
    mesh.parent = arm
    modifier = mesh.modifiers.new("Armature", "ARMATURE")
    modifier.object = arm
    mesh.display_type = "SOLID"
    mesh.hide_render = True  # the Gaussians are what renders; the proxy is for the viewport
    return arm


def _add_bones(context: Any, arm: Any, names: list[str], parents: np.ndarray, rest: np.ndarray) -> None:
    import bpy

    previous = context.view_layer.objects.active
    context.view_layer.objects.active = arm
    mode = context.object.mode if context.object else "OBJECT"
    if mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    bpy.ops.object.mode_set(mode="EDIT")
    bones = []
    edit_bones = arm.data.edit_bones
    for i, name in enumerate(names):
        b = edit_bones.new(name)
        head = tuple(float(x) for x in rest[i])
        b.head = head
        b.tail = (head[0], head[1] + bone_length(name), head[2])
        b.roll = 0.0
        bones.append(b)
    for i, p in enumerate(parents):
        if p >= 0:
            bones[i].parent = bones[int(p)]
            bones[i].use_connect = False
    bpy.ops.object.mode_set(mode="OBJECT")
    context.view_layer.objects.active = previous or arm


def _add_expression(arm: Any, count: int) -> None:
    arm[EXPRESSION_KEY] = [0.0] * max(count, 1)
    ui = arm.id_properties_ui(EXPRESSION_KEY)
    ui.update(soft_min=-3.0, soft_max=3.0, description="SMPL-X expression coefficients (animatable)")


def _proxy_mesh(name: str, rig: dict) -> Any:
    import bpy

    verts, faces = rig["vertices"], rig["faces"]
    me = bpy.data.meshes.new(f"{name}_proxy")
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.astype(np.float32).reshape(-1))
    me.loops.add(faces.size)
    me.loops.foreach_set("vertex_index", faces.astype(np.int32).reshape(-1))
    me.polygons.add(len(faces))
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.update()
    obj = bpy.data.objects.new(f"{name}_proxy", me)
    names = rig["joint_names"]
    groups = [obj.vertex_groups.new(name=n) for n in names]
    joints, weights = rig["skin_joints"], rig["skin_weights"]
    for j, group in enumerate(groups):
        rows, cols = np.nonzero((joints == j) & (weights > 1e-4))
        for w in np.unique(np.round(weights[rows, cols], 2)):
            sel = rows[np.isclose(np.round(weights[rows, cols], 2), w)]
            group.add(sel.tolist(), float(w), "REPLACE")
    return obj


def avatar_path(obj: Any) -> str:
    from .paths import resolved_path

    return resolved_path(obj, AVATAR_KEY)


def is_avatar_rig(obj: Any) -> bool:
    return obj is not None and obj.type == "ARMATURE" and AVATAR_KEY in obj


def ordered_pose_bones(arm: Any) -> list[Any]:
    """Pose bones in SMPL-X joint order (Blender lists bones in hierarchy order)."""
    return [arm.pose.bones[name] for name in str(arm[JOINTS_KEY]).split(",")]


def skinning_transforms(arm_eval: Any, world: np.ndarray | None = None) -> np.ndarray:
    """(55, 4, 4) G_j = armature_world · pose_bone.matrix · bone.matrix_local⁻¹ (evaluated);
    `world` replaces the armature's matrix (an instance's, for linked collection instances)."""
    world = np.array(arm_eval.matrix_world if world is None else world, dtype=np.float64)
    bones = ordered_pose_bones(arm_eval)
    out = np.empty((len(bones), 4, 4))
    for i, pb in enumerate(bones):
        out[i] = world @ np.array(pb.matrix, dtype=np.float64) @ np.linalg.inv(np.array(pb.bone.matrix_local, dtype=np.float64))
    return out


def local_rotations(arm_eval: Any) -> np.ndarray:
    """(55, 3, 3) each bone's rotation relative to its parent (for pose correctives)."""
    bones = ordered_pose_bones(arm_eval)
    out = np.empty((len(bones), 3, 3))
    for i, pb in enumerate(bones):
        m = np.array(pb.matrix, dtype=np.float64)
        if pb.parent is not None:
            m = np.linalg.inv(np.array(pb.parent.matrix, dtype=np.float64)) @ m
        r = m[:3, :3]
        out[i] = r / np.linalg.norm(r, axis=0, keepdims=True)
    return out


def expression_values(arm_eval: Any) -> list[float]:
    return [float(x) for x in arm_eval.get(EXPRESSION_KEY, [])]
