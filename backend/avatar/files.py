"""Avatar folders (DESIGN.md §4): avatar.json + gaussians.safetensors + preview.png.

A folder is written whole or not at all: it is built beside the target and renamed into place.
It never embeds the body model; it names it, and loading needs that model.
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
from ..files import atomic_folder, lfs_pointer_message
from .gaussians import Avatar, AvatarMeta, BoundGaussians, FreeGaussians

FORMAT = "dreamwaltz-avatar"
FORMAT_VERSION = 1
META_FILE, TENSOR_FILE, PREVIEW_FILE = "avatar.json", "gaussians.safetensors", "preview.png"


class AvatarFileError(ValueError):
    """An avatar folder that cannot be read; the message names the folder and the problem."""


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
    from safetensors.torch import save_file

    folder = Path(folder)
    if avatar.num_gaussians == 0:
        raise AvatarFileError(f"refusing to save {folder}: the avatar has no Gaussians")
    if folder.exists() and (not folder.is_dir() or (not (folder / META_FILE).exists() and any(folder.iterdir()))):
        raise AvatarFileError(f"refusing to overwrite {folder}: it exists and is not an avatar folder")
    with atomic_folder(folder) as staging:
        save_file(_tensors(avatar), str(staging / TENSOR_FILE))
        (staging / META_FILE).write_text(json.dumps(_meta_json(avatar), indent=2))
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
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AvatarFileError(f"{path} is corrupt: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AvatarFileError(f"{path} is not a DreamWaltz avatar description (format field missing or wrong)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise AvatarFileError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise AvatarFileError(f"{folder} was written in avatar format {version}, newer than this version "
                              f"reads ({FORMAT_VERSION}): update DreamWaltz")
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
        if t.shape[0] != count:
            raise AvatarFileError(f"{path}: tensor {key} has {t.shape[0]} rows; avatar.json says {count}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AvatarFileError(f"{path}: tensor {key} contains NaN or infinite values")
        values[f.name] = t
    return cls(**values)


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
    if len(bound) and int(bound.faces.max()) >= len(body.faces):
        raise AvatarFileError(f"{path}: bound Gaussians refer to triangles the body model does not have")
    avatar_meta = AvatarMeta(name=meta.get("name", folder.name), prompt=meta.get("prompt", ""),
                             seed=int(meta.get("seed", 0)), settings=meta.get("settings", {}),
                             provenance=meta.get("provenance", {}))
    betas = tensors.get("betas", torch.zeros(body.num_betas))
    return Avatar(body=body, betas=betas, free=free, bound=bound, meta=avatar_meta).to(device)
