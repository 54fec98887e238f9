"""Body parts as vertex sets: the hands and the face that carry mesh-bound Gaussians.

DreamWaltz-G takes them from SMPL-X's published vertex sets: the hands are the segmentation's
"leftHand", "leftHandIndex1", "rightHand" and "rightHandIndex1" (smplx_vert_segmentation.json,
Meshcapade's SMPL-X segmentation), the face is FLAME's "face" mask (FLAME_masks.pkl) through
SMPL-X's FLAME vertex ids (SMPL-X__FLAME_vertex_ids.npy). Those files are not ours to ship:
where the user has put them beside the SMPL-X model file they are used; otherwise, and for the
open template, the body's own regions (BodyModel.regions: by dominant skinning joint, the face
as the head's forward-facing part above the head joint).

A triangle belongs to a part when all three of its vertices do (the original's rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SEGMENTATION_FILE = "smplx_vert_segmentation.json"
FLAME_IDS_FILE = "SMPL-X__FLAME_vertex_ids.npy"
FLAME_MASKS_FILE = "FLAME_masks.pkl"
HAND_LABELS = ("leftHand", "leftHandIndex1", "rightHand", "rightHandIndex1")
PARTS = ("hands", "face")


class SegmentationError(ValueError):
    """A part file beside the body model that cannot be used (the message names it)."""


def _mask(ids: Any, count: int, path: Path) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim == 1 and ids.size == 0:
        return np.zeros(count, dtype=bool)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and (ids.min() < 0 or ids.max() >= count)):
        raise SegmentationError(f"{path}: vertex ids must be whole numbers from 0 to {count - 1}")
    mask = np.zeros(count, dtype=bool)
    mask[ids] = True
    return mask


def _hands_from_file(path: Path, count: int) -> np.ndarray:
    try:
        labels = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegmentationError(f"{path} cannot be read: {exc}") from None
    missing = [k for k in HAND_LABELS if not isinstance(labels, dict) or k not in labels]
    if missing:
        raise SegmentationError(f"{path} has no {', '.join(missing)} (an SMPL-X vertex segmentation has them)")
    return np.any([_mask(labels[k], count, path) for k in HAND_LABELS], axis=0)


def _face_from_files(ids_path: Path, masks_path: Path, count: int) -> np.ndarray:
    from ..motion.safe_pickle import safe_load
    from ..safe_numpy import read_npy

    try:
        flame_ids = read_npy(ids_path)
        with open(masks_path, "rb") as fh:
            masks = safe_load(fh, masks_path)
    except (OSError, ValueError) as exc:
        raise SegmentationError(f"{ids_path} or {masks_path} cannot be read: {exc}") from None
    if not isinstance(masks, dict) or "face" not in masks:
        raise SegmentationError(f"{masks_path} has no \"face\" mask (FLAME's masks have one)")
    face = np.asarray(masks["face"])
    if face.ndim != 1 or not np.issubdtype(face.dtype, np.integer) or (face.size and (face.min() < 0 or face.max() >= len(flame_ids))):
        raise SegmentationError(f"{masks_path}: the face mask must index FLAME's {len(flame_ids)} vertices")
    return _mask(np.asarray(flame_ids)[face], count, ids_path)


def part_vertices(body: Any, part: str) -> tuple[np.ndarray, str]:
    """(V,) mask of `part`'s vertices ("hands" or "face") and where it came from."""
    if part not in PARTS:
        raise ValueError(f"unknown body part {part!r}: choose {', '.join(PARTS)}")
    count = body.num_vertices
    folder = Path(body.path).parent
    if body.kind == "smplx":
        if part == "hands" and (folder / SEGMENTATION_FILE).is_file():
            return _hands_from_file(folder / SEGMENTATION_FILE, count), SEGMENTATION_FILE
        if part == "face" and (folder / FLAME_IDS_FILE).is_file() and (folder / FLAME_MASKS_FILE).is_file():
            return _face_from_files(folder / FLAME_IDS_FILE, folder / FLAME_MASKS_FILE, count), FLAME_MASKS_FILE
    return np.asarray(body.regions()[part], dtype=bool), "the body's regions"


def part_triangles(body: Any, parts: tuple[str, ...]) -> np.ndarray:
    """Indices of the body's triangles whose three vertices all lie in one of `parts`."""
    faces = np.asarray(body.faces)
    inside = np.zeros(len(faces), dtype=bool)
    for part in parts:
        inside |= part_vertices(body, part)[0][faces].all(1)
    return np.nonzero(inside)[0]


__all__ = ["SegmentationError", "part_vertices", "part_triangles", "PARTS", "SEGMENTATION_FILE",
           "FLAME_IDS_FILE", "FLAME_MASKS_FILE"]
