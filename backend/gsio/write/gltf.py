"""Binary glTF (.glb) with ``KHR_gaussian_splatting`` (see backend.gsio.gltf), for web viewers
that read glTF splats. COLOR_0 carries the fallback point colour (linear, from the sRGB DC
colour), as the extension suggests. The data must be Y up (glTF's frame)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ... import __version__
from ...files import atomic_path
from ...render.sh import C0
from ..errors import GaussianFileError
from ..gltf import (CHUNK_BIN, CHUNK_JSON, COLOR_SPACE, EXTENSION, FLOAT, GLB_MAGIC, GLB_VERSION, PREFIX,
                    sh_attribute)
from ..splats import Splats


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def write(path: Path, splats: Splats) -> Path:
    if splats.up != "y":
        raise GaussianFileError(path, "up", f"glTF is Y up; these Gaussians are {splats.up!r} up")
    if len(splats) == 0:
        raise GaussianFileError(path, None, "cannot write a glTF point primitive with no Gaussians")
    attributes = {
        "POSITION": splats.means, PREFIX + "ROTATION": splats.unit_quats()[:, [1, 2, 3, 0]],
        PREFIX + "SCALE": splats.scales, PREFIX + "OPACITY": splats.opacities[:, None],
        sh_attribute(0, 0): (splats.colors - 0.5) / C0,
        "COLOR_0": np.c_[_srgb_to_linear(np.clip(splats.colors, 0.0, 1.0)), splats.opacities],
    }
    if splats.sh is not None:
        for l in range(1, splats.sh_degree + 1):
            for m in range(2 * l + 1):
                attributes[sh_attribute(l, m)] = splats.sh[:, l * l - 1 + m]
    blob, views, accessors, names = bytearray(), [], [], {}
    for i, (name, values) in enumerate(attributes.items()):
        data = np.ascontiguousarray(values, dtype="<f4")
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": data.nbytes, "target": 34962})
        acc = {"bufferView": i, "componentType": FLOAT, "count": len(data),
               "type": {1: "SCALAR", 3: "VEC3", 4: "VEC4"}[data.shape[1]]}
        if name == "POSITION":
            acc.update(min=data.min(0).tolist(), max=data.max(0).tolist())
        accessors.append(acc)
        names[name] = i
        blob += data.tobytes()
        blob += b"\0" * (-len(blob) % 4)
    doc = {
        "asset": {"version": "2.0", "generator": f"DreamWaltz {__version__}"},
        "extensionsUsed": [EXTENSION],
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": path.stem}],
        "meshes": [{"name": path.stem, "primitives": [{
            "attributes": names, "mode": 0,
            "extensions": {EXTENSION: {"kernel": "ellipse", "colorSpace": COLOR_SPACE,
                                       "projection": "perspective", "sortingMethod": "cameraDistance"}}}]}],
        "buffers": [{"byteLength": len(blob)}], "bufferViews": views, "accessors": accessors,
    }
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    with atomic_path(path, suffix=path.suffix) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<III", GLB_MAGIC, GLB_VERSION, total))
        f.write(struct.pack("<II", len(text), CHUNK_JSON) + text)
        f.write(struct.pack("<II", len(blob), CHUNK_BIN) + bytes(blob))
    return path
