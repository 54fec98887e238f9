"""Motion on a rig as one action (layered where the Blender has layered actions), written in bulk.

Keys are written with `keyframe_points.add` + `foreach_set` per F-curve (never one call per
key), so 10,000 frames of 55 bones take about a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .compat import ActionWriter, new_action
from .rig import EXPRESSION_KEY, FLOOR_KEY, ordered_pose_bones


def axis_angle_to_quaternion(aa: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 4) wxyz, with signs made continuous along the first axis (time), so
    that interpolating between keys never takes the long way round."""
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    half = 0.5 * angle
    scale = np.where(angle > 1e-8, np.sin(half) / np.maximum(angle, 1e-12), 0.5)
    q = np.concatenate([np.cos(half), aa * scale], axis=-1)
    for t in range(1, len(q)):
        flip = np.sum(q[t] * q[t - 1], axis=-1) < 0
        q[t][flip] *= -1
    return q


def fps_of(scene: Any) -> float:
    return scene.render.fps / scene.render.fps_base


def set_scene_fps(scene: Any, fps: float) -> None:
    """Integer rates exactly; NTSC-style rates (29.97, 59.94, 23.976) as n / 1.001."""
    for base in (1.0, 1.001):
        n = fps * base
        if abs(n - round(n)) < 1e-3:
            scene.render.fps, scene.render.fps_base = int(round(n)), base
            return
    scene.render.fps, scene.render.fps_base = int(np.ceil(fps)), float(np.ceil(fps) / fps)


def _new_action(arm: Any, name: str) -> ActionWriter:
    anim = arm.animation_data
    if anim is not None and anim.action is not None:
        anim.action.use_fake_user = True  # the previous motion stays in the file, not lost
    return new_action(arm, name)


def _write_curve(writer: ActionWriter, path: str, index: int, frames: np.ndarray, values: np.ndarray,
                 group: str) -> None:
    fc = writer.fcurve(path, index, group)
    n = len(frames)
    fc.keyframe_points.add(n)
    co = np.empty(2 * n, dtype=np.float32)
    co[0::2], co[1::2] = frames, values
    fc.keyframe_points.foreach_set("co", co)
    fc.keyframe_points.foreach_set("interpolation", np.full(n, 1, dtype=np.int32))  # LINEAR
    fc.update()


def key_motion(arm: Any, full_pose: np.ndarray, transl: np.ndarray, expression: np.ndarray,
               frame_start: int, name: str) -> Any:
    """Key (N, 55, 3) local axis-angles, pelvis translation and expression on `arm`; a motion
    with no translation at all is lifted so that the rest body's feet are on the floor."""
    n = full_pose.shape[0]
    frames = frame_start + np.arange(n, dtype=np.float32)
    writer = _new_action(arm, name)
    quats = axis_angle_to_quaternion(np.asarray(full_pose, dtype=np.float64))
    bones = ordered_pose_bones(arm)
    for j, pb in enumerate(bones):
        pb.rotation_mode = "QUATERNION"
        path = f'pose.bones["{pb.name}"].rotation_quaternion'
        for c in range(4):
            _write_curve(writer, path, c, frames, quats[:, j, c], pb.name)
    root = bones[0].name
    transl = np.asarray(transl, dtype=np.float64)
    if not np.any(transl):  # a motion without translation (talking, 265-column) stands on the floor
        transl = transl + np.array([0.0, float(arm.get(FLOOR_KEY, 0.0)), 0.0])
    for c in range(3):
        _write_curve(writer, f'pose.bones["{root}"].location', c, frames, transl[:, c], root)
    count = len(arm.get(EXPRESSION_KEY, []))
    if count:
        expr = np.zeros((n, count), dtype=np.float32)
        k = min(count, expression.shape[1] if expression.ndim == 2 else 0)
        expr[:, :k] = expression[:, :k]
        for e in range(count):
            _write_curve(writer, f'["{EXPRESSION_KEY}"]', e, frames, expr[:, e], "Expression")
    return writer.action
