"""Rotation helpers for posing, in torch (wxyz quaternions), written for few GPU kernels.

Posing runs them on hundreds of thousands of Gaussians per frame, replayed as one CUDA graph
whose cost grows with its node count: so each helper is a handful of whole-tensor operations
(a constant coefficient table instead of sixteen stacked expressions), not one per component.
"""

from __future__ import annotations

import torch

# matrix_to_quaternion: candidate q_k (4 x 4 values) = A @ m (9 values, row-major) + C; the
# candidate of the largest of (trace, m00, m11, m22) is the stable one
_A = torch.zeros(16, 9, dtype=torch.float64)
_C = torch.zeros(16, dtype=torch.float64)
_SCORE = torch.zeros(4, 9, dtype=torch.float64)


def _fill_tables() -> None:
    m = {f"m{r}{c}": 3 * r + c for r in range(3) for c in range(3)}
    rows = [
        [("1", "+m00", "+m11", "+m22"), ("+m21", "-m12"), ("+m02", "-m20"), ("+m10", "-m01")],
        [("+m21", "-m12"), ("1", "+m00", "-m11", "-m22"), ("+m01", "+m10"), ("+m02", "+m20")],
        [("+m02", "-m20"), ("+m01", "+m10"), ("1", "-m00", "+m11", "-m22"), ("+m12", "+m21")],
        [("+m10", "-m01"), ("+m02", "+m20"), ("+m12", "+m21"), ("1", "-m00", "-m11", "+m22")],
    ]
    for k, candidate in enumerate(rows):
        for i, terms in enumerate(candidate):
            for term in terms:
                if term == "1":
                    _C[4 * k + i] = 1.0
                else:
                    _A[4 * k + i, m[term[1:]]] = 1.0 if term[0] == "+" else -1.0
    for k, names in enumerate((("m00", "m11", "m22"), ("m00",), ("m11",), ("m22",))):
        for name in names:
            _SCORE[k, m[name]] = 1.0


_fill_tables()
_COPIES: dict[tuple, torch.Tensor] = {}


def on_device(table: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A constant table on `device` (and in `dtype`), copied there once: a copy from the host
    inside a CUDA graph capture would fail, and every frame would pay for it."""
    key = (id(table), str(device), dtype)
    out = _COPIES.get(key)
    if out is None:
        out = _COPIES[key] = table.to(device=device, dtype=dtype or table.dtype)
    return out


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit wxyz quaternions (branch-free, stable)."""
    shape = m.shape[:-2]
    flat = m.reshape(-1, 1, 9)
    a, c, s = (on_device(t, m.device, m.dtype) for t in (_A, _C, _SCORE))
    candidates = ((flat * a).sum(-1) + c).reshape(-1, 4, 4)
    best = (flat * s).sum(-1).argmax(-1)
    q = torch.gather(candidates, 1, best[:, None, None].expand(-1, 1, 4))[:, 0]
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
    return q.reshape(*shape, 4)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a b of (..., 4) wxyz quaternions."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def right_multiplier(p: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) M(p) with q p = M(p) q: multiplying many q by a fixed p becomes one
    multiply-and-sum (`apply_multiplier`)."""
    w, x, y, z = p.unbind(-1)
    return torch.stack([w, -x, -y, -z, x, w, z, -y, y, -z, w, x, z, y, -x, w], -1).reshape(*p.shape[:-1], 4, 4)


def apply_multiplier(multiplier: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q p for q (..., 4) and M(p) (..., 4, 4) from `right_multiplier`."""
    return (multiplier * q[..., None, :]).sum(-1)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz quaternions -> (..., 3) axis-angles with angle in [0, pi]."""
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    w = q[..., :1]
    small = s < 1e-7
    k = torch.where(small, 2.0 / w.clamp_min(1e-12), 2.0 * torch.atan2(s, w) / torch.where(small, torch.ones_like(s), s))
    return v * k


__all__ = ["on_device", "matrix_to_quaternion", "quaternion_multiply", "right_multiplier", "apply_multiplier",
           "quaternion_to_axis_angle"]
