"""The load_motion op: any supported motion file, resampled, as arrays Blender keys directly."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import protocol as P
from .shm import ShmPool

UP_AXES = ("Y", "Z", "-Y", "-Z", "X", "-X")


def load_motion_op(services: Any, pool: ShmPool, msg: dict) -> dict:
    from ..motion import MotionError, load_motion

    path = Path(P.absolute_path(msg.get("path"), "the field 'path'"))
    if not path.exists():
        raise P.ProtocolError(P.NOT_FOUND, f"the motion file {path} does not exist")
    fps = msg.get("fps")
    if fps is not None and (not P.type_ok(fps, "number") or not 0 < fps <= 1000 or not math.isfinite(fps)):
        raise P.ProtocolError(P.BAD_REQUEST, f"fps must be a number between 0 and 1000; got {fps!r}"[:200])
    source_fps = msg.get("source_fps")
    if source_fps is not None and (not P.type_ok(source_fps, "number") or not 0 < source_fps <= 1000
                                   or not math.isfinite(source_fps)):
        raise P.ProtocolError(P.BAD_REQUEST, f"source_fps must be a number between 0 and 1000; got {source_fps!r}"[:200])
    up_axis = msg.get("up_axis")
    if up_axis is not None and up_axis not in UP_AXES:
        raise P.ProtocolError(P.BAD_REQUEST, f"up_axis must be one of {', '.join(UP_AXES)}; got {up_axis!r}"[:200])
    body = services.avatar(msg["avatar"]).body if msg.get("avatar") is not None else services.body_model()
    notes: list[str] = []
    try:
        source = load_motion(path, body_model=body, source_fps=source_fps, up_axis=up_axis, notes=notes)
        motion = source.resample(float(fps)) if fps else source
    except MotionError as exc:
        raise P.ProtocolError(P.FILE_ERROR, str(exc)) from exc
    n = motion.num_frames
    arrays = [("full_pose", "float32", (n, P.NUM_JOINTS, 3)), ("transl", "float32", (n, 3)),
              ("expression", "float32", (n, int(motion.expression.shape[1])))]
    if motion.camera is not None:
        arrays += [("camera_world_to_camera", "float32", (n, 4, 4)), ("camera_K", "float32", (n, 3, 3))]
    slot = P.check_slot(msg.get("slot") or "motion")
    block, specs, views = pool.allocate(slot, arrays)
    views["full_pose"][...] = motion.full_pose
    views["transl"][...] = motion.transl
    views["expression"][...] = motion.expression
    reply: dict[str, Any] = {"path": str(path.resolve()), "format": motion.source_format, "num_frames": n,
                             "fps": float(motion.fps), "source_fps": float(source.fps),
                             "duration": float(motion.duration), "num_expression": int(motion.expression.shape[1]),
                             "has_camera": motion.camera is not None, "slot": slot, "block": block.name,
                             "arrays": specs, "source_up_axis": source.source_up_axis, "notes": notes}
    if motion.camera is not None:
        views["camera_world_to_camera"][...] = np.asarray(motion.camera.world_to_camera)
        views["camera_K"][...] = np.asarray(motion.camera.K)
        reply.update(width=motion.camera.width, height=motion.camera.height)
    return reply
