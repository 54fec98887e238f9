"""Motion-X-ReEnact clip .json: per-frame SMPL-X parameters and the filming camera.

Layout (COCO-like): ``annotations`` is a list with one entry per frame holding
``smplx_params`` {root_orient 3, pose_body 63, pose_hand 90, pose_jaw 3, face_expr 50,
face_shape 100, trans 3, betas 10} and ``cam_params`` {cam_R 3x3, cam_T 3,
intrins [fx, fy, cx, cy], world_scale}; ``images`` lists the frames (optionally with
width/height). cam_R/cam_T map world to the OpenCV camera (x_cam = R x + T), which is how
Motion-X's own renderer projects the body, and hands are absolute (it renders with
flat_hand_mean=True). Frames are ordered by ``image_id``. world_scale is not needed to
reproduce the images (the renderer ignores it) and is not used. The clip's frame rate is not
in the file: 30 fps unless source_fps is given. The world is the annotation's (camera-like,
y down for the clips seen so far): the up axis is read off the body.
"""

from __future__ import annotations

import json

import numpy as np

from ...limits import MAX_JSON_BYTES
from ..convert import detect_vertical
from ..errors import MotionError
from ..types import CameraTrack, Motion
from ._common import LoadContext, zeros

REENACT_FPS = 30.0
SMPLX_SIZES = {"root_orient": 3, "pose_body": 63, "pose_hand": 90, "pose_jaw": 3, "trans": 3}


def is_reenact(obj) -> bool:
    if not isinstance(obj, dict) or not isinstance(obj.get("annotations"), list):
        return False
    anns = obj["annotations"]
    return bool(anns) and isinstance(anns[0], dict) and "smplx_params" in anns[0]


def read_json(path):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise MotionError(path, None, message=f"a JSON file larger than the {MAX_JSON_BYTES:,}-byte limit")
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MotionError(path, None, message=f"not a readable JSON file ({type(exc).__name__}: {exc})") from None


def _stack(anns, group, key, size, path):
    rows = []
    for i, a in enumerate(anns):
        try:
            v = np.asarray(a[group][key], dtype=np.float64).reshape(-1)
        except KeyError:
            raise MotionError(path, f"annotations[{i}].{group}.{key}", f"{size} numbers", "missing") from None
        except (TypeError, ValueError) as exc:
            raise MotionError(path, f"annotations[{i}].{group}.{key}", f"{size} numbers", str(exc)) from None
        if size is not None and v.size != size:
            raise MotionError(path, f"annotations[{i}].{group}.{key}", f"{size} numbers", f"{v.size}")
        rows.append(v)
    return np.stack(rows)


def load_dict(d: dict, path, ctx: LoadContext) -> Motion:
    anns = [a for a in d["annotations"] if isinstance(a, dict) and "smplx_params" in a]
    anns.sort(key=lambda a: (a.get("image_id", 0), a.get("id", 0)))
    n = len(anns)
    if n == 0:
        raise MotionError(path, "annotations", "at least 1 frame", "0")
    p = {k: _stack(anns, "smplx_params", k, s, path) for k, s in SMPLX_SIZES.items()}
    first = anns[0]["smplx_params"]
    expr = _stack(anns, "smplx_params", "face_expr", None, path) if "face_expr" in first else zeros(n, 0)
    betas = np.asarray(first["betas"], np.float64).reshape(-1) if "betas" in first else None
    R = _stack(anns, "cam_params", "cam_R", 9, path).reshape(n, 3, 3)
    T = _stack(anns, "cam_params", "cam_T", 3, path)
    intr = _stack(anns, "cam_params", "intrins", 4, path)
    w2c = np.zeros((n, 4, 4))
    w2c[:, :3, :3] = R
    w2c[:, :3, 3] = T
    w2c[:, 3, 3] = 1.0
    K = np.zeros((n, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3], 1.0
    width, height = _image_size(d, intr)
    fps = float(ctx.source_fps) if ctx.source_fps is not None else REENACT_FPS
    orient = p["root_orient"]
    hands = p["pose_hand"]
    return Motion(fps=fps, global_orient=orient.astype(np.float32),
                  body_pose=p["pose_body"].reshape(n, 21, 3).astype(np.float32),
                  left_hand_pose=hands[:, :45].reshape(n, 15, 3).astype(np.float32),
                  right_hand_pose=hands[:, 45:].reshape(n, 15, 3).astype(np.float32),
                  jaw_pose=p["pose_jaw"].astype(np.float32), leye_pose=zeros(n, 3), reye_pose=zeros(n, 3),
                  expression=np.asarray(expr, np.float32), transl=p["trans"].astype(np.float32),
                  betas=None if betas is None else betas.astype(np.float32), source_format="reenact",
                  source_up_axis=detect_vertical(orient, default="-Y"),
                  camera=CameraTrack(w2c, K, width, height))


def _image_size(d, intr):
    """width/height from ``images`` when present, else twice the principal point."""
    images = d.get("images")
    if isinstance(images, list) and images and isinstance(images[0], dict):
        w, h = images[0].get("width"), images[0].get("height")
        if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
            return int(w), int(h)
    return int(round(2 * intr[0, 2])), int(round(2 * intr[0, 3]))
