"""Motion from the backend onto a rig, and reenactment shots (camera track + motion + plate).

The backend reads every motion format (some need the body model, e.g. TalkSHOW's hand PCA) and
resamples it; Blender receives plain arrays and keys them in bulk.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import session
from .animation import fps_of, key_motion, set_scene_fps
from .camera import apply_opencv
from .rig import AVATAR_KEY, Y_UP_TO_Z_UP, avatar_path


def fetch_motion(path: str, fps: float | None, context: Any = None, source_fps: float | None = None,
                 up_axis: str | None = None) -> dict:
    """The backend's `load_motion`: metadata plus arrays (full_pose, transl, expression, camera),
    and the loader's `notes` for the user. `source_fps` and `up_axis` override what the file
    says (or what is detected from the body)."""
    c = session.client(context)
    rig_avatar = None
    if context is not None and context.active_object is not None and AVATAR_KEY in context.active_object:
        rig_avatar = session.avatar_handle(avatar_path(context.active_object), context)
    fields: dict[str, Any] = {"path": os.path.abspath(path), "slot": "motion"}
    if fps:
        fields["fps"] = float(fps)
    if source_fps:
        fields["source_fps"] = float(source_fps)
    if up_axis:
        fields["up_axis"] = up_axis
    if rig_avatar is not None:
        fields["avatar"] = rig_avatar
    reply = c.request("load_motion", **fields)
    reply.update(c.arrays(reply, copy=True))
    c.release("motion")
    return reply


def import_motion(context: Any, arm: Any, path: str, target_fps: float = 0.0, use_source_fps: bool = False,
                  frame_start: int | None = None, source_fps: float | None = None,
                  up_axis: str | None = None) -> dict:
    """Key a motion file on `arm`; the scene's rate is the target unless told otherwise."""
    scene = context.scene
    if use_source_fps:
        motion = fetch_motion(path, None, context, source_fps, up_axis)
        set_scene_fps(scene, float(motion["fps"]))
    else:
        motion = fetch_motion(path, target_fps or fps_of(scene), context, source_fps, up_axis)
    start = scene.frame_start if frame_start is None else frame_start
    name = f"{arm.name}|{os.path.splitext(os.path.basename(path))[0]}"
    key_motion(arm, motion["full_pose"], motion["transl"], motion["expression"], start, name)
    scene.frame_start = start
    scene.frame_end = start + int(motion["num_frames"]) - 1
    return motion


def key_camera_track(scene: Any, camera_obj: Any, w2c: np.ndarray, K: np.ndarray, width: int, height: int,
                     frame_start: int) -> None:
    """Key a per-frame OpenCV camera track (in SMPL-X's Y-up world) on a Blender camera."""
    import mathutils

    to_blender = np.eye(4)
    to_blender[:3, :3] = np.array(mathutils.Euler(Y_UP_TO_Z_UP).to_matrix())
    inv = np.linalg.inv(to_blender)
    camera_obj.rotation_mode = "QUATERNION"
    varying = not np.allclose(K, K[:1])
    for i in range(len(w2c)):
        frame = frame_start + i
        apply_opencv(camera_obj, scene, w2c[i] @ inv, K[i], width, height)
        camera_obj.keyframe_insert("location", frame=frame)
        camera_obj.keyframe_insert("rotation_quaternion", frame=frame)
        if varying or i == 0:
            camera_obj.data.keyframe_insert("lens", frame=frame)
            camera_obj.data.keyframe_insert("shift_x", frame=frame)
            camera_obj.data.keyframe_insert("shift_y", frame=frame)


def import_reenactment(context: Any, arm: Any, path: str, plate: str | None) -> dict:
    """One step to a ready shot: motion on `arm` at the clip's rate, its camera keyed per frame,
    and the plate behind it."""
    import bpy

    scene = context.scene
    motion = import_motion(context, arm, path, use_source_fps=True)
    if "camera_world_to_camera" not in motion:
        raise ValueError(f"{path} has no camera track (expected a Motion-X-ReEnact clip or a TRAM result)")
    arm.location = (0.0, 0.0, 0.0)
    arm.rotation_euler = Y_UP_TO_Z_UP
    arm.scale = (1.0, 1.0, 1.0)
    width = int(motion.get("width") or 0)
    height = int(motion.get("height") or 0)
    K = motion["camera_K"]
    if not width or not height:
        width, height = int(round(2 * K[0, 0, 2])), int(round(2 * K[0, 1, 2]))
    cam = scene.camera
    if cam is None:
        cam = bpy.data.objects.new("ReEnact Camera", bpy.data.cameras.new("ReEnact Camera"))
        scene.collection.objects.link(cam)
        scene.camera = cam
    if plate:
        from .compositing import setup_plate

        setup_plate(scene, plate, frame_start=scene.frame_start)
    key_camera_track(scene, cam, motion["camera_world_to_camera"], K, width, height, scene.frame_start)
    scene.frame_end = scene.frame_start + int(motion["num_frames"]) - 1
    return motion

