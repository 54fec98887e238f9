"""Body measurements for shape controls: height and weight of a shape, and how they change.

The add-on's height and weight sliders map to betas through these numbers: the exact height and
weight of the current shape and their gradients with respect to the first betas (autograd
through the body model itself: the shape is linear in the betas, the volume cubic). A slider move takes a minimal-norm step in beta space
that changes the one measurement and keeps the other; repeated moves converge like Newton's
method. Height is the body's vertical extent in its rest pose; weight is the rest mesh's volume
times 985 kg/m³ (the density of the human body). The open template is a mannequin of
overlapping segments, so its weight is only indicative.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BODY_DENSITY = 985.0  # kg / m^3
CONTROLLED_BETAS = 10


def _volume(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    tri = vertices[faces].double()
    return torch.einsum("fi,fi->f", tri[:, 0], torch.linalg.cross(tri[:, 1], tri[:, 2])).sum() / 6.0


def _measures(body: Any, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = body.shaped_vertices(betas)
    faces = torch.as_tensor(body.faces, device=v.device)
    return v[:, 1].max() - v[:, 1].min(), _volume(v, faces) * BODY_DENSITY


def measure(body: Any, betas: np.ndarray) -> tuple[float, float]:
    """(height m, weight kg) of the rest body for full `betas`."""
    with torch.no_grad():
        h, w = _measures(body, torch.as_tensor(betas, dtype=torch.float32, device=body.device))
    return float(h), float(w)


def shape_report(body: Any, betas: np.ndarray) -> dict:
    """Height and weight of `betas` and their exact gradients over the first 10 betas (autograd:
    one forward and two backward passes, where finite differences took 21 forward ones)."""
    full = torch.as_tensor(np.asarray(betas, dtype=np.float64), dtype=torch.float32, device=body.device)
    n = min(CONTROLLED_BETAS, body.num_betas, full.numel())
    with torch.enable_grad():  # the server answers requests under no_grad
        controlled = full[:n].clone().requires_grad_(True)
        height, weight = _measures(body, torch.cat([controlled, full[n:]]))
        grad_h, = torch.autograd.grad(height, controlled, retain_graph=True)
        grad_w, = torch.autograd.grad(weight, controlled)
    return {"height": float(height.detach()), "weight": float(weight.detach()),
            "height_gradient": grad_h.double().cpu().tolist(), "weight_gradient": grad_w.double().cpu().tolist()}


def step_towards(betas: np.ndarray, report: dict, height: float | None = None, weight: float | None = None,
                 limit: float = 5.0) -> np.ndarray:
    """Betas that move the height (or weight) to the target and keep the other measurement, by the
    smallest change of the first 10 betas; clamped to ±`limit`."""
    gh, gw = np.asarray(report["height_gradient"]), np.asarray(report["weight_gradient"])
    A = np.stack([gh, gw])
    r = np.array([0.0 if height is None else height - report["height"],
                  0.0 if weight is None else weight - report["weight"]])
    delta = A.T @ np.linalg.solve(A @ A.T + 1e-9 * np.eye(2), r)
    out = np.asarray(betas, dtype=np.float64).copy()
    out[: len(delta)] = np.clip(out[: len(delta)] + delta, -limit, limit)
    return out
