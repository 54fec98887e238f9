"""The sigma-prior: keeps the field's density on the hand (and face) surfaces of the body mesh.

SDS alone lets fingers melt into mittens and faces drift off the head. The original adds, in
the NeRF stages, a margin loss on the raw (pre-activation) density: `points` area-weighted
samples on the canonical mesh of the parts must have raw density >= peak, and the same points
jittered along the normal by U(-1/2, 1/2) x noise metres, where they end up farther than
`thickness` from the parts' surface, must have raw density <= -peak:

    loss = mean(relu(peak - raw(on))^2) + mean(relu(raw(off) + peak)^2)

Jittered points whose nearest part triangle is a wrist triangle are dropped (the part's open
edge: there "off the hand" may be inside the forearm). The canonical body does not move during
the stage, so `pool` sets of samples are drawn once and used in turn.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...body.joints import HAND_JOINTS
from .field import NeRFField
from .mesh import nearest_triangles, sample_surface

WRISTS = (20, 21)


@dataclasses.dataclass
class PriorSet:
    on: torch.Tensor     # (P, 3) surface points
    off: torch.Tensor    # (Q, 3) jittered points off the surface


def part_faces(body, parts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the body's triangles in the named parts ("hands", "face") and a mask of those
    among them that belong to the wrists."""
    regions = body.regions()
    faces = np.asarray(body.faces)
    mask = np.zeros(len(faces), dtype=bool)
    for part in parts:
        mask |= regions[part][faces].all(1)
    dominant = body.skinning_weights.argmax(1).cpu().numpy()
    hand = np.isin(dominant, HAND_JOINTS["left"] + HAND_JOINTS["right"])
    wrist = np.isin(dominant, WRISTS) & ~hand
    idx = np.nonzero(mask)[0]
    return idx, wrist[faces[idx]].any(1)


class SigmaPrior:
    def __init__(self, body, vertices: torch.Tensor, parts: tuple[str, ...], points: int = 5000, peak: float = 15.0,
                 noise: float = 0.05, thickness: float = 0.005, pool: int = 10, seed: int = 0) -> None:
        self.peak = float(peak)
        self.parts = parts
        device = vertices.device
        idx, wrist = part_faces(body, parts)
        faces = np.asarray(body.faces)[idx]
        v = vertices.detach().cpu().double().numpy()
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x51C4A])
        part_faces_t = torch.as_tensor(faces, device=device)
        verts_t = vertices.detach().float()
        self.sets: list[PriorSet] = []
        for _ in range(max(1, int(pool))):
            s = sample_surface(v, faces, int(points), rng)
            jitter = (rng.random((len(s.points), 1)) - 0.5) * noise
            moved = torch.as_tensor(s.points + jitter * s.normals, dtype=torch.float32, device=device)
            near = nearest_triangles(moved, verts_t, part_faces_t)
            keep = (near.distance > thickness) & ~torch.as_tensor(wrist, device=device)[near.face]
            self.sets.append(PriorSet(on=torch.as_tensor(s.points, dtype=torch.float32, device=device),
                                      off=moved[keep]))

    def loss(self, field: NeRFField, step: int) -> torch.Tensor:
        s = self.sets[int(step) % len(self.sets)]
        raw = field.raw(torch.cat([s.on, s.off]))[:, 0]
        on, off = raw[:len(s.on)], raw[len(s.on):]
        loss = (torch.relu(self.peak - on) ** 2).mean()
        if len(off):
            loss = loss + (torch.relu(off + self.peak) ** 2).mean()
        return loss
