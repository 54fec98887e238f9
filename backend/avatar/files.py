"""Avatar folders (DESIGN.md §4): avatar.json + gaussians.safetensors + preview.png.

A folder is written whole or not at all: it is built beside the target and renamed into place.
It never embeds the body model; it names it, and loading needs that model.

Avatars come from strangers too, so loading checks everything posing will rely on before any
of it reaches a device (an out-of-range index fails in posing, and on CUDA a device-side
assert poisons the whole process): avatar.json's fields typed and its numbers finite, every
tensor's shape and dtype, skinning joints within the body's joints, bound triangles within its
faces, finite values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .. import protocol as P
from ..files import atomic_folder, lfs_pointer_message
from .gaussians import Avatar, AvatarMeta, BoundGaussians, FreeGaussians

FORMAT = "dreamwaltz-avatar"
FORMAT_VERSION = 1
META_MAX_BYTES = 16 << 20
META_FILE, TENSOR_FILE, PREVIEW_FILE = "avatar.json", "gaussians.safetensors", "preview.png"


class AvatarFileError(ValueError):
    """An avatar folder that cannot be read; the message names the folder and the problem."""


# tensor -> (trailing shape, dtype kind): "f" floating, "i" integer. Row counts come from avatar.json.
TENSOR_SPEC = {
    "free.means": ((3,), "f"), "free.quats": ((4,), "f"), "free.log_scales": ((3,), "f"),
    "free.opacity_logits": ((), "f"), "free.colors": ((3,), "f"), "free.skin_joints": ((4,), "i"),
    "free.skin_weights": ((4,), "f"),
    "bound.faces": ((), "i"), "bound.barycentric": ((3,), "f"), "bound.offsets": ((3,), "f"),
    "bound.quats": ((4,), "f"), "bound.log_scales": ((3,), "f"), "bound.opacity_logits": ((), "f"),
    "bound.colors": ((3,), "f"),
}

# avatar.json: key -> (type, required); nested dicts checked below
_META_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "format": (str, True), "format_version": (int, True), "name": (str, False), "prompt": (str, False),
    "seed": (int, False), "settings": (dict, False), "body_model": (dict, True), "betas": (list, False),
    "gaussians": (dict, True), "provenance": (dict, False)}


def _type_word(kind: Any) -> str:
    names = {str: "a string", int: "an integer", dict: "an object", list: "a list"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Types and ranges of avatar.json's fields (its numbers are finite: see read_meta)."""
    def bad(what: str) -> AvatarFileError:
        return AvatarFileError(f"{path} is not a valid avatar description: {what}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key, (kind, required) in _META_FIELDS.items():
        if key not in meta:
            if required:
                raise bad(f"the field {key!r} is missing")
            continue
        value = meta[key]
        if not (is_int(value) if kind is int else isinstance(value, kind)):
            raise bad(f"{key!r} must be {_type_word(kind)}, not {type(value).__name__}")
    body = meta["body_model"]
    if body.get("kind") not in ("template", "smplx"):
        raise bad(f"body_model.kind must be 'template' or 'smplx', not {str(body.get('kind'))[:40]!r}")
    for key in ("name", "sha256", "content_sha256"):
        if key in body and not isinstance(body[key], str):
            raise bad(f"body_model.{key} must be a string")
    for key in ("num_vertices", "num_faces", "num_betas", "num_expression"):
        if key in body and not (is_int(body[key]) and body[key] >= 0):
            raise bad(f"body_model.{key} must be a whole number >= 0")
    counts = meta["gaussians"]
    for key in ("free", "bound"):
        if not (is_int(counts.get(key)) and counts[key] >= 0):
            raise bad(f"gaussians.{key} must be a whole number >= 0")
    if "total" in counts and counts["total"] != counts["free"] + counts["bound"]:
        raise bad(f"gaussians.total ({counts['total']}) is not free + bound")
    if any(not isinstance(b, (int, float)) or isinstance(b, bool) for b in meta.get("betas", [])):
        raise bad("betas must be a list of numbers")


def _tensors(avatar: Avatar) -> dict[str, torch.Tensor]:
    out = {"betas": avatar.betas}
    for prefix, group in (("free", avatar.free), ("bound", avatar.bound)):
        for f in dataclasses.fields(group):
            out[f"{prefix}.{f.name}"] = getattr(group, f.name)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _meta_json(avatar: Avatar) -> dict[str, Any]:
    body = avatar.body
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": avatar.meta.name,
        "prompt": avatar.meta.prompt,
        "seed": avatar.meta.seed,
        "settings": avatar.meta.settings,
        "body_model": dict(body.identity, num_vertices=body.num_vertices, num_faces=int(len(body.faces)),
                           num_betas=body.num_betas, num_expression=body.num_expression),
        "betas": [float(b) for b in avatar.betas.detach().cpu()],
        "gaussians": {"free": len(avatar.free), "bound": len(avatar.bound), "total": avatar.num_gaussians},
        "provenance": dict(avatar.meta.provenance, backend_version=__version__,
                           saved=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
    }


def save_avatar(avatar: Avatar, folder: str | os.PathLike, preview: np.ndarray | None = None) -> Path:
    """Write the avatar folder atomically (an existing folder is replaced only on success)."""
    from safetensors.torch import save

    folder = Path(folder)
    if avatar.num_gaussians == 0:
        raise AvatarFileError(f"refusing to save {folder}: the avatar has no Gaussians")
    if folder.exists() and (not folder.is_dir() or (not (folder / META_FILE).exists() and any(folder.iterdir()))):
        raise AvatarFileError(f"refusing to overwrite {folder}: it exists and is not an avatar folder")
    with atomic_folder(folder) as staging:
        (staging / TENSOR_FILE).write_bytes(save(_tensors(avatar)))  # an OSError on a full disk (save_file's is not)
        try:
            text = json.dumps(_meta_json(avatar), indent=2, allow_nan=False)
        except ValueError as exc:
            raise AvatarFileError(f"refusing to save {folder}: its settings or betas hold NaN or infinite "
                                  f"numbers ({exc})") from None
        (staging / META_FILE).write_text(text)
        if preview is None:
            from .preview import render_preview

            preview = render_preview(avatar)
        from PIL import Image

        Image.fromarray(preview).save(staging / PREVIEW_FILE)
    return folder


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """avatar.json, checked (format, version); the add-on and server read it without torch."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AvatarFileError(f"avatar folder {folder} does not exist")
    path = folder / META_FILE
    if not path.exists():
        raise AvatarFileError(f"{folder} is not an avatar folder: {META_FILE} is missing")
    try:
        with open(path, "rb") as fh:
            data = fh.read(META_MAX_BYTES + 1)
        if len(data) > META_MAX_BYTES:
            raise AvatarFileError(f"{path} is larger than the {META_MAX_BYTES >> 20} MiB an avatar description may take")
        meta = P.decode(data, what=str(path))     # NaN, 1e999, 64-bit overflow and deep nesting refused
    except P.ProtocolError as exc:
        raise AvatarFileError(f"{path} is corrupt: {exc.message}") from None
    if meta.get("format") != FORMAT:
        raise AvatarFileError(f"{path} is not a DreamWaltz avatar description (format field missing or wrong)")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise AvatarFileError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise AvatarFileError(f"{folder} was written in avatar format {version}, newer than this version "
                              f"reads ({FORMAT_VERSION}): update DreamWaltz")
    _check_meta(meta, path)
    return meta


def _body_for(meta: dict[str, Any], folder: Path, body: Any, device: str | torch.device) -> Any:
    """The body model the avatar was made on (by content hash), or a clear error naming it."""
    from ..body import BodyModel
    from ..body.template import cached_template_path

    wanted = meta.get("body_model", {})
    if body is None:
        body = BodyModel(cached_template_path(), device=device) if wanted.get("kind") == "template" \
            else BodyModel.load(None, device)
    name, digest = wanted.get("name"), wanted.get("content_sha256")
    if wanted.get("kind") == "smplx" and body.kind != "smplx":
        raise AvatarFileError(f"{folder} was made on the SMPL-X model {name}"
                              f"{f' (content sha256 {digest[:12]}…)' if digest else ''}: set DREAMWALTZ_SMPLX "
                              "or the add-on's SMPL-X file to it")
    if digest is not None and digest != body.identity["content_sha256"]:
        what = ("an open template whose arrays differ from the one this DreamWaltz version generates "
                "(re-create the avatar, or use the version that made it)") if wanted.get("kind") == "template" \
            else f"{name}: set DREAMWALTZ_SMPLX or the add-on's SMPL-X file to that file"
        raise AvatarFileError(f"{folder} was made on body model {name} (content sha256 {digest[:12]}…), but the "
                              f"body model in use, {body.path.name}, is a different model (content sha256 "
                              f"{body.identity['content_sha256'][:12]}…); it needs {what}")
    if wanted.get("num_vertices") != body.num_vertices or wanted.get("num_faces") != len(body.faces):
        raise AvatarFileError(f"{folder} was made on body model {name} with "
                              f"{wanted.get('num_vertices')} vertices, but the body model in use "
                              f"({body.path.name}) has {body.num_vertices}")
    return body


def _group(cls: type, prefix: str, tensors: dict[str, torch.Tensor], path: Path, count: int) -> Any:
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if key not in tensors:
            raise AvatarFileError(f"{path} is missing the tensor {key}")
        t = tensors[key]
        if t.ndim == 0 or t.shape[0] != count:
            raise AvatarFileError(f"{path}: tensor {key} has {t.shape[0] if t.ndim else 'no'} rows; "
                                  f"avatar.json says {count}")
        spec = TENSOR_SPEC.get(key)
        if spec is not None:
            trailing, kind = spec
            if tuple(t.shape[1:]) != trailing:
                raise AvatarFileError(f"{path}: tensor {key} has shape {tuple(t.shape)}; expected "
                                      f"({count}{''.join(f', {s}' for s in trailing)})")
            integer = not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
            if (kind == "f") != t.is_floating_point() or (kind == "i" and not integer):
                raise AvatarFileError(f"{path}: tensor {key} is {str(t.dtype).replace('torch.', '')}; expected "
                                      f"{'floating point' if kind == 'f' else 'integer'} values")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AvatarFileError(f"{path}: tensor {key} contains NaN or infinite values")
        values[f.name] = t
    return cls(**values)


def _check_indices(free: FreeGaussians, bound: BoundGaussians, body: Any, path: Path) -> None:
    """Indices into the body model within its range: posing gathers with them."""
    joints = int(body.skinning_weights.shape[1])
    for name, t, limit, what in (("free.skin_joints", free.skin_joints, joints, "joints"),
                                 ("bound.faces", bound.faces, len(body.faces), "triangles")):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= limit):
            raise AvatarFileError(f"{path}: tensor {name} holds indices from {int(t.min())} to {int(t.max())}, but "
                                  f"the body model {body.path.name} has {limit} {what} (0 to {limit - 1})")


def load_avatar(folder: str | os.PathLike, body: Any = None, device: str | torch.device = "cpu") -> Avatar:
    """Read an avatar folder; `body` defaults to the body model the avatar names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    path = folder / TENSOR_FILE
    if not path.exists():
        raise AvatarFileError(f"{folder} is incomplete: {TENSOR_FILE} is missing")
    lfs = lfs_pointer_message(path)
    if lfs:
        raise AvatarFileError(f"{path} is {lfs}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AvatarFileError(f"{path} is corrupt: {exc}") from exc
    counts = meta.get("gaussians", {})
    free = _group(FreeGaussians, "free", tensors, path, int(counts.get("free", -1)))
    bound = _group(BoundGaussians, "bound", tensors, path, int(counts.get("bound", -1)))
    if len(free) + len(bound) == 0:
        raise AvatarFileError(f"{folder} holds zero Gaussians")
    body = _body_for(meta, folder, body, device)
    _check_indices(free, bound, body, path)
    avatar_meta = AvatarMeta(name=meta.get("name", folder.name), prompt=meta.get("prompt", ""),
                             seed=int(meta.get("seed", 0)), settings=meta.get("settings", {}),
                             provenance=meta.get("provenance", {}))
    betas = tensors.get("betas", torch.zeros(body.num_betas))
    if betas.ndim != 1 or not betas.is_floating_point() or betas.numel() > body.num_betas \
            or not torch.isfinite(betas).all():
        raise AvatarFileError(f"{path}: tensor betas must be at most {body.num_betas} finite numbers; got "
                              f"{str(betas.dtype).replace('torch.', '')} of shape {tuple(betas.shape)}")
    return Avatar(body=body, betas=betas, free=free, bound=bound, meta=avatar_meta).to(device)
