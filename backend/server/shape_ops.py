"""The shape op: rig data for another body shape, and betas for a target height or weight."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import protocol as P
from .shm import ShmPool


def shape_op(services: Any, pool: ShmPool, msg: dict) -> dict:
    from ..avatar.measure import shape_report, step_towards
    from ..avatar.posing import PoseError, check_betas

    avatar = services.avatar(msg["avatar"])
    body = avatar.body
    raw = msg.get("betas")
    if raw is not None and (not isinstance(raw, list) or not all(P.type_ok(x, "number") for x in raw)):
        raise P.ProtocolError(P.BAD_REQUEST, "betas must be a list of numbers")
    try:
        betas = check_betas(avatar, avatar.betas.detach().cpu().numpy() if raw is None else raw)
    except PoseError as exc:
        raise P.ProtocolError(P.BAD_REQUEST, str(exc)) from exc
    targets = {k: msg.get(k) for k in ("height", "weight") if msg.get(k) is not None}
    for name, value in targets.items():
        if not P.type_ok(value, "number") or not 0 < value < (3.0 if name == "height" else 400.0):
            raise P.ProtocolError(P.BAD_REQUEST, f"{name} must be a plausible number; got {value!r}"[:200])
    report = shape_report(body, betas)
    for _ in range(3 if targets else 0):
        betas = step_towards(betas, report, **targets)
        report = shape_report(body, betas)
    joints = body.rest_joints(betas).detach().cpu().numpy().astype(np.float32)
    verts = body.shaped_vertices(betas).detach().cpu().numpy().astype(np.float32)
    slot = P.check_slot(msg.get("slot") or "shape")
    block, specs, views = pool.allocate(slot, [("rest_joints", "float32", joints.shape),
                                               ("vertices", "float32", verts.shape)])
    views["rest_joints"][...] = joints
    views["vertices"][...] = verts
    return dict(report, betas=[float(b) for b in betas], trained_betas=[float(b) for b in avatar.betas.detach().cpu()],
                slot=slot, block=block.name, arrays=specs)
