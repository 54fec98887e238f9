"""`BodyModel`: one API over `smplx.SMPLX` for the real SMPL-X file and the open template.

Everything that poses a body goes through here: the avatar, the motion checks, the server's rig
data. Posing is expressed once, as skinning transforms (the form Blender sends); SMPL-X pose
parameters are turned into transforms by forward kinematics and then take the same path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..safe_numpy import ArrayFileError, open_npz
from .joints import HAND_JOINTS, JOINT_NAMES, NUM_JOINTS, PARENTS
from .template import vertex_normals
from .validate import check_arrays

REQUIRED_KEYS = ("v_template", "f", "weights", "J_regressor", "shapedirs", "posedirs",
                 "kintree_table", "hands_componentsl", "hands_componentsr",
                 "hands_meanl", "hands_meanr", "lmk_faces_idx", "lmk_bary_coords")
ENV_VAR = "DREAMWALTZ_SMPLX"
TEMPLATE_MARKER = "template_kind"  # the key only the open template's generator writes


SMPLX_BETAS, SMPLX_EXPRESSIONS = 300, 100   # at most (SMPL-X 2020); smplx keeps what a file has


class BodyModelError(ValueError):
    """A body-model file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass
class BodyOutput:
    vertices: torch.Tensor     # (B, V, 3)
    joints: torch.Tensor       # (B, 55, 3) posed joints
    transforms: torch.Tensor   # (B, 55, 4, 4) skinning transforms (rest space -> posed space)


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=dtype, device=device)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula for (..., 3) axis-angles, stable at zero."""
    angle = torch.linalg.norm(aa, dim=-1, keepdim=True)
    axis = aa / angle.clamp_min(1e-8)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*aa.shape[:-1], 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


def _validate_file(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays, read within bounds (never unpickled) and checked (``validate``)."""
    from ..files import lfs_pointer_message

    if not path.exists():
        raise BodyModelError(f"body model file {path} does not exist")
    lfs = lfs_pointer_message(path)
    if lfs:
        raise BodyModelError(f"body model file {path} is {lfs}")
    try:
        with open_npz(path) as data:
            arrays = {k: data[k] for k in data.files
                      if k in REQUIRED_KEYS or k.startswith(("dynamic_lmk", "part_of")) or k == TEMPLATE_MARKER}
    except ArrayFileError as exc:
        raise BodyModelError(f"body model file {path} is not a readable SMPL-X .npz: "
                             f"{f'key {exc.key} ' if exc.key else ''}{exc.problem}") from None
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise BodyModelError(f"body model file {path} is missing the keys {', '.join(missing)} "
                             "(expected an SMPL-X model such as SMPLX_NEUTRAL_2020.npz)")
    regressor = arrays["J_regressor"]
    if regressor.ndim == 2 and regressor.shape[0] != NUM_JOINTS:   # the likely mistake, said as such
        raise BodyModelError(f"body model file {path} has {regressor.shape[0]} joints; SMPL-X has {NUM_JOINTS} "
                             "(is it an SMPL or SMPL-H file?)")
    check_arrays(arrays, path, BodyModelError)
    return arrays


