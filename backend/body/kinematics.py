"""Forward kinematics in numpy (float64) for one frame.

Posing one frame touches 55 tiny matrices; doing that on the host and sending the 55 skinning
transforms to the GPU in one copy is far cheaper than 55 dependent GPU launches.
"""

from __future__ import annotations

import numpy as np

from .joints import PARENTS


def rodrigues(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angles -> (..., 3, 3) rotation matrices."""
    aa = np.asarray(aa, dtype=np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(angle, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    s, c = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def skinning_transforms(rotations: np.ndarray, rest_joints: np.ndarray,
                        transl: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posed joints (55, 3) and skinning transforms (55, 4, 4) from local rotations (55, 3, 3)."""
    world = np.zeros((len(PARENTS), 4, 4))
    for j, p in enumerate(PARENTS):
        local = np.eye(4)
        local[:3, :3] = rotations[j]
        local[:3, 3] = rest_joints[j] - (rest_joints[p] if p >= 0 else 0.0)
        world[j] = local if p < 0 else world[p] @ local
    joints = world[:, :3, 3].copy()
    transforms = world.copy()
    transforms[:, :3, 3] -= np.einsum("jrc,jc->jr", world[:, :3, :3], rest_joints)
    if transl is not None:
        joints += transl
        transforms[:, :3, 3] += transl
    return joints, transforms
