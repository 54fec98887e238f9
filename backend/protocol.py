"""The backend protocol: one definition that the server and the Blender add-on both use.

stdlib only and self-contained (no imports from the rest of ``backend``): the add-on loads this
file by its path, in Blender's Python, without torch. ``docs/protocol.md`` documents every op.

Wire format: one JSON object per line (UTF-8) on the backend's stdin (requests) and stdout
(replies and events); stderr is the backend's log.

* request: ``{"id": <int>, "op": "<name>", ...fields}``
* reply:   ``{"id": <same>, "ok": true, ...}`` or
           ``{"id": <same>, "ok": false, "error": {"code": "<word>", "message": "<sentence>"}}``
* event:   ``{"event": "<name>", "job": <job id or null>, ...}``

Bulk arrays never travel as JSON: a reply names a shared-memory block (``block``) and, for each
array, its byte offset, dtype and shape (``arrays``). Block names start with
``block_prefix(<server pid>)`` so that whoever outlives a dead server can remove its blocks.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

PROTOCOL_VERSION = 1

MAX_LINE_BYTES = 64 << 20
"""Longest request line the server reads; longer lines are refused (``bad_request``)."""

MAX_DEPTH = 32
"""Deepest nesting of lists and objects in a message (a render request nests 5 deep)."""

MAX_INT = 1 << 63
"""Integers in messages lie in (-MAX_INT, MAX_INT): ids, sizes, handles and counts all do."""

MAX_MAGNITUDE = 1e8
"""Numbers in matrices and vectors of a request (poses, cameras, object placement, expression,
background) lie within ±MAX_MAGNITUDE: the renderer works in float32, where a product of four
such numbers still fits (a 1e308 in an object matrix made its covariances infinite); a 5000 mm
lens on a 36 mm sensor at 16K pixels is a focal length of 2.3e6."""

MAX_SHUTDOWN_WAIT = 120.0
"""Longest ``wait`` a shutdown request may ask for (seconds)."""

# ---- error codes -----------------------------------------------------------------------
BAD_JSON = "bad_json"            # the line is not a JSON object
BAD_REQUEST = "bad_request"      # missing/extra-typed fields, bad values
UNKNOWN_OP = "unknown_op"
NOT_FOUND = "not_found"          # a handle, job, slot or file that does not exist
AVATAR_ERROR = "avatar_error"    # an avatar folder that cannot be loaded
FILE_ERROR = "file_error"        # a .ply or motion file that cannot be read or written
POSE_ERROR = "pose_error"        # transforms / expression values that cannot be used
RENDER_ERROR = "render_error"
JOB_ERROR = "job_error"          # a job that failed
UNAVAILABLE = "unavailable"      # a feature this backend build or machine does not have
SHUTTING_DOWN = "shutting_down"
INTERNAL = "internal"            # a bug: the message names the exception, the log has the traceback
# client side only
BACKEND_DIED = "backend_died"
START_FAILED = "start_failed"
TIMEOUT = "timeout"
VERSION_MISMATCH = "version_mismatch"

ERROR_CODES = (BAD_JSON, BAD_REQUEST, UNKNOWN_OP, NOT_FOUND, AVATAR_ERROR, FILE_ERROR, POSE_ERROR,
               RENDER_ERROR, JOB_ERROR, UNAVAILABLE, SHUTTING_DOWN, INTERNAL, BACKEND_DIED,
               START_FAILED, TIMEOUT, VERSION_MISMATCH)

# ---- events ----------------------------------------------------------------------------
EVENTS = ("job_queued", "job_started", "job_progress", "job_done", "job_failed", "job_cancelled",
          "backend_died")
FINAL_JOB_EVENTS = ("job_done", "job_failed", "job_cancelled")
JOB_STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")

# ---- ops and their top-level fields -----------------------------------------------------
# field -> (type, required). Types: int, number, str, bool, list, dict, any. Handlers check the
# insides of lists and dicts; this table is what every request is checked against first.
OPS: dict[str, dict[str, tuple[str, bool]]] = {
    "hello": {"client": ("str", False), "protocol_version": ("int", False)},
    "shutdown": {"wait": ("number", False)},
    "status": {},
    "load_avatar": {"path": ("str", True), "reload": ("bool", False)},
    "unload_avatar": {"avatar": ("int", True)},
    "rig": {"avatar": ("int", True), "slot": ("str", False)},
    "load_ply": {"path": ("str", True), "reload": ("bool", False)},
    "unload": {"object": ("int", True)},
    "render": {
        "width": ("int", True), "height": ("int", True), "camera": ("dict", True),
        "avatars": ("list", False), "objects": ("list", False), "passes": ("list", False),
        "dtype": ("str", False), "background": ("list", False), "slot": ("str", False),
        "flip_y": ("bool", False), "depth_empty": ("number", False), "rasterizer": ("str", False),
        "color": ("str", False),
    },
    "export_ply": {"avatar": ("int", True), "path": ("str", True), "transforms": ("list", False),
                   "expression": ("list", False), "local_rotations": ("list", False)},
    "load_motion": {"path": ("str", True), "fps": ("number", False), "avatar": ("int", False),
                    "slot": ("str", False), "source_fps": ("number", False), "up_axis": ("str", False)},
    "shape": {"avatar": ("int", True), "betas": ("list", False), "height": ("number", False),
              "weight": ("number", False), "slot": ("str", False)},
    "release": {"slot": ("str", False), "all": ("bool", False)},
    "job_start": {"kind": ("str", True), "params": ("dict", False)},
    "job_cancel": {"job": ("int", True)},
    "job_status": {"job": ("int", False)},
}

# ---- training jobs ---------------------------------------------------------------------
TRAIN_RECIPES = ("fast", "dreamwaltz-g")
"""`recipe` of a train job (`fast` is the default); its progress events carry ``recipe``,
``stage`` (the stage's name), ``stage_index`` (0-based) and ``stages`` (the stage names in order)."""

RENDER_PASSES = ("rgba", "depth")
CAMERA_MODELS = ("pinhole", "ortho")
COLORS = ("srgb", "linear")
FRAME_DTYPES = ("float32", "float16")
RASTERIZERS = ("auto", "torch", "gsplat")
NUM_JOINTS = 55
MAX_IMAGE_SIDE = 16384
MAX_PIXELS = 8192 * 8192
SLOT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_SLOT_LEN = 32
ARRAY_ALIGN = 64
"""Byte alignment of each array inside a shared-memory block."""


class ProtocolError(Exception):
    """A message that breaks the protocol; becomes an error reply with ``code``."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


# ---- encoding ----------------------------------------------------------------------------
def encode(message: dict) -> bytes:
    """One message as one line of UTF-8 JSON (non-finite floats refused)."""
    return (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


class _Refused(ValueError):
    """A JSON value that parses but is not allowed in a message."""


def _reject_constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is too large (it would be infinite)")
    return value


def _parse_int(text: str) -> int:
    if len(text) > 20:
        raise _Refused(f"the integer {text[:24]}… is out of range")
    value = int(text)
    if not -MAX_INT < value < MAX_INT:
        raise _Refused(f"the integer {text} is out of range")
    return value


def _check_depth(obj: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH (walked without recursion)."""
    todo = [(obj, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise _Refused(f"the message nests lists and objects more than {MAX_DEPTH} deep")
            items = value.values() if isinstance(value, dict) else value
            todo.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))


def decode(line: bytes | str, what: str = "the line") -> dict:
    """Parse one line (or a small JSON file: `what` names it) into a JSON object; raises
    ProtocolError(bad_json) otherwise. NaN, infinity (also spelled 1e999), integers beyond 64
    bits and nesting beyond MAX_DEPTH are refused."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(BAD_JSON, f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        obj = json.loads(line, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int)
        _check_depth(obj)
    except _Refused as exc:
        raise ProtocolError(BAD_JSON, f"{what} holds a value that is not allowed: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"{what} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_JSON, f"{what} must hold a JSON object, not {type(obj).__name__}")
    return obj


def reply_ok(request_id: Any, **fields: Any) -> dict:
    return {"id": request_id, "ok": True, **fields}


def reply_error(request_id: Any, code: str, message: str) -> dict:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def event(name: str, job: Any = None, **fields: Any) -> dict:
    return {"event": name, "job": job, **fields}


# ---- validation --------------------------------------------------------------------------
def type_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return (isinstance(value, int) and not isinstance(value, bool)) or \
            (isinstance(value, float) and math.isfinite(value))
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, dict)
    raise ValueError(f"unknown field type {kind!r}")


_TYPE_WORDS = {"int": "an integer", "number": "a finite number", "str": "a string", "bool": "true or false",
               "list": "a list", "dict": "an object", "any": "a value"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate_request(message: dict) -> tuple[int, str]:
    """Check a decoded request's id, op and top-level fields; returns (id, op).

    Unknown fields are ignored (forward compatibility); ProtocolError says what is wrong."""
    rid = message.get("id")
    if not (isinstance(rid, int) and not isinstance(rid, bool)):
        raise ProtocolError(BAD_REQUEST, "every request needs an integer \"id\"",
                            rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None)
    op = message.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, "every request needs an \"op\" naming the operation", rid)
    spec = OPS.get(op)
    if spec is None:
        shown = op if len(op) <= 40 else op[:40] + "…"
        raise ProtocolError(UNKNOWN_OP, f"unknown op {shown!r}; known ops: {', '.join(OPS)}", rid)
    for name, (kind, required) in spec.items():
        if name not in message or message[name] is None:
            if required:
                raise ProtocolError(BAD_REQUEST, f"op {op!r} needs the field {name!r} ({_TYPE_WORDS[kind]})", rid)
            continue
        if not type_ok(message[name], kind):
            raise ProtocolError(BAD_REQUEST, f"field {name!r} of op {op!r} must be {_TYPE_WORDS[kind]}, "
                                f"got {_json_type(message[name])}", rid)
    return rid, op


def absolute_path(value: Any, what: str) -> str:
    """A path field of a request: absolute (after ``~``), since the backend's working folder is
    no business of the client's; relative paths and NUL bytes are refused."""
    if not isinstance(value, str) or not value:
        raise ProtocolError(BAD_REQUEST, f"{what} must be a path (a non-empty string)")
    if "\0" in value:
        raise ProtocolError(BAD_REQUEST, f"{what} contains a NUL character")
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        raise ProtocolError(BAD_REQUEST, f"{what} must be an absolute path; got the relative path {value[:200]!r}")
    return path


def check_slot(slot: str) -> str:
    if not slot or len(slot) > MAX_SLOT_LEN or not set(slot) <= SLOT_CHARS:
        raise ProtocolError(BAD_REQUEST, f"slot names are 1-{MAX_SLOT_LEN} letters, digits, '_' or '-'; got {slot[:40]!r}")
    return slot


# ---- starting the backend ---------------------------------------------------------------------
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import runpy; "
              "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def isolated_command(python: str, root: str, module: str, *args: str) -> list[str]:
    """``python -m module args`` with `root` (the folder holding ``backend``) as the only extra
    entry on sys.path: ``-I`` keeps the working folder, PYTHONPATH, PYTHONHOME and the user's
    site-packages out, so no module planted there (a ``sitecustomize.py``, a ``numpy.py``) runs;
    the interpreter's own (virtual environment's) site-packages stay."""
    return [str(python), "-I", "-c", _BOOTSTRAP, str(root), module, *map(str, args)]


# ---- shared memory -------------------------------------------------------------------------
def block_prefix(server_pid: int) -> str:
    """Every shared-memory block of the server with this pid starts with this name."""
    return f"dw_{int(server_pid)}_"


def block_name(server_pid: int, serial: int, token: str = "") -> str:
    """A block's name: the prefix, a serial and (from the server) a random token, so that nobody
    can create a block's name before the server does."""
    return f"{block_prefix(server_pid)}{int(serial)}" + (f"_{token}" if token else "")


SHM_DIR = "/dev/shm"


def list_blocks(prefix: str) -> list[str]:
    """Names of existing shared-memory blocks starting with ``prefix`` (Linux; elsewhere the
    system offers no listing and this returns [])."""
    if not sys.platform.startswith("linux") or not os.path.isdir(SHM_DIR):
        return []
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except OSError:
        return []


def array_spec(offset: int, dtype: str, shape: Any) -> dict:
    return {"offset": int(offset), "dtype": str(dtype), "shape": [int(s) for s in shape]}


DTYPE_SIZES = {"float32": 4, "float16": 2, "int32": 4, "int64": 8, "uint8": 1}


def layout(arrays: list[tuple[str, str, tuple]]) -> tuple[dict[str, dict], int]:
    """Pack (name, dtype, shape) arrays one after another, each aligned to ARRAY_ALIGN bytes;
    returns ({name: array spec}, total bytes)."""
    specs: dict[str, dict] = {}
    offset = 0
    for name, dtype, shape in arrays:
        offset = -(-offset // ARRAY_ALIGN) * ARRAY_ALIGN
        count = 1
        for s in shape:
            count *= int(s)
        specs[name] = array_spec(offset, dtype, shape)
        offset += count * DTYPE_SIZES[dtype]
    return specs, max(offset, 1)
