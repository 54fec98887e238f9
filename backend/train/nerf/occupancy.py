"""The occupancy grid that tells the ray marcher where the field is worth evaluating.

As in Instant-NGP / torch-ngp: a G^3 grid over the field's cube keeps, per cell, a decaying
maximum of the field's density sampled at a random point of the cell (`update`: new = max(old x
decay, sampled)); a cell is occupied when its value, or a neighbour's, exceeds min(mean, density_thresh). The
marcher skips empty cells and only looks at the box around the occupied ones. The grid is part
of the stage's state (resume continues with the same grid).
"""

from __future__ import annotations

from typing import Any

import torch

from .field import NeRFField

QUERY_CHUNK = 1 << 18


class OccupancyGrid:
    def __init__(self, size: int, centre: torch.Tensor, bound: float, density_thresh: float = 10.0,
                 decay: float = 0.95) -> None:
        self.size = int(size)
        self.centre = centre.detach().float().clone()
        self.bound = float(bound)
        self.density_thresh = float(density_thresh)
        self.decay = float(decay)
        self.density = torch.zeros(self.size ** 3, device=self.centre.device)
        self.occupied = torch.zeros(self.size ** 3, dtype=torch.bool, device=self.centre.device)
        self.box = torch.zeros(2, 3, device=self.centre.device)   # (lo, hi) of the occupied cells
        self.updates = 0

    @property
    def device(self) -> torch.device:
        return self.centre.device

    @property
    def cell(self) -> float:
        return 2.0 * self.bound / self.size

    def cell_centres(self) -> torch.Tensor:
        """(G^3, 3) world positions of the cell centres, in the order of `density`."""
        i = torch.arange(self.size, device=self.device, dtype=torch.float32)
        gx, gy, gz = torch.meshgrid(i, i, i, indexing="ij")
        idx = torch.stack([gx, gy, gz], -1).reshape(-1, 3)
        return self.centre - self.bound + (idx + 0.5) * self.cell

    @torch.no_grad()
    def update(self, field: NeRFField, generator: torch.Generator | None = None, full: bool = False) -> None:
        """Fold the field's current density into the grid; `full` replaces it (no decay), as
        after loading a pretrained field."""
        pts = self.cell_centres()
        jitter = torch.rand(pts.shape, generator=generator, device=self.device) - 0.5 if generator is not None \
            else torch.zeros_like(pts)
        pts = pts + jitter * self.cell
        sampled = torch.cat([field.density(chunk).float() for chunk in pts.split(QUERY_CHUNK)])
        self.density = sampled if full else torch.maximum(self.density * self.decay, sampled)
        self.updates += 1
        self._threshold()

    def _threshold(self) -> None:
        thresh = min(float(self.density.mean()), self.density_thresh)
        g = self.size
        above = (self.density > thresh).float().reshape(1, 1, g, g, g)
        # one cell of slack: a cell sampled at one random point can miss the surface crossing it
        self.occupied = torch.nn.functional.max_pool3d(above, 3, stride=1, padding=1).reshape(-1) > 0
        if not bool(self.occupied.any()):
            self.box = torch.zeros(2, 3, device=self.device)
            return
        idx = torch.nonzero(self.occupied.reshape(self.size, self.size, self.size))
        lo = self.centre - self.bound + idx.min(0).values.float() * self.cell
        hi = self.centre - self.bound + (idx.max(0).values.float() + 1) * self.cell
        self.box = torch.stack([lo, hi])

    def lookup(self, points: torch.Tensor) -> torch.Tensor:
        """(N,) True where points (N, 3) lie in occupied cells (False outside the cube)."""
        g = torch.floor((points - (self.centre - self.bound)) / self.cell).long()
        inside = ((g >= 0) & (g < self.size)).all(-1)
        g = g.clamp(0, self.size - 1)
        flat = (g[:, 0] * self.size + g[:, 1]) * self.size + g[:, 2]
        return inside & self.occupied[flat]

    @property
    def empty(self) -> bool:
        return not bool(self.occupied.any())

    def state_dict(self) -> dict[str, Any]:
        return {"density": self.density.clone(), "updates": self.updates, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"the occupancy grid was saved at {state['size']}^3 cells, this one has {self.size}^3")
        self.density = state["density"].to(self.device).float().clone()
        self.updates = int(state["updates"])
        self._threshold()
