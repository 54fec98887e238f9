"""Small helpers the format loaders share: key lookup, shape checks, context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..convert import pelvis_offset
from ..errors import MotionError
from ..safe_pickle import TorchTensorStub


@dataclass
class LoadContext:
    """What a loader may need besides the file: options and the (optional) body model."""

    path: Any
    body_model: Any = None
    source_fps: float | None = None
    notes: list = field(default_factory=list)   # human-readable remarks (shown by `motion info`)

    def pelvis(self, betas=None) -> np.ndarray:
        return pelvis_offset(self.body_model, betas)


def require(data, key: str, path, what: str = "an array"):
    """data[key] or a MotionError listing the keys that are there."""
    try:
        return data[key]
    except KeyError:
        keys = ", ".join(sorted(map(str, _keys(data)))) or "none"
        raise MotionError(path, key, what, f"no such key (keys: {keys})") from None


def first_key(data, keys, path, what: str = "an array"):
    for k in keys:
        if k in _keys(data):
            return k, data[k]
    present = ", ".join(sorted(map(str, _keys(data)))) or "none"
    raise MotionError(path, " or ".join(keys), what, f"none of them (keys: {present})")


def _keys(data):
    return data.files if hasattr(data, "files") else list(data.keys())


def array(value, key: str, path, *, ndim=None, last=None, dtype=np.float64) -> np.ndarray:
    """Coerce to a float array and check its rank / trailing size, naming the key on failure."""
    if isinstance(value, TorchTensorStub):
        if value.array is None:
            raise MotionError(path, key, "a tensor whose values are stored in the file",
                              f"a torch tensor without readable data ({value})")
        value = value.array
    try:
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "fiub":
            raise TypeError(str(arr.dtype))
        arr = arr.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise MotionError(path, key, "a numeric array", f"{type(value).__name__} ({exc})") from None
    if ndim is not None and arr.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise MotionError(path, key, f"{ndim}-D array" + (f" (N, {last})" if last else ""), f"shape {arr.shape}")
    if last is not None and (arr.ndim == 0 or arr.shape[-1] not in (last if isinstance(last, tuple) else (last,))):
        raise MotionError(path, key, f"last dimension {last}", f"shape {arr.shape}")
    return arr


def frames(arr: np.ndarray, n: int, key: str, path) -> np.ndarray:
    """Check that a per-frame array has n frames."""
    if arr.shape[0] != n:
        raise MotionError(path, key, f"{n} frames (like the poses)", f"{arr.shape[0]} frames, shape {arr.shape}")
    return arr


def scalar(value, key: str, path) -> float:
    arr = np.asarray(value.array if isinstance(value, TorchTensorStub) else value)
    if arr.size != 1 or arr.dtype.kind not in "fiu":
        raise MotionError(path, key, "a single number", f"{arr.dtype} shape {arr.shape}")
    return float(arr.reshape(()))


def text(value) -> str | None:
    """str / bytes / 0-d string array -> str (AMASS stores gender both ways)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(()).item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip() or None


def zeros(n: int, *shape) -> np.ndarray:
    return np.zeros((n,) + shape, np.float32)
