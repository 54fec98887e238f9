"""glTF 2.0 (.glb, or .gltf with embedded or neighbouring buffers) with ``KHR_gaussian_splatting``
(see backend.gsio.gltf): every splat primitive of the default scene, placed by its node's
transform (rotation, translation and uniform scale; SH turned with it). Y up."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np

from ...render.sh import C0, MAX_DEGREE
from ..errors import GaussianFileError
from ..gltf import (BYTE, CHUNK_BIN, CHUNK_JSON, COMPONENTS, EXTENSION, FLOAT, GLB_MAGIC, NATIVE_UP, PREFIX,
                    SHORT, UNSIGNED_BYTE, UNSIGNED_SHORT, sh_attribute)
from ..splats import Splats

_DTYPES = {FLOAT: "<f4", BYTE: "i1", UNSIGNED_BYTE: "u1", SHORT: "<i2", UNSIGNED_SHORT: "<u2"}
_NORM = {BYTE: 127.0, UNSIGNED_BYTE: 255.0, SHORT: 32767.0, UNSIGNED_SHORT: 65535.0}


def is_glb(head: bytes) -> bool:
    return head[:4] == struct.pack("<I", GLB_MAGIC)


def read(path: Path, data: bytes) -> Splats:
    doc, bin_chunk = _document(path, data)
    buffers = [_buffer(path, b, bin_chunk if i == 0 else None) for i, b in enumerate(doc.get("buffers", []))]
    parts = []
    for prim, matrix in _splat_primitives(path, doc):
        parts.append(_transformed(path, _primitive(path, doc, buffers, prim), matrix))
    if not parts:
        raise GaussianFileError(path, None, f"has no mesh primitive with the {EXTENSION} extension")
    degree = max(p.sh_degree for p in parts)
    k = (degree + 1) ** 2 - 1

    def sh(p: Splats) -> np.ndarray:
        out = np.zeros((len(p), k, 3))
        if p.sh is not None:
            out[:, : p.sh.shape[1]] = p.sh
        return out

    return Splats(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("means", "quats", "scales", "opacities", "colors")},
                  sh=np.concatenate([sh(p) for p in parts]) if k else None, up=NATIVE_UP)


def _document(path: Path, data: bytes) -> tuple[dict, bytes | None]:
    bin_chunk = None
    if is_glb(data):
        if len(data) < 20:
            raise GaussianFileError(path, None, "truncated .glb header")
        _, version, total = struct.unpack("<III", data[:12])
        if total > len(data):
            raise GaussianFileError(path, None, f"truncated .glb: the header says {total} bytes, the file holds {len(data)}")
        at, chunks = 12, {}
        while at + 8 <= total:
            size, kind = struct.unpack("<II", data[at: at + 8])
            if at + 8 + size > total:
                raise GaussianFileError(path, None, "truncated .glb chunk")
            chunks.setdefault(kind, data[at + 8: at + 8 + size])
            at += 8 + size
        if CHUNK_JSON not in chunks:
            raise GaussianFileError(path, None, ".glb has no JSON chunk")
        text, bin_chunk = chunks[CHUNK_JSON], chunks.get(CHUNK_BIN)
    else:
        text = data
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GaussianFileError(path, None, f"glTF JSON is corrupt: {e}") from None
    if not isinstance(doc, dict) or str(doc.get("asset", {}).get("version", "")).split(".")[0] != "2":
        raise GaussianFileError(path, "asset.version", "is not 2.x (only glTF 2.0 is read)")
    return doc, bin_chunk


def _buffer(path: Path, b: dict, bin_chunk: bytes | None) -> bytes:
    uri = b.get("uri")
    if uri is None:
        if bin_chunk is None:
            raise GaussianFileError(path, "buffers", "buffer 0 has no uri and the file no binary chunk")
        return bin_chunk
    if uri.startswith("data:"):
        return base64.b64decode(uri.split(",", 1)[1])
    try:
        return (path.parent / uri).read_bytes()
    except OSError as e:
        raise GaussianFileError(path, "buffers", f"cannot read the buffer {uri}: {e.strerror or e}") from None


def _node_matrix(node: dict) -> np.ndarray:
    if "matrix" in node:
        return np.asarray(node["matrix"], np.float64).reshape(4, 4).T  # column-major
    x, y, z, w = node.get("rotation", [0.0, 0.0, 0.0, 1.0])
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    m = np.eye(4)
    m[:3, :3] = R * np.asarray(node.get("scale", [1.0, 1.0, 1.0]), np.float64)
    m[:3, 3] = node.get("translation", [0.0, 0.0, 0.0])
    return m


def _splat_primitives(path: Path, doc: dict):
    nodes = doc.get("nodes", [])
    scenes = doc.get("scenes", [])
    roots = scenes[doc.get("scene", 0)]["nodes"] if scenes else range(len(nodes))
    stack = [(i, np.eye(4)) for i in roots]
    while stack:
        i, parent = stack.pop()
        node = nodes[i]
        world = parent @ _node_matrix(node)
        if "mesh" in node:
            for prim in doc["meshes"][node["mesh"]]["primitives"]:
                if EXTENSION in prim.get("extensions", {}):
                    if prim.get("mode", 4) != 0:
                        raise GaussianFileError(path, "mode", f"of a {EXTENSION} primitive must be 0 (POINTS)")
                    yield prim, world
        stack.extend((c, world) for c in node.get("children", []))


def _accessor(path: Path, doc: dict, buffers: list[bytes], index: int, name: str, width: int) -> np.ndarray:
    try:
        acc = doc["accessors"][index]
        if "sparse" in acc:
            raise GaussianFileError(path, name, "uses a sparse accessor, which this reader does not support")
        ctype, count, comps = acc["componentType"], acc["count"], COMPONENTS[acc["type"]]
        view = doc["bufferViews"][acc["bufferView"]]
        buf = buffers[view["buffer"]]
    except (KeyError, IndexError, TypeError) as e:
        raise GaussianFileError(path, name, f"refers to a missing accessor, buffer view or buffer ({e})") from None
    if comps != width or ctype not in _DTYPES:
        raise GaussianFileError(path, name, f"must be a {width}-component accessor of a known type; found "
                                f"{acc['type']} of component type {ctype}")
    dt = np.dtype(_DTYPES[ctype])
    stride = view.get("byteStride") or dt.itemsize * comps
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    end = start + stride * (count - 1) + dt.itemsize * comps if count else start
    if end > min(len(buf), view.get("byteOffset", 0) + view["byteLength"]):
        raise GaussianFileError(path, name, f"runs past the end of its buffer (truncated file?)")
    rows = np.lib.stride_tricks.as_strided(np.frombuffer(buf, dt, offset=start, count=(end - start) // dt.itemsize if count else 0),
                                           (count, comps), (stride, dt.itemsize)) if count else np.zeros((0, comps), dt)
    out = rows.astype(np.float64)
    if ctype != FLOAT and acc.get("normalized"):
        out = np.maximum(out / _NORM[ctype], -1.0)
    if not np.isfinite(out).all():
        raise GaussianFileError(path, name, f"holds NaN or infinite values (first at point {int(np.argmax(~np.isfinite(out).all(1)))})")
    return out


def _primitive(path: Path, doc: dict, buffers: list[bytes], prim: dict) -> Splats:
    attrs = prim.get("attributes", {})
    need = {"POSITION": 3, PREFIX + "ROTATION": 4, PREFIX + "SCALE": 3, PREFIX + "OPACITY": 1, sh_attribute(0, 0): 3}
    missing = [a for a in need if a not in attrs]
    if missing:
        raise GaussianFileError(path, missing[0], f"is missing from a {EXTENSION} primitive")
    get = {a: _accessor(path, doc, buffers, attrs[a], a, w) for a, w in need.items()}
    n = len(get["POSITION"])
    for a, v in get.items():
        if len(v) != n:
            raise GaussianFileError(path, a, f"has {len(v)} values for {n} positions")
    degree = 0
    while sh_attribute(degree + 1, 0) in attrs:
        degree += 1
    if degree > MAX_DEGREE:
        raise GaussianFileError(path, sh_attribute(degree, 0), f"means SH degree {degree}; at most {MAX_DEGREE} is supported")
    rest = []
    for l in range(1, degree + 1):
        for m in range(2 * l + 1):
            a = sh_attribute(l, m)
            if a not in attrs:
                raise GaussianFileError(path, a, f"is missing: SH degree {l} is only partly defined")
            rest.append(_accessor(path, doc, buffers, attrs[a], a, 3))
    return Splats(means=get["POSITION"], quats=get[PREFIX + "ROTATION"][:, [3, 0, 1, 2]],
                  scales=get[PREFIX + "SCALE"], opacities=get[PREFIX + "OPACITY"][:, 0],
                  colors=0.5 + C0 * get[sh_attribute(0, 0)], sh=np.stack(rest, 1) if rest else None, up=NATIVE_UP)


def _transformed(path: Path, s: Splats, matrix: np.ndarray) -> Splats:
    if np.allclose(matrix, np.eye(4)):
        return s
    A = matrix[:3, :3]
    scale = np.cbrt(np.linalg.det(A))
    R = A / scale if scale > 0 else A
    if scale <= 0 or not np.allclose(R.T @ R, np.eye(3), atol=1e-6):
        raise GaussianFileError(path, "nodes", "place splats with a mirror, shear or non-uniform scale; this "
                                "reader applies rotations, translations and uniform scales only")
    import torch

    from ...avatar.posing import matrix_to_quaternion, quaternion_multiply
    from ...render.sh import rotate_sh

    q = matrix_to_quaternion(torch.as_tensor(R)).expand(len(s), 4)
    quats = quaternion_multiply(q, torch.as_tensor(s.quats)).numpy()
    sh = None if s.sh is None else rotate_sh(torch.as_tensor(s.sh), R).numpy()
    return Splats(means=s.means @ A.T + matrix[:3, 3], quats=quats, scales=s.scales * scale,
                  opacities=s.opacities, colors=s.colors, sh=sh, up=s.up)
