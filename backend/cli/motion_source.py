"""Where commands get motion from: a file in any supported format, or the built-in dance."""

from __future__ import annotations

from typing import Any

BUILTIN_DANCE = "builtin:dance"


def load(path: str, fps: float | None, body: Any, seconds: float = 4.0) -> Any:
    """`path` is a motion file or `builtin:dance`; resampled to `fps` when given."""
    if path == BUILTIN_DANCE:
        from ..dance import dance

        return dance(seconds=seconds, fps=fps or 30.0, num_expression=body.num_expression)
    from ..motion import load_motion

    return load_motion(path, fps=fps, body_model=body)
