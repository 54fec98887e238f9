"""Every array of an SMPL-X file checked before any of it is used: shapes, dtypes, index ranges
and finite values.

A body model file is the user's, or a download: a wrong one must be one clear error naming the
file and the key, not an IndexError while posing (on CUDA a device-side assert that poisons the
process) or NaN vertices. smplx itself checks nothing; what it indexes is checked here too
(triangles, landmarks, the extra joints it reads from fixed vertex ids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .joints import NUM_JOINTS, PARENTS

POSE_BASIS = (NUM_JOINTS - 1) * 9
"""Pose correctives are linear in the 54 non-root joints' (R - I): 486 columns."""


def _extra_joint_vertices() -> int:
    """One more than the highest vertex id smplx reads extra joints from (nose, toes, ...)."""
    from smplx.vertex_ids import vertex_ids

    return max(vertex_ids["smplx"].values()) + 1


def check_arrays(arrays: dict[str, np.ndarray], path: Path, error: type[Exception] = ValueError) -> None:
    """Raise `error` naming the file and key for the first array that posing could not use."""
    def bad(key: str, what: str) -> Exception:
        return error(f"body model file {path}: {key} {what}")

    def shaped(key: str, shape: tuple, kind: str) -> np.ndarray:
        if key not in arrays:
            raise bad(key, "is missing")
        a = arrays[key]
        want = "floating-point" if kind == "f" else "integer"
        if (a.dtype.kind != "f") if kind == "f" else (a.dtype.kind not in "iu"):
            raise bad(key, f"holds {a.dtype} values; expected {want} ones")
        if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
            raise bad(key, f"has shape {a.shape}; expected ({', '.join('N' if s is None else str(s) for s in shape)})")
        if kind == "f" and not np.isfinite(a).all():
            raise bad(key, "contains NaN or infinite values")
        return a

    def indices(key: str, a: np.ndarray, limit: int, what: str) -> None:
        if a.size and (int(a.min()) < 0 or int(a.max()) >= limit):
            raise bad(key, f"holds indices from {int(a.min())} to {int(a.max())}; the model has {limit} {what}")

    nv = shaped("v_template", (None, 3), "f").shape[0]
    need = _extra_joint_vertices()
    if nv < need:
        raise bad("v_template", f"has {nv} vertices; an SMPL-X layout needs at least {need} (smplx reads joints "
                  "from fixed vertex ids)")
    faces = shaped("f", (None, 3), "i")
    indices("f", faces, nv, "vertices")
    shaped("weights", (nv, NUM_JOINTS), "f")
    shaped("J_regressor", (NUM_JOINTS, nv), "f")
    shaped("shapedirs", (nv, 3, None), "f")
    shaped("posedirs", (nv, 3, POSE_BASIS), "f")
    tree = shaped("kintree_table", (2, NUM_JOINTS), "i").astype(np.int64)
    parents = np.where(tree[0] >= 2**31, -1, tree[0])       # the root's parent is stored as uint32 -1
    if not np.array_equal(tree[1], np.arange(NUM_JOINTS)) or not np.array_equal(parents[1:], PARENTS[1:]):
        raise bad("kintree_table", "describes another joint hierarchy than SMPL-X's")
    for side in "lr":
        comps = shaped(f"hands_components{side}", (None, 45), "f")
        if not 1 <= comps.shape[0] <= 45:
            raise bad(f"hands_components{side}", f"has {comps.shape[0]} components; expected 1 to 45")
        if arrays[f"hands_mean{side}"].size != 45:
            raise bad(f"hands_mean{side}", f"has {arrays[f'hands_mean{side}'].size} values; expected 45")
        shaped(f"hands_mean{side}", arrays[f"hands_mean{side}"].shape, "f")
    lmk = shaped("lmk_faces_idx", (None,), "i")
    indices("lmk_faces_idx", lmk, len(faces), "triangles")
    shaped("lmk_bary_coords", (len(lmk), 3), "f")
    if "dynamic_lmk_faces_idx" in arrays or "dynamic_lmk_bary_coords" in arrays:
        dyn = shaped("dynamic_lmk_faces_idx", (None, None), "i")
        indices("dynamic_lmk_faces_idx", dyn, len(faces), "triangles")
        shaped("dynamic_lmk_bary_coords", dyn.shape + (3,), "f")
    if "part_of_vertex" in arrays and arrays["part_of_vertex"].shape != (nv,):
        raise bad("part_of_vertex", f"has shape {arrays['part_of_vertex'].shape}; expected ({nv},)")

