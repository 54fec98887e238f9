"""The project's own motion file (.npz), written by save_motion; see ../README.md.

Keys are the Motion field names plus ``dreamwaltz_motion`` (format version), ``fps``,
``camera_world_to_camera`` / ``camera_K`` / ``camera_width`` / ``camera_height`` when there
is a camera; ``betas`` and ``gender`` only when known. Everything is a plain array
(strings as unicode arrays), so it loads with allow_pickle=False.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...safe_numpy import open_npz
from ...files import write_npz_atomic
from ..errors import MotionError
from ..types import FRAME_FIELDS, CameraTrack, Motion
from ._common import LoadContext, require, scalar, text

FORMAT_VERSION = 1
MARKER = "dreamwaltz_motion"


def is_project(keys) -> bool:
    return MARKER in keys


def save(motion: Motion, path) -> None:
    """Write atomically (backend.files.write_npz_atomic)."""
    motion.validate(path)
    arrays = {MARKER: np.int64(FORMAT_VERSION), "fps": np.float64(motion.fps),
              "source_format": np.str_(motion.source_format or ""),
              "source_up_axis": np.str_(motion.source_up_axis or "Y")}
    for key in FRAME_FIELDS:
        arrays[key] = np.asarray(getattr(motion, key), np.float32)
    if motion.betas is not None:
        arrays["betas"] = np.asarray(motion.betas, np.float32)
    if motion.gender:
        arrays["gender"] = np.str_(motion.gender)
    cam = motion.camera
    if cam is not None:
        arrays["camera_world_to_camera"] = np.asarray(cam.world_to_camera, np.float64)
        arrays["camera_K"] = np.asarray(cam.K, np.float64)
        if cam.width is not None:
            arrays["camera_width"] = np.int64(cam.width)
        if cam.height is not None:
            arrays["camera_height"] = np.int64(cam.height)
    write_npz_atomic(Path(path), arrays)


def load(path, ctx: LoadContext) -> Motion:
    with open_npz(path) as z:
        version = int(scalar(require(z, MARKER, path), MARKER, path))
        if version > FORMAT_VERSION:
            raise MotionError(path, MARKER, f"format version <= {FORMAT_VERSION}",
                              f"{version} (written by a newer DreamWaltz)")
        fields = {k: np.asarray(require(z, k, path), np.float32) for k in FRAME_FIELDS}
        keys = set(z.files)
        camera = None
        if "camera_world_to_camera" in keys:
            camera = CameraTrack(np.asarray(z["camera_world_to_camera"], np.float64),
                                 np.asarray(require(z, "camera_K", path), np.float64),
                                 int(z["camera_width"]) if "camera_width" in keys else None,
                                 int(z["camera_height"]) if "camera_height" in keys else None)
        fps = float(ctx.source_fps) if ctx.source_fps is not None else scalar(require(z, "fps", path), "fps", path)
        motion = Motion(fps=fps, betas=np.asarray(z["betas"], np.float32) if "betas" in keys else None,
                        gender=text(z["gender"]) if "gender" in keys else None,
                        source_format="dreamwaltz",
                        source_up_axis="Y", camera=camera, **fields)
    return motion
