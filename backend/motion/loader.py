"""load_motion / save_motion: detect the format from the content and return a Y-up Motion."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..safe_numpy import ArrayFileError, open_npz
from ..files import LFS_POINTER_PREFIX, lfs_pointer_message
from .convert import to_y_up
from .errors import MotionError
from .formats import aist, amass, motionx, project, reenact, smplx265, talkshow, tram
from .formats._common import LoadContext
from .repair import count_nonfinite, repair_nonfinite
from .safe_pickle import load_npy_object, safe_load
from .types import Motion

SUPPORTED_FORMATS = {
    "amass": "AMASS .npz (SMPL-H poses N×156 or SMPL-X N×165, mocap_frame(_)rate), BEAT2-style npz",
    "aist": "AIST++ .pkl (smpl_poses N×72, smpl_trans, smpl_scaling)",
    "motionx": "Motion-X .npy (N×322 smplx_322 layout)",
    "talkshow": "TalkSHOW / SHOW .pkl (body_pose_axis, 12 hand PCA coefficients, expression)",
    "smplx265": "SMPL-X 265-column .npy (TalkSHOW output, DreamWaltz-G demos)",
    "reenact": "Motion-X-ReEnact .json (annotations with smplx_params and cam_params)",
    "tram": "TRAM results (hps_track_<k>.npy + camera.npy, or their folder)",
    "dreamwaltz": "DreamWaltz motion .npz (written by save_motion / `motion convert`)",
}

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _unknown(path, found: str) -> MotionError:
    listing = "; ".join(f"{k}: {v}" for k, v in SUPPORTED_FORMATS.items())
    return MotionError(path, None, message=f"unknown motion format ({found}). Supported: {listing}")


def detect_format(path) -> str:
    """The format name of a file or folder, from its content (magic bytes, keys, columns)."""
    fmt, _ = _detect(Path(path))
    return fmt


def _detect(p: Path):
    """(format, parsed object or None): pickles/JSON/object-npy are parsed once, here."""
    if p.is_dir():
        if tram.find_pair(p):
            return "tram", None
        raise _unknown(p, "a folder without TRAM's hps_track_<k>.npy and camera.npy")
    if not p.is_file():
        raise MotionError(p, None, message="no such file")
    with open(p, "rb") as f:
        head = f.read(16)
    if not head:
        raise MotionError(p, None, "a motion file", "an empty file")
    if head.startswith(LFS_POINTER_PREFIX[:16]):
        raise MotionError(p, None, message=f"this is {lfs_pointer_message(p)}")
    if head.startswith(_ZIP_MAGIC):
        try:
            with open_npz(p) as z:
                keys = set(z.files)
        except ArrayFileError as exc:
            raise _unknown(p, f"a zip archive that is not a readable .npz: {exc.problem}") from None
        if project.is_project(keys):
            return "dreamwaltz", None
        if amass.is_amass(keys):
            return "amass", None
        raise _unknown(p, f"an .npz with keys {sorted(keys)}")
    if head.startswith(_NPY_MAGIC):
        obj = load_npy_object(p)
        if isinstance(obj, np.ndarray):
            if obj.ndim == 2 and obj.shape[1] == motionx.COLUMNS:
                return "motionx", obj
            if obj.ndim == 2 and obj.shape[1] == smplx265.COLUMNS:
                return "smplx265", obj
            raise _unknown(p, f"a .npy array of shape {obj.shape} (expected N×322 or N×265)")
        if tram.is_hps(obj) or tram.is_camera(obj):
            return "tram", None
        raise _unknown(p, f"a .npy holding {type(obj).__name__}")
    if head[:1] == b"\x80" or p.suffix.lower() in (".pkl", ".pickle"):
        with open(p, "rb") as f:
            obj = safe_load(f, os.fspath(p))
        if aist.is_aist(obj):
            return "aist", obj
        if talkshow.is_talkshow(obj):
            return "talkshow", obj
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise _unknown(p, f"a pickle holding {keys}")
    if head.lstrip()[:1] in (b"{", b"["):
        obj = reenact.read_json(p)
        if reenact.is_reenact(obj):
            return "reenact", obj
        raise _unknown(p, "a JSON file without Motion-X-ReEnact annotations")
    raise _unknown(p, f"unrecognised content starting with {head[:8]!r}")


def load_motion(path, *, fps: float | None = None, source_fps: float | None = None,
                body_model=None, repair: bool = False, up_axis: str | None = None,
                notes: list | None = None) -> Motion:
    """Load any supported motion file as a Y-up SMPL-X Motion.

    path: a file (format detected from content) or a TRAM result folder.
    fps: resample to this rate (slerp; duration kept). source_fps: override the file's
    own (or the format's default) frame rate. body_model: a backend.body.BodyModel (or any
    object with hand_pca / rest_joints / num_betas): needed for hands stored as PCA or
    relative to the hand mean (TalkSHOW, the 265 layout, BEAT2) and for the exact pelvis
    pivot when the world is rotated. repair: interpolate over NaN/inf frames (with a
    warning) instead of refusing the file. up_axis: override the detected source up axis
    ("Y", "Z", "-Y", ...). notes: a list that receives human-readable remarks.
    """
    p = Path(path)
    try:
        return _load(p, fps, source_fps, body_model, repair, up_axis, notes)
    except ArrayFileError as exc:
        raise MotionError(exc.path, exc.key, message=exc.problem) from None


def _load(p: Path, fps, source_fps, body_model, repair, up_axis, notes) -> Motion:
    fmt, obj = _detect(p)
    if source_fps is not None and not (np.isfinite(source_fps) and source_fps > 0):
        raise MotionError(p, "source_fps", "a finite frame rate > 0", repr(source_fps))
    ctx = LoadContext(path=os.fspath(p), body_model=body_model, source_fps=source_fps)
    if fmt == "amass":
        motion = amass.load(p, ctx)
    elif fmt == "dreamwaltz":
        motion = project.load(p, ctx)
    elif fmt == "motionx":
        motion = motionx.load_array(obj, p, ctx)
    elif fmt == "smplx265":
        motion = smplx265.load_array(obj, p, ctx)
    elif fmt == "aist":
        motion = aist.load_dict(obj, p, ctx)
    elif fmt == "talkshow":
        motion = talkshow.load_dict(obj, p, ctx)
    elif fmt == "reenact":
        motion = reenact.load_dict(obj, p, ctx)
    else:
        motion = tram.load(p, ctx)

    if count_nonfinite(motion):
        if not repair:
            motion.validate(p)          # raises, naming the key and the first bad frame
        motion = repair_nonfinite(motion, p)
        ctx.notes.append("NaN/inf values repaired by interpolation")
    motion.validate(p)
    if fmt != "dreamwaltz":
        motion = to_y_up(motion, ctx.pelvis(motion.betas), up_axis)
    if fps is not None:
        motion = motion.resample(fps)
    if notes is not None:
        notes.extend(ctx.notes)
    return motion.validate(p)


def save_motion(motion: Motion, path) -> None:
    """Write the project's motion .npz atomically (see README.md for the layout)."""
    project.save(motion, path)
