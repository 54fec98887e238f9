"""The VPoser v2 body-pose prior's decoder, for DreamWaltz-G's random training poses.

VPoser (Pavlakos et al., "Expressive Body Capture", CVPR 2019; human_body_prior, model V02_05)
is a variational auto-encoder of the 21 SMPL-X body joints' rotations. DreamWaltz-G draws its
random training poses as `vposer.sample_poses`: z ~ N(0, I) in its 32-d latent space, decoded.
Its decoder, as published: Linear(32, 512), LeakyReLU, Dropout(0.1), Linear(512, 512),
LeakyReLU, Linear(512, 21 * 6), then each joint's 6 numbers are a continuous rotation
representation (Zhou et al. 2019: two columns, Gram-Schmidt, cross product) turned into a
rotation matrix and then an axis-angle. Only the decoder is needed; it is written here from
that description and evaluated in numpy (in eval mode Dropout is the identity).

The weights are licensed (from smpl-x.is.tue.mpg.de); the user supplies them. Accepted files:
a `.safetensors` file, or a PyTorch / Lightning checkpoint (`.ckpt`, `.pt`, `.pth`) that
`torch.load(weights_only=True)` can read, holding `decoder_net.{0,3,5}.{weight,bias}`
(optionally under `state_dict` and prefixed with `vp_model.`, as V02_05's checkpoints are).
A checkpoint that holds more than tensors cannot be read safely; the error says how to turn
it into a safetensors file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..motion.rotations import mat_to_quat, quat_to_aa
from .errors import TrainingError

LATENT = 32
HIDDEN = 512
JOINTS = 21
LEAKY_SLOPE = 0.01   # torch.nn.LeakyReLU's default, as VPoser uses it
LAYERS = {"0": (HIDDEN, LATENT), "3": (HIDDEN, HIDDEN), "5": (JOINTS * 6, HIDDEN)}
PREFIXES = ("vp_model.", "model.", "module.")
CONVERT_HINT = ("convert it once where you trust the file: python -c \"import torch, safetensors.torch as st; "
                "sd = torch.load('V02_05_epoch=13_val_loss=0.03.ckpt', weights_only=False)['state_dict']; "
                "st.save_file({k.replace('vp_model.', ''): v.contiguous() for k, v in sd.items() "
                "if 'decoder_net' in k}, 'vposer_v2_decoder.safetensors')\"")


class VPoserError(TrainingError):
    """A VPoser file that cannot be used; the message names the file and what is wrong."""


def _read_tensors(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
            raise VPoserError(f"VPoser file {path} is not a readable safetensors file ({exc})") from exc
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled objects, truncation, not a checkpoint at all
        raise VPoserError(f"VPoser file {path} cannot be read safely as a checkpoint of tensors "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                          f"{CONVERT_HINT}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise VPoserError(f"VPoser file {path} holds a {type(data).__name__}, not a dictionary of weights")
    return {k: v.detach().cpu().numpy() for k, v in data.items() if hasattr(v, "detach")}


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


class VPoserDecoder:
    """z (N, 32) -> body poses (N, 21, 3) as axis-angles; weights as float64 numpy arrays."""

    def __init__(self, weights: dict[str, np.ndarray], source: str = "") -> None:
        self.source = source
        self.layers = []
        for name, shape in LAYERS.items():
            w = weights.get(f"decoder_net.{name}.weight")
            b = weights.get(f"decoder_net.{name}.bias")
            if w is None or b is None:
                raise VPoserError(f"VPoser file {source} has no decoder_net.{name}.weight/bias: it is not a VPoser v2 "
                                  "checkpoint (V02_05)")
            if tuple(w.shape) != shape or tuple(b.shape) != (shape[0],):
                raise VPoserError(f"VPoser file {source}: decoder_net.{name} has shape {tuple(w.shape)} / "
                                  f"{tuple(b.shape)}, VPoser v2 has {shape} / {(shape[0],)}")
            w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise VPoserError(f"VPoser file {source}: decoder_net.{name} holds NaN or infinite values")
            self.layers.append((w, b))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VPoserDecoder":
        path = Path(path).expanduser()
        if not path.is_file():
            raise VPoserError(f"VPoser file {path} does not exist (poses.vposer; the V02_05 checkpoint from "
                              "smpl-x.is.tue.mpg.de, or its decoder as .safetensors)")
        weights = {_strip(k): v for k, v in _read_tensors(path).items()}
        return cls(weights, str(path))

    def decode(self, z: np.ndarray) -> np.ndarray:
        h = np.asarray(z, np.float64).reshape(-1, LATENT)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = np.where(h > 0, h, LEAKY_SLOPE * h)
        return rotation_6d_to_axis_angle(h.reshape(-1, JOINTS, 6))

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """`n` body poses (n, 21, 3) from z ~ N(0, I) (VPoser's sample_poses)."""
        return self.decode(rng.normal(0.0, 1.0, (n, LATENT)))


def rotation_6d_to_axis_angle(x: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3): VPoser's ContinousRotReprDecoder (the 6 numbers as a 3 x 2 matrix
    of two columns, Gram-Schmidt, b3 = b1 x b2, R = [b1 b2 b3]), then the axis-angle of R."""
    m = np.asarray(x, np.float64).reshape(*x.shape[:-1], 3, 2)
    a1, a2 = m[..., 0], m[..., 1]
    b1 = a1 / np.maximum(np.linalg.norm(a1, axis=-1, keepdims=True), 1e-12)
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = b2 / np.maximum(np.linalg.norm(b2, axis=-1, keepdims=True), 1e-12)
    b3 = np.cross(b1, b2)
    rot = np.stack([b1, b2, b3], axis=-1)
    return quat_to_aa(mat_to_quat(rot))
