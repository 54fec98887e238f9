"""A hybrid avatar's networks in its folder (avatar format 2; files.py writes the rest).

avatar.json gains a "networks" object: each network's shape (`FieldSpec`, `DeformSpec`) or null
where the avatar has none; gaussians.safetensors gains their parameters as `networks.*` tensors
(the field's grid in half precision: it is most of the file) and the canonical skinning
transforms. Loading builds each network from its declared shape and refuses, naming the file
and the tensor, any parameter that is missing, unexpected, of another shape or not finite.

The Gaussians' colours (and the free ones' opacities) stay in the file as ever, baked from the
field (as stored, after rounding to half precision), for readers that cannot run it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .gaussians import Avatar
from .hybrid import DeformationNetwork, DeformSpec, FieldSpec, HybridNetworks, ImplicitField, NetworkSpecError

PREFIX = "networks."
GRID = "field.encoding.embeddings"
GRID_DTYPE = torch.float16


class NetworkFileError(ValueError):
    """Networks in an avatar folder that cannot be used (the message names the file)."""


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-6, 1 - 1e-6)
    return torch.log(x / (1 - x))


def for_saving(avatar: Avatar) -> Avatar:
    """The avatar as it will be read back: the grid rounded to half precision and the colours
    (and free opacities) baked from that field."""
    from .posing import bound_constants, free_constants

    networks = avatar.networks
    if networks is None or networks.field is None:
        return avatar
    source = networks.field
    field = ImplicitField(source.spec, source.centre.detach().cpu(), float(source.bound))
    field.load_state_dict({k: v.detach().cpu().float() for k, v in source.state_dict().items()})
    with torch.no_grad():
        largest = torch.finfo(GRID_DTYPE).max
        field.encoding.embeddings.copy_(field.encoding.embeddings.clamp(-largest, largest).to(GRID_DTYPE).float())
    kept = HybridNetworks(networks.canonical_transforms.detach(), field.to(source.centre.device), networks.deformation)
    stored = dataclasses.replace(avatar, networks=kept, cache={})
    with torch.no_grad():
        free, bound = free_constants(stored), bound_constants(stored)
        baked_free = dataclasses.replace(avatar.free, colors=free.colors.clone(), opacity_logits=_logit(free.opacities))
        baked_bound = dataclasses.replace(avatar.bound, colors=bound.colors.clone())
    return dataclasses.replace(stored, free=baked_free, bound=baked_bound, cache={})


def networks_meta(networks: HybridNetworks) -> dict[str, Any]:
    return {"field": None if networks.field is None else networks.field.spec.to_dict(),
            "deformation": None if networks.deformation is None else networks.deformation.spec.to_dict()}


def networks_tensors(networks: HybridNetworks) -> dict[str, torch.Tensor]:
    out = {f"{PREFIX}canonical_transforms": networks.canonical_transforms}
    for name, module in (("field", networks.field), ("deformation", networks.deformation)):
        if module is not None:
            for key, value in module.state_dict().items():
                out[f"{PREFIX}{name}.{key}"] = value.to(GRID_DTYPE) if f"{name}.{key}" == GRID else value
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _take(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    name = PREFIX + key
    if name not in tensors:
        raise NetworkFileError(f"{path} is missing the tensor {name}")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise NetworkFileError(f"{path}: tensor {name} has shape {tuple(t.shape)}; the network avatar.json "
                               f"declares needs {shape}")
    if not t.is_floating_point():
        raise NetworkFileError(f"{path}: tensor {name} is {str(t.dtype).replace('torch.', '')}; expected "
                               "floating point values")
    t = t.float()
    if not torch.isfinite(t).all():
        raise NetworkFileError(f"{path}: tensor {name} contains NaN or infinite values")
    return t


def _load_module(module: torch.nn.Module, name: str, tensors: dict[str, torch.Tensor], path: Path) -> None:
    state = {key: _take(tensors, f"{name}.{key}", tuple(value.shape), path)
             for key, value in module.state_dict().items()}
    module.load_state_dict(state)


def load_networks(declared: Any, tensors: dict[str, torch.Tensor], path: Path, meta_path: Path) -> HybridNetworks | None:
    """The networks avatar.json declares (None when it declares none), checked against the tensors."""
    if declared is None:
        stray = sorted(k for k in tensors if k.startswith(PREFIX))
        if stray:
            raise NetworkFileError(f"{path} holds network tensors ({stray[0]}, ...) that {meta_path.name} does not declare")
        return None
    if not isinstance(declared, dict) or set(declared) != {"field", "deformation"}:
        raise NetworkFileError(f"{meta_path}: \"networks\" must be an object with \"field\" and \"deformation\"")
    try:
        field_spec = None if declared["field"] is None else FieldSpec.from_dict(declared["field"], "networks.field")
        deform_spec = None if declared["deformation"] is None else \
            DeformSpec.from_dict(declared["deformation"], "networks.deformation")
        field = None if field_spec is None else ImplicitField(field_spec, torch.zeros(3), 1.0)
        deformation = None if deform_spec is None else DeformationNetwork(deform_spec)
        HybridNetworks(torch.eye(4).repeat(55, 1, 1), field, deformation)   # the networks fit together
    except NetworkSpecError as exc:
        raise NetworkFileError(f"{meta_path}: {exc}") from None
    expected = {f"{PREFIX}canonical_transforms"}
    for name, module in (("field", field), ("deformation", deformation)):
        if module is not None:
            _load_module(module, name, tensors, path)
            expected |= {f"{PREFIX}{name}.{key}" for key in module.state_dict()}
    stray = sorted(k for k in tensors if k.startswith(PREFIX) and k not in expected)
    if stray:
        raise NetworkFileError(f"{path} holds the tensor {stray[0]}, which no network {meta_path.name} declares has")
    if field is not None and not float(field.bound) > 0:
        raise NetworkFileError(f"{path}: tensor {PREFIX}field.bound must be positive; got {float(field.bound)}")
    transforms = _take(tensors, "canonical_transforms", (55, 4, 4), path)
    return HybridNetworks(transforms, field, deformation)


__all__ = ["NetworkFileError", "for_saving", "networks_meta", "networks_tensors", "load_networks"]
