"""The PLY container (header, elements, properties) under both PLY flavours of 3DGS: ascii,
binary little- and big-endian, any property order, extra elements and properties."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..files import lfs_pointer_message
from .errors import GaussianFileError

TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_MAX_HEADER_BYTES = 1 << 20


@dataclasses.dataclass
class Element:
    name: str
    count: int
    props: list[tuple[str, str | None]]  # (name, numpy type) or (name, None) for a list property
    data: dict[str, np.ndarray] | None = None


@dataclasses.dataclass
class PlyContents:
    format: str
    comments: list[str]
    elements: dict[str, Element]

    def element(self, path: Path, name: str) -> Element:
        if name not in self.elements or self.elements[name].data is None:
            raise GaussianFileError(path, None, f"PLY file has no readable '{name}' element")
        return self.elements[name]


def is_ply(head: bytes) -> bool:
    return head[:3] == b"ply" and head[3:4] in (b"\n", b"\r")


def read_ply_container(path: Path, header_only: bool = False) -> PlyContents:
    """Parse the header and (unless `header_only`) read every element up to the first one with
    list properties that is not empty (3DGS files put such 'face' elements, if any, last)."""
    lfs = lfs_pointer_message(path)
    if lfs:
        raise GaussianFileError(path, None, f"this is {lfs}")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise GaussianFileError(path, None, f"cannot open: {e.strerror or e}") from e
    with f:
        fmt, comments, elements = _parse_header(path, f)
        if header_only:
            pass
        elif fmt == "ascii":
            _read_ascii(path, f, elements)
        else:
            _read_binary(path, f, elements, "<" if fmt == "binary_little_endian" else ">")
    return PlyContents(fmt, comments, {e.name: e for e in elements})


def _parse_header(path: Path, f) -> tuple[str, list[str], list[Element]]:
    first = f.readline(64)
    if first.rstrip(b"\r\n") != b"ply":
        raise GaussianFileError(path, None, "not a PLY file (it does not start with 'ply')")
    fmt, comments, elements = None, [], []
    nbytes = len(first)
    while True:
        line = f.readline(4096)
        nbytes += len(line)
        if not line or (not line.endswith(b"\n") and len(line) < 4096):
            raise GaussianFileError(path, None, "truncated PLY header (no 'end_header')")
        if nbytes > _MAX_HEADER_BYTES:
            raise GaussianFileError(path, None, "PLY header too long or missing 'end_header'")
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise GaussianFileError(path, None, "PLY header is not ASCII text") from None
        words = text.split()
        if not words or words[0] == "obj_info":
            continue
        key = words[0]
        if key == "comment":
            comments.append(text[len("comment"):].strip())
        elif key == "end_header":
            break
        elif key == "format":
            if len(words) < 2 or words[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise GaussianFileError(path, None, f"unsupported PLY format line {text!r}")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise GaussianFileError(path, None, f"bad PLY element line {text!r}")
            elements.append(Element(words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise GaussianFileError(path, None, "PLY property before any element")
            if len(words) >= 2 and words[1] == "list":
                if len(words) != 5 or words[2] not in TYPES or words[3] not in TYPES:
                    raise GaussianFileError(path, None, f"bad PLY list property {text!r}")
                elements[-1].props.append((words[4], None))
            else:
                if len(words) != 3 or words[1] not in TYPES:
                    raise GaussianFileError(path, None, f"bad PLY property line {text!r}")
                elements[-1].props.append((words[2], TYPES[words[1]]))
        else:
            raise GaussianFileError(path, None, f"unexpected PLY header line {text[:80]!r}")
    if fmt is None:
        raise GaussianFileError(path, None, "PLY header has no format line")
    return fmt, comments, elements


def _read_binary(path: Path, f, elements: list[Element], endian: str) -> None:
    for e in elements:
        if any(t is None for _, t in e.props):
            if e.count:
                return  # variable-size rows: nothing after them is needed by 3DGS
            e.data = {}
            continue
        dt = np.dtype([(p, endian + t) for p, t in e.props])
        need = e.count * dt.itemsize
        buf = f.read(need)
        if len(buf) != need:
            raise GaussianFileError(path, None, f"truncated PLY data: {e.count} '{e.name}' rows need {need} "
                                    f"bytes, the file holds {len(buf)}")
        rows = np.frombuffer(buf, dtype=dt, count=e.count)
        e.data = {p: rows[p] for p in dt.names or ()}


def _read_ascii(path: Path, f, elements: list[Element]) -> None:
    try:
        lines = [ln for ln in f.read().decode("ascii").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise GaussianFileError(path, None, "ascii PLY body is not ASCII text") from None
    at = 0
    for e in elements:
        rows = lines[at: at + e.count]
        at += e.count
        if any(t is None for _, t in e.props):
            e.data = {} if e.count == 0 else None
            continue
        if len(rows) != e.count:
            raise GaussianFileError(path, None, f"truncated PLY data: expected {e.count} '{e.name}' lines, "
                                    f"found {len(rows)}")
        try:
            arr = np.array([r.split() for r in rows], dtype=np.float64) if e.count else np.zeros((0, len(e.props)))
        except ValueError:
            raise GaussianFileError(path, None, f"malformed ascii PLY data in element '{e.name}'") from None
        if arr.ndim != 2 or arr.shape[1] != len(e.props):
            raise GaussianFileError(path, None, f"ascii PLY '{e.name}' lines do not have {len(e.props)} values each")
        e.data = {p: arr[:, i] for i, (p, _) in enumerate(e.props)}
