"""3D Gaussian Splatting files in and out: one module per format under ``read/`` and ``write/``
(import apart from export, like Blender's glTF add-on), with this dispatcher over them.

=================  =========================================  ==============  ================
format             what                                       suffix          frame ("up")
=================  =========================================  ==============  ================
``ply``            INRIA 3DGS PLY (also Brush, Mip-Splatting)  .ply            capture's: "-y"
``compressed-ply`` SuperSplat / PlayCanvas compressed PLY      .compressed.ply "-y"
``splat``          antimatter15 .splat (no SH)                 .splat          "-y"
``spz``            Niantic .spz (versions 1-4 in, 3 out)       .spz            RUB: "y"
``glb``            glTF 2.0 + KHR_gaussian_splatting           .glb / .gltf    "y"
=================  =========================================  ==============  ================

Readers find the format from the content (not the name) and return `Splats` as stored, with
the frame the format (or, for our own PLYs, a header comment) says; placing them in a scene is
the caller's job (the Blender import rotates the object). Every file is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..files import lfs_pointer_message
from .errors import GaussianFileError
from .splats import UP_AXES, Splats

FORMATS = {"ply": "INRIA 3DGS PLY", "compressed-ply": "SuperSplat compressed PLY", "splat": "antimatter15 .splat",
           "spz": "Niantic .spz", "glb": "glTF KHR_gaussian_splatting"}
_KNOWN = "an INRIA or compressed 3DGS PLY, .splat, .spz, or glTF with KHR_gaussian_splatting"

__all__ = ["FORMATS", "UP_AXES", "GaussianFileError", "Splats", "detect_format", "read_gaussians",
           "write_gaussians", "format_for_path"]


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except OSError as e:
        raise GaussianFileError(path, None, f"cannot open: {e.strerror or e}") from e


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file, from its content."""
    from .ply_container import is_ply, read_ply_container
    from .read import compressed_ply, gltf, spz

    path = Path(path)
    head = _head(path)
    lfs = lfs_pointer_message(path)
    if lfs:
        raise GaussianFileError(path, None, f"this is {lfs}")
    if is_ply(head):
        return "compressed-ply" if compressed_ply.is_compressed(read_ply_container(path, header_only=True)) else "ply"
    if spz.is_spz(head):
        return "spz"
    if gltf.is_glb(head) or head.lstrip()[:1] == b"{":
        return "glb"
    if path.suffix.lower() == ".splat":
        return "splat"
    if path.suffix.lower() == ".ply":
        raise GaussianFileError(path, None, "is not a PLY file (it does not start with 'ply')")
    raise GaussianFileError(path, None, f"is not {_KNOWN} (it starts with {head[:12]!r})")


def read_gaussians(path: str | os.PathLike) -> Splats:
    """Read any supported file into checked `Splats` (one GaussianFileError naming the file and
    the property otherwise)."""
    from .ply_container import read_ply_container
    from .read import compressed_ply, gltf, inria_ply, splat, spz

    path = Path(path)
    if not path.is_file():
        raise GaussianFileError(path, None, "does not exist" if not path.exists() else "is not a file")
    fmt = detect_format(path)
    if fmt in ("ply", "compressed-ply"):
        contents = read_ply_container(path)
        reader = compressed_ply.read if compressed_ply.is_compressed(contents) else inria_ply.read
        out = reader(path, contents)
    else:
        data = path.read_bytes()
        out = {"spz": spz.read, "glb": gltf.read, "splat": splat.read}[fmt](path, data)
    return out.validate(path)


def format_for_path(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    if name.endswith(".compressed.ply"):
        return "compressed-ply"
    suffix = Path(name).suffix
    fmt = {".ply": "ply", ".splat": "splat", ".spz": "spz", ".glb": "glb"}.get(suffix)
    if fmt is None:
        raise GaussianFileError(path, None, "has no Gaussian file suffix this exporter writes (.ply, "
                                ".compressed.ply, .splat, .spz, .glb)")
    return fmt


def write_gaussians(path: str | os.PathLike, splats: Splats, fmt: str | None = None, **options) -> Path:
    """Write `splats` as `fmt` (default: from the suffix); options go to the format's writer
    (``sh_degree`` and ``normals`` for INRIA PLY). The file appears whole or not at all."""
    from .write import compressed_ply, gltf, inria_ply, splat, spz

    path = Path(path)
    fmt = fmt or format_for_path(path)
    if fmt not in FORMATS:
        raise GaussianFileError(path, None, f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    splats.validate(path)
    writer = {"ply": inria_ply.write, "compressed-ply": compressed_ply.write, "splat": splat.write,
              "spz": spz.write, "glb": gltf.write}[fmt]
    return writer(path, splats, **options)