def resolve_path(path: str | os.PathLike | None = None) -> Path:
    """The body-model file to use: an explicit path, else $DREAMWALTZ_SMPLX, else the open
    template (generated and cached on first use)."""
    if path:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    from .template import cached_template_path

    return cached_template_path()


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the arrays that define the body (mesh, rig, shape, pose and hand spaces,
    landmarks), each by name, shape and value (floats as float64, integers as int64), so the
    same model hashes alike whatever container, compression or dtype width stores it, and two
    different models with equal vertex counts do not."""
    h = hashlib.sha256()
    for key in sorted(k for k in arrays if k in REQUIRED_KEYS):
        a = np.asarray(arrays[key])
        a = a.astype("<f8") if a.dtype.kind == "f" else a.astype("<i8") if a.dtype.kind in "iub" else a
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class BodyModel:
    """An SMPL-X body (real or open template) that can be shaped and posed on any torch device."""

    def __init__(self, path: Path, kind: str | None = None, device: str | torch.device = "cpu") -> None:
        """`kind` ("template" or "smplx") is read from the file's content unless a caller states it."""
        import smplx

        path = Path(path)
        arrays = _validate_file(path)
        kind = kind or ("template" if TEMPLATE_MARKER in arrays else "smplx")
        digest = content_hash(arrays)
        with contextlib.redirect_stdout(sys.stderr):  # smplx prints warnings; stdout may be the protocol
            self._smplx = _smplx_from_arrays(smplx, {k: v for k, v in arrays.items() if k != TEMPLATE_MARKER},
                                             path).to(device)
        self.path = path
        self.kind = kind
        self.device = torch.device(device)
        self.joint_names = JOINT_NAMES
        self.parents = np.array(PARENTS, dtype=np.int64)
        self.faces = np.asarray(arrays["f"], dtype=np.int64)
        self._hand = {side: (np.asarray(arrays[f"hands_components{side[0]}"], dtype=np.float64),
                             np.asarray(arrays[f"hands_mean{side[0]}"], dtype=np.float64))
                      for side in ("left", "right")}
        self._part_of_vertex = arrays.get("part_of_vertex")
        self.identity = {"kind": kind, "name": path.name, "content_sha256": digest}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> "BodyModel":
        return cls(resolve_path(path), device=device)

    # ---- sizes and static data -------------------------------------------------------------
    @property
    def num_betas(self) -> int:
        return int(self._smplx.shapedirs.shape[-1])

    @property
    def num_expression(self) -> int:
        return int(self._smplx.expr_dirs.shape[-1])

    @property
    def num_vertices(self) -> int:
        return int(self._smplx.v_template.shape[0])

    @property
    def skinning_weights(self) -> torch.Tensor:
        return self._smplx.lbs_weights

    def keypoint_sources(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where smplx's keypoints beyond the 55 joints come from: the vertex of each extra joint
        (nose, eyes, ears, toes, heels, finger tips; 21), and the 51 face landmarks as triangle
        indices (51,) with barycentric coordinates (51, 3)."""
        m = self._smplx
        return (m.vertex_joint_selector.extra_joints_idxs.long(), m.lmk_faces_idx.long(), m.lmk_bary_coords)

    def hand_pca(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(components (K, 45) as rows, mean (45,)) of the model's hand pose space."""
        return self._hand[side]

    def to(self, device: str | torch.device) -> "BodyModel":
        self._smplx = self._smplx.to(device)
        self.device = torch.device(device)
        return self

    # ---- shape ------------------------------------------------------------------------------
    def betas_vector(self, betas: Any) -> torch.Tensor:
        """A full (num_betas,) tensor from fewer values (zeros for the rest), checked."""
        out = torch.zeros(self.num_betas, device=self.device)
        if betas is None:
            return out
        b = _as_tensor(betas, self.device).reshape(-1)
        if b.numel() > self.num_betas:
            raise BodyModelError(f"{b.numel()} betas given; the body model {self.path.name} has {self.num_betas}")
        if not torch.isfinite(b).all():
            raise BodyModelError("betas contain NaN or infinite values")
        out[: b.numel()] = b
        return out

    def _expression(self, expression: Any, batch: int) -> torch.Tensor:
        out = torch.zeros(batch, self.num_expression, device=self.device)
        if expression is None:
            return out
        e = _as_tensor(expression, self.device).reshape(batch, -1)
        n = min(e.shape[1], self.num_expression)
        out[:, :n] = e[:, :n]
        return out

    def shaped_vertices(self, betas: Any = None, expression: Any = None) -> torch.Tensor:
        """Rest-pose vertices for a shape (and optional expression), (V, 3)."""
        m = self._smplx
        v = m.v_template + torch.einsum("vck,k->vc", m.shapedirs, self.betas_vector(betas))
        if expression is not None:
            v = v + torch.einsum("vck,k->vc", m.expr_dirs, self._expression(expression, 1)[0])
        return v

    def rest_joints(self, betas: Any = None, expression: Any = None) -> torch.Tensor:
        """Rest joints for a shape, (55, 3): where the rig's bone heads go. As in SMPL-X, an
        expression may move the face's joints slightly."""
        return self._smplx.J_regressor @ self.shaped_vertices(betas, expression)

    def template_mesh(self, betas: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return self.shaped_vertices(betas).detach().cpu().numpy(), self.faces

    # ---- regions ----------------------------------------------------------------------------
    def regions(self) -> dict[str, np.ndarray]:
        """Boolean vertex masks by dominant skinning joint: hands, left/right hand, head, face."""
        dominant = self.skinning_weights.argmax(dim=1).cpu().numpy()
        v = self._smplx.v_template.detach().cpu().numpy()
        normals = vertex_normals(v, self.faces)
        left = np.isin(dominant, (20,) + HAND_JOINTS["left"])
        right = np.isin(dominant, (21,) + HAND_JOINTS["right"])
        head = np.isin(dominant, (15, 22, 23, 24))
        head_joint = self.rest_joints()[15].detach().cpu().numpy()
        face = head & (normals[:, 2] > 0.3) & (v[:, 2] > head_joint[2])
        return {"left_hand": left, "right_hand": right, "hands": left | right, "head": head, "face": face}

    # ---- posing -----------------------------------------------------------------------------
    def local_rotations(self, full_pose: torch.Tensor) -> torch.Tensor:
        """(B, 55, 3) axis-angles -> (B, 55, 3, 3)."""
        return axis_angle_to_matrix(full_pose)

    def forward_kinematics(self, rotations: torch.Tensor, rest_joints: torch.Tensor,
                           transl: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posed joints (B, 55, 3) and skinning transforms (B, 55, 4, 4) from local rotations
        and rest joints ((55, 3) or (B, 55, 3))."""
        batch = rotations.shape[0]
        rest = rest_joints.expand(batch, NUM_JOINTS, 3)
        rel = torch.cat([rest[:, :1], rest[:, 1:] - rest[:, self.parents[1:]]], dim=1)
        local = torch.zeros(batch, NUM_JOINTS, 4, 4, device=rotations.device, dtype=rotations.dtype)
        local[:, :, :3, :3] = rotations
        local[:, :, :3, 3] = rel
        local[:, :, 3, 3] = 1
        chain = [local[:, 0]]
        for j in range(1, NUM_JOINTS):
            chain.append(chain[self.parents[j]] @ local[:, j])
        world = torch.stack(chain, dim=1)
        joints = world[:, :, :3, 3].clone()
        transforms = world.clone()
        transforms[:, :, :3, 3] = world[:, :, :3, 3] - (world[:, :, :3, :3] @ rest[..., None])[..., 0]
        if transl is not None:
            joints = joints + transl[:, None]
            transforms[:, :, :3, 3] += transl[:, None]
        return joints, transforms

    def full_pose(self, batch: int, **params: Any) -> torch.Tensor:
        """Assemble (B, 55, 3) axis-angles from SMPL-X's named pose parameters (missing = zero)."""
        parts = [("global_orient", 1), ("body_pose", 21), ("jaw_pose", 1), ("leye_pose", 1),
                 ("reye_pose", 1), ("left_hand_pose", 15), ("right_hand_pose", 15)]
        chunks = []
        for name, joints in parts:
            value = params.get(name)
            if value is None:
                chunks.append(torch.zeros(batch, joints, 3, device=self.device))
                continue
            t = _as_tensor(value, self.device).reshape(batch, joints, 3)
            if not torch.isfinite(t).all():
                raise BodyModelError(f"{name} contains NaN or infinite values")
            chunks.append(t)
        return torch.cat(chunks, dim=1)

    def pose_vertices(self, transforms: torch.Tensor, betas: Any = None, expression: Any = None,
                      local_rotations: torch.Tensor | None = None, shaped: torch.Tensor | None = None) -> torch.Tensor:
        """Posed vertices (B, V, 3) from skinning transforms; pose correctives need the local
        rotations (without them the rest-pose surface is skinned as is). `shaped` passes
        precomputed rest vertices for `betas`."""
        m = self._smplx
        batch = transforms.shape[0]
        v = (self.shaped_vertices(betas) if shaped is None else shaped)[None].expand(batch, -1, -1)
        if expression is not None:
            v = v + torch.einsum("vck,bk->bvc", m.expr_dirs, self._expression(expression, batch))
        if local_rotations is not None:
            eye = torch.eye(3, device=self.device)
            feature = (local_rotations[:, 1:] - eye).reshape(batch, -1)
            v = v + (feature @ m.posedirs).reshape(batch, -1, 3)
        blend = torch.einsum("vj,bjrc->bvrc", m.lbs_weights, transforms)
        return (blend[..., :3, :3] @ v[..., None])[..., 0] + blend[..., :3, 3]

    def forward(self, betas: Any = None, expression: Any = None, transl: Any = None, **pose: Any) -> BodyOutput:
        """Pose the body with SMPL-X parameters (numpy or torch; hands as full axis-angles)."""
        batch = _batch_size(pose, transl)
        full = self.full_pose(batch, **pose)
        rotations = self.local_rotations(full)
        t = None if transl is None else _as_tensor(transl, self.device).reshape(batch, 3)
        if t is not None and not torch.isfinite(t).all():
            raise BodyModelError("transl contains NaN or infinite values")
        rest = self.shaped_vertices(betas)[None]
        if expression is not None:
            rest = rest + torch.einsum("vck,bk->bvc", self._smplx.expr_dirs, self._expression(expression, batch))
        rest = torch.einsum("jv,bvc->bjc", self._smplx.J_regressor, rest)
        joints, transforms = self.forward_kinematics(rotations, rest, t)
        vertices = self.pose_vertices(transforms, betas, expression, rotations)
        return BodyOutput(vertices=vertices, joints=joints, transforms=transforms)

    def smplx_forward(self, **kwargs: Any) -> Any:
        """The `smplx` package's own forward pass (used to check ours against it)."""
        return self._smplx(**kwargs)


def _batch_size(pose: dict[str, Any], transl: Any) -> int:
    for value in list(pose.values()) + [transl]:
        if value is not None:
            shape = tuple(value.shape)
            return int(shape[0]) if len(shape) > 1 else 1
    return 1


_SMPLX_LOCK = threading.Lock()


class _NumpyHandingArrays:
    """numpy, but for ``load``: smplx.SMPLX reads its model with np.load(path, allow_pickle=True),
    which would unpickle whatever the file holds. While a model is built, that one call returns
    the arrays read and checked here instead."""

    def __init__(self, real: Any, arrays: dict[str, np.ndarray], handed: list) -> None:
        self._real, self._arrays, self._handed = real, arrays, handed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def load(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        self._handed.append(True)
        return dict(self._arrays)


def _smplx_from_arrays(smplx: Any, arrays: dict[str, np.ndarray], path: Path) -> Any:
    """smplx.SMPLX built from `arrays` (never from a file: a cache file handed to it by path would
    run code for whoever can write the cache). It is given an empty placeholder, so a smplx that
    read files some other way would fail on it, never unpickle; and it must have taken the arrays."""
    from smplx import body_models

    handed: list = []
    with _SMPLX_LOCK, tempfile.TemporaryDirectory(prefix="dreamwaltz-smplx-") as folder:
        placeholder = Path(folder) / "model.npz"
        placeholder.write_bytes(b"")
        real = body_models.np
        body_models.np = _NumpyHandingArrays(real, arrays, handed)
        try:
            model = smplx.SMPLX(str(placeholder), ext="npz", use_pca=False, flat_hand_mean=True,
                                num_betas=SMPLX_BETAS, num_expression_coeffs=SMPLX_EXPRESSIONS)
        finally:
            body_models.np = real
    if not handed:
        raise BodyModelError(f"the installed smplx did not take the checked arrays of {path}; refusing to let it "
                             "read the file itself (install smplx 0.1.28)")
    return model
