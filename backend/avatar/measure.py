"""Body measurements for shape controls: height and weight of a shape, and how they change.

The add-on's height and weight sliders map to betas through these numbers: the exact height and
weight of the current shape and their gradients with respect to the first betas (finite
differences on the body model itself). A slider move takes a minimal-norm step in beta space
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


def _volume(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    tri = vertices[faces].double()
    return float(torch.einsum("fi,fi->f", tri[:, 0], torch.linalg.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def measure(body: Any, betas: np.ndarray) -> tuple[float, float]:
    """(height m, weight kg) of the rest body for full `betas`."""
    v = body.shaped_vertices(torch.as_tensor(betas, dtype=torch.float32, device=body.device))
    faces = torch.as_tensor(body.faces, device=v.device)
    return float(v[:, 1].max() - v[:, 1].min()), _volume(v, faces) * BODY_DENSITY


def shape_report(body: Any, betas: np.ndarray, step: float = 0.1) -> dict:
    """Height and weight of `betas` and their gradients over the first 10 betas."""
    betas = np.asarray(betas, dtype=np.float64)
    height, weight = measure(body, betas)
    n = min(CONTROLLED_BETAS, body.num_betas)
    grad_h, grad_w = np.zeros(n), np.zeros(n)
    for k in range(n):
        up, down = betas.copy(), betas.copy()
        up[k] += step
        down[k] -= step
        (h1, w1), (h0, w0) = measure(body, up), measure(body, down)
        grad_h[k], grad_w[k] = (h1 - h0) / (2 * step), (w1 - w0) / (2 * step)
    return {"height": height, "weight": weight, "height_gradient": grad_h.tolist(),
            "weight_gradient": grad_w.tolist()}


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
