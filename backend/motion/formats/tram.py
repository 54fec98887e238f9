"""TRAM results: ``hps_track_<k>.npy`` (SMPL in camera space) + ``camera.npy`` (SLAM camera).

Both are ``np.save``d dicts (pickles inside .npy), read with the restricted unpickler; the
hps values are CPU torch tensors in TRAM's own output, decoded without torch.
* hps: pred_rotmat (N, 24, 3, 3) SMPL rotations in the camera frame, pred_shape (N, 10)
  SMPL betas, pred_trans (N, 1, 3) SMPL translation in the camera frame, frame (N,) video
  frame indices of the track.
* camera: pred_cam_R (F, 3, 3) and pred_cam_T (F, 3) map camera to world
  (x_world = R x_cam + T; TRAM's visualizer applies them that way), img_focal, img_center.
The world is the metric SLAM frame (its first camera, OpenCV y down): the body is moved
into it, the camera track becomes world-to-camera, and the up axis is read off the body.
Frames missing from a track (gaps) are filled by interpolation. SMPL joints 22-23 and the
SMPL betas have no SMPL-X counterpart and are dropped. TRAM stores no frame rate: 30 fps
(its videos' rate) unless source_fps is given. Given a folder, the first track is used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..convert import detect_vertical, transform_world
from ..errors import MotionError
from ..repair import _fill_indices
from ..rotations import aa_to_quat, mat_to_aa, quat_to_aa, slerp
from ..safe_pickle import load_npy_object
from ..types import CameraTrack, Motion
from ._common import LoadContext, array, require, scalar, zeros

TRAM_FPS = 30.0


def is_hps(obj) -> bool:
    return isinstance(obj, dict) and "pred_rotmat" in obj


def is_camera(obj) -> bool:
    return isinstance(obj, dict) and "pred_cam_R" in obj


def find_pair(path) -> tuple[Path, Path] | None:
    """(hps file, camera file) for a TRAM folder, hps_track file or camera.npy, else None."""
    p = Path(path)
    if p.is_dir():
        hps_dirs = [p, p / "hps", p / "animation"]
        cam_candidates = [p / "camera.npy", p / "camera" / "camera.npy"]
    elif p.name == "camera.npy" or p.parent.name == "camera":
        root = p.parent.parent if p.parent.name == "camera" else p.parent
        hps_dirs = [p.parent, root, root / "hps", root / "animation"]
        cam_candidates = [p]
    else:
        root = p.parent.parent if p.parent.name in ("hps", "animation") else p.parent
        hps_dirs = []
        cam_candidates = [p.parent / "camera.npy", root / "camera.npy", root / "camera" / "camera.npy"]
        cam = next((c for c in cam_candidates if c.is_file()), None)
        return (p, cam) if cam else None
    hps = None
    for d in hps_dirs:
        if d.is_dir():
            tracks = sorted(d.glob("hps_track_*.npy"), key=lambda q: _track_index(q))
            if tracks:
                hps = tracks[0]
                break
    cam = next((c for c in cam_candidates if c.is_file()), None)
    return (hps, cam) if hps and cam else None


def _track_index(p: Path) -> int:
    try:
        return int(p.stem.rsplit("_", 1)[-1])
    except ValueError:
        return 1 << 30


def load(path, ctx: LoadContext) -> Motion:
    pair = find_pair(path)
    if pair is None:
        raise MotionError(path, None, message=(
            "TRAM results need both hps_track_<k>.npy and camera.npy (next to each other, or "
            "TRAM's layout: <seq>/camera.npy and <seq>/hps/hps_track_0.npy); one is missing"))
    hps_path, cam_path = pair
    hps = load_npy_object(hps_path)
    cam = load_npy_object(cam_path)
    if not is_hps(hps):
        raise MotionError(hps_path, "pred_rotmat", "a TRAM hps dict", type(hps).__name__)
    if not is_camera(cam):
        raise MotionError(cam_path, "pred_cam_R", "a TRAM camera dict", type(cam).__name__)

    rot = array(require(hps, "pred_rotmat", hps_path), "pred_rotmat", hps_path)
    if rot.ndim != 4 or rot.shape[1:] != (24, 3, 3):
        raise MotionError(hps_path, "pred_rotmat", "shape (N, 24, 3, 3)", f"shape {rot.shape}")
    n = rot.shape[0]
    trans = array(require(hps, "pred_trans", hps_path), "pred_trans", hps_path).reshape(-1, 3)
    if trans.shape[0] != n:
        raise MotionError(hps_path, "pred_trans", f"{n} frames (N, 1, 3)", f"shape {trans.shape}")
    frame = np.arange(n) if "frame" not in hps else array(hps["frame"], "frame", hps_path).astype(np.int64).reshape(-1)
    if frame.shape[0] != n or (n > 1 and np.any(np.diff(frame) <= 0)) or frame.min() < 0:
        raise MotionError(hps_path, "frame", f"{n} increasing frame indices", f"{frame[:8]}...")

    cam_R = array(require(cam, "pred_cam_R", cam_path), "pred_cam_R", cam_path)
    cam_T = array(require(cam, "pred_cam_T", cam_path), "pred_cam_T", cam_path).reshape(-1, 3)
    if cam_R.ndim != 3 or cam_R.shape[1:] != (3, 3) or cam_T.shape[0] != cam_R.shape[0]:
        raise MotionError(cam_path, "pred_cam_R/pred_cam_T", "shapes (F, 3, 3) and (F, 3)",
                          f"{cam_R.shape} and {cam_T.shape}")
    if frame.max() >= cam_R.shape[0]:
        raise MotionError(cam_path, "pred_cam_R", f"at least {frame.max() + 1} camera frames (the track's)",
                          f"{cam_R.shape[0]}")
    focal = scalar(require(cam, "img_focal", cam_path), "img_focal", cam_path)
    center = array(require(cam, "img_center", cam_path), "img_center", cam_path).reshape(-1)
    if center.size != 2:
        raise MotionError(cam_path, "img_center", "2 numbers (cx, cy)", f"shape {center.shape}")

    # the track's frames, gaps filled so that the motion is uniformly sampled
    full = np.arange(frame[0], frame[-1] + 1)
    aa = mat_to_aa(rot)                                               # (n, 24, 3)
    if len(full) != n:
        aa, trans = _fill_gaps(frame, full, aa, trans)
        warnings.warn(f"{hps_path}: the track misses {len(full) - n} of frames {full[0]}..{full[-1]}; "
                      "they were interpolated", RuntimeWarning, stacklevel=3)
        ctx.notes.append(f"{len(full) - n} missing track frames interpolated")
    m = len(full)
    fps = float(ctx.source_fps) if ctx.source_fps is not None else TRAM_FPS
    motion = Motion(fps=fps, global_orient=aa[:, 0].astype(np.float32),
                    body_pose=aa[:, 1:22].astype(np.float32),
                    left_hand_pose=zeros(m, 15, 3), right_hand_pose=zeros(m, 15, 3),
                    jaw_pose=zeros(m, 3), leye_pose=zeros(m, 3), reye_pose=zeros(m, 3),
                    expression=zeros(m, 0), transl=trans.astype(np.float32), source_format="tram")
    ctx.notes.append("SMPL joints 22-23 and SMPL betas have no SMPL-X counterpart and were dropped")

    # camera space -> SLAM world, per frame; the camera becomes world-to-camera
    R_c2w, T_c2w = cam_R[full], cam_T[full]
    motion = transform_world(motion, R_c2w, T_c2w, pelvis=ctx.pelvis(None))
    w2c = np.zeros((m, 4, 4))
    w2c[:, :3, :3] = np.swapaxes(R_c2w, 1, 2)
    w2c[:, :3, 3] = -np.einsum("nij,nj->ni", w2c[:, :3, :3], T_c2w)
    w2c[:, 3, 3] = 1.0
    K = np.zeros((m, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = focal
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = center[0], center[1], 1.0
    camera = CameraTrack(w2c, K, int(round(2 * center[0])), int(round(2 * center[1])))
    return motion.replace(camera=camera, source_up_axis=detect_vertical(motion.global_orient, default="-Y"))


def _fill_gaps(frame, full, aa, trans):
    """Spread the track over every frame in its range, slerping/lerping over missing ones."""
    m = len(full)
    valid = np.zeros(m, bool)
    valid[frame - full[0]] = True
    pos = np.full(m, -1)
    pos[frame - full[0]] = np.arange(len(frame))
    i0, i1, w = (x[:, 0] for x in _fill_indices(valid[:, None]))
    j0, j1 = pos[i0], pos[i1]
    q = aa_to_quat(aa)
    aa_full = quat_to_aa(slerp(q[j0], q[j1], w[:, None, None]))
    trans_full = trans[j0] * (1 - w)[:, None] + trans[j1] * w[:, None]
    return aa_full, trans_full
