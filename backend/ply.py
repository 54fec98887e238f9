"""Standard 3D Gaussian Splatting PLY files (the layout of the 3DGS paper's code).

``write_ply`` writes binary little-endian PLY with exactly these float32 vertex properties,
in this order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

with opacity stored as a logit, scales as natural logs, rot as a wxyz quaternion
(normalised) and ``f_dc = (rgb - 0.5) / C0``, ``C0 = 0.28209479177387814`` (the degree-0
spherical-harmonic constant). Files are written atomically: a temporary file in the same
folder, then ``os.replace``.

``read_ply`` reads such files, also ones written by other tools with extra properties
(``f_rest_*`` higher-order SH, which are ignored, normals, …), in ascii, binary
little-endian or binary big-endian form; any problem raises ``PlyError`` naming the file.
NumPy does the IO; torch is used only to build the GaussianSet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SH_C0 = 0.28209479177387814
PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)
REQUIRED = tuple(p for p in PROPERTIES if p not in ("nx", "ny", "nz"))

# opacities are clipped into [OPACITY_EPS, 1 - OPACITY_EPS] before the logit, and scales
# below SCALE_MIN are raised to it before the log, so the file holds finite numbers.
OPACITY_EPS = 1e-6
SCALE_MIN = 1e-10

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_MAX_HEADER_BYTES = 1 << 20


class PlyError(ValueError):
    """A PLY file that cannot be read (or Gaussians that cannot be written)."""


def _np(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def write_ply(path, gaussians, normals=None) -> Path:
    """Write ``gaussians`` (a GaussianSet) as a standard 3DGS PLY at ``path``; returns the path.

    ``normals`` (N,3) are optional (zeros if omitted). The file appears whole or not at all.
    """
    path = Path(path)
    means = _np(gaussians.means).reshape(-1, 3)
    n = means.shape[0]
    quats = _np(gaussians.quats).reshape(n, 4)
    scales = _np(gaussians.scales).reshape(n, 3)
    opac = _np(gaussians.opacities).reshape(n)
    colors = _np(gaussians.colors).reshape(n, 3)
    nrm = np.zeros((n, 3)) if normals is None else _np(normals).reshape(n, 3)
    for name, arr in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opac),
                      ("colors", colors), ("normals", nrm)):
        if not np.isfinite(arr).all():
            raise PlyError(f"{path}: cannot write Gaussians whose {name} contain NaN or infinite values")
    if (scales < 0).any():
        raise PlyError(f"{path}: cannot write negative Gaussian scales")

    qn = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(qn > 0, quats / np.where(qn > 0, qn, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    o = np.clip(opac, OPACITY_EPS, 1.0 - OPACITY_EPS)
    cols = {
        "x": means[:, 0], "y": means[:, 1], "z": means[:, 2],
        "nx": nrm[:, 0], "ny": nrm[:, 1], "nz": nrm[:, 2],
        "opacity": np.log(o) - np.log1p(-o),
    }
    for i in range(3):
        cols[f"f_dc_{i}"] = (colors[:, i] - 0.5) / SH_C0
        cols[f"scale_{i}"] = np.log(np.maximum(scales[:, i], SCALE_MIN))
    for i in range(4):
        cols[f"rot_{i}"] = quats[:, i]
    data = np.empty(n, dtype=[(p, "<f4") for p in PROPERTIES])
    for p in PROPERTIES:
        data[p] = cols[p]
    header = "ply\nformat binary_little_endian 1.0\n"
    header += f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in PROPERTIES)
    header += "end_header\n"

    from .files import atomic_path

    with atomic_path(path, suffix=".ply") as tmp, open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data.tobytes())
    return path


def _parse_header(path, f):
    first = f.readline(64)
    if first.rstrip(b"\r\n") != b"ply":
        raise PlyError(f"{path}: not a PLY file (it does not start with 'ply')")
    fmt = None
    elements = []  # [name, count, [(prop, dtype) or (prop, None) for lists]]
    nbytes = len(first)
    while True:
        line = f.readline(4096)
        nbytes += len(line)
        if not line or (not line.endswith(b"\n") and len(line) < 4096):
            raise PlyError(f"{path}: truncated PLY header (no 'end_header')")
        if nbytes > _MAX_HEADER_BYTES:
            raise PlyError(f"{path}: PLY header too long or missing 'end_header'")
        try:
            words = line.decode("ascii").split()
        except UnicodeDecodeError:
            raise PlyError(f"{path}: PLY header is not ASCII text") from None
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format":
            if len(words) < 2 or words[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise PlyError(f"{path}: unsupported PLY format line {line.decode().strip()!r}")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyError(f"{path}: bad PLY element line {line.decode().strip()!r}")
            elements.append([words[1], int(words[2]), []])
        elif key == "property":
            if not elements:
                raise PlyError(f"{path}: PLY property before any element")
            if len(words) >= 2 and words[1] == "list":
                if len(words) != 5 or words[2] not in _PLY_TYPES or words[3] not in _PLY_TYPES:
                    raise PlyError(f"{path}: bad PLY list property {line.decode().strip()!r}")
                elements[-1][2].append((words[4], None))
            else:
                if len(words) != 3 or words[1] not in _PLY_TYPES:
                    raise PlyError(f"{path}: bad PLY property line {line.decode().strip()!r}")
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise PlyError(f"{path}: unexpected PLY header line {line.decode(errors='replace').strip()!r}")
    if fmt is None:
        raise PlyError(f"{path}: PLY header has no format line")
    return fmt, elements


def read_ply(path, device=None, dtype=None):
    """Read a 3DGS PLY file into a GaussianSet (float32 unless ``dtype`` says otherwise).

    Needs the vertex properties x y z f_dc_0..2 opacity scale_0..2 rot_0..3; others are
    ignored (higher-order SH among them: only the DC colour is read). Colours are
    ``0.5 + C0 * f_dc`` clipped to [0, 1]; opacity is ``sigmoid``, scales ``exp``.
    """
    import torch

    from .render import GaussianSet

    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise PlyError(f"{path}: cannot open: {e.strerror or e}") from e
    with f:
        fmt, elements = _parse_header(path, f)
        names = [e[0] for e in elements]
        if "vertex" not in names:
            raise PlyError(f"{path}: PLY file has no 'vertex' element")
        vi = names.index("vertex")
        _, count, props = elements[vi]
        pnames = [p for p, _ in props]
        missing = [p for p in REQUIRED if p not in pnames]
        if missing:
            raise PlyError(f"{path}: PLY vertex element lacks the 3DGS properties {', '.join(missing)}")
        if any(t is None for _, t in props):
            raise PlyError(f"{path}: list properties in the vertex element are not supported")
        if fmt == "ascii":
            cols = _read_ascii(path, f, elements, vi)
        else:
            endian = "<" if fmt == "binary_little_endian" else ">"
            cols = _read_binary(path, f, elements, vi, endian)

    def col(name):
        a = np.asarray(cols[name], dtype=np.float64)
        if not np.isfinite(a).all():
            raise PlyError(f"{path}: property {name} holds NaN or infinite values")
        return a

    means = np.stack([col(p) for p in ("x", "y", "z")], 1)
    dc = np.stack([col(f"f_dc_{i}") for i in range(3)], 1)
    colors = np.clip(0.5 + SH_C0 * dc, 0.0, 1.0)
    with np.errstate(over="ignore"):
        opac = 1.0 / (1.0 + np.exp(-col("opacity")))
        scales = np.exp(np.stack([col(f"scale_{i}") for i in range(3)], 1))
    quats = np.stack([col(f"rot_{i}") for i in range(4)], 1)
    dtype = dtype or torch.float32
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return GaussianSet(means=t(means), quats=t(quats), scales=t(scales), opacities=t(opac), colors=t(colors))


def _read_binary(path, f, elements, vi, endian):
    # skip the elements stored before the vertices (only fixed-size ones can be skipped)
    for name, count, props in elements[:vi]:
        if any(t is None for _, t in props):
            raise PlyError(f"{path}: cannot skip element {name!r} with list properties before the vertices")
        size = count * sum(np.dtype(t).itemsize for _, t in props)
        skipped = f.read(size)
        if len(skipped) != size:
            raise PlyError(f"{path}: truncated PLY data in element {name!r}")
    _, count, props = elements[vi]
    dt = np.dtype([(p, endian + t) for p, t in props])
    need = count * dt.itemsize
    buf = f.read(need)
    if len(buf) != need:
        raise PlyError(
            f"{path}: truncated PLY data: {count} vertices need {need} bytes, the file holds {len(buf)}"
        )
    data = np.frombuffer(buf, dtype=dt, count=count)
    return {p: data[p] for p in dt.names}


def _read_ascii(path, f, elements, vi):
    text = f.read()
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise PlyError(f"{path}: ascii PLY body is not ASCII text") from None
    lines = [ln for ln in lines if ln.strip()]
    skip = sum(e[1] for e in elements[:vi])
    _, count, props = elements[vi]
    rows = lines[skip : skip + count]
    if len(rows) != count:
        raise PlyError(f"{path}: truncated PLY data: expected {count} vertex lines, found {len(rows)}")
    try:
        arr = np.array([r.split() for r in rows], dtype=np.float64) if count else np.zeros((0, len(props)))
    except ValueError:
        raise PlyError(f"{path}: malformed ascii PLY vertex data") from None
    if arr.ndim != 2 or arr.shape[1] != len(props):
        raise PlyError(f"{path}: ascii PLY vertex lines do not have {len(props)} values each")
    return {p: arr[:, i] for i, (p, _) in enumerate(props)}
