"""The one exception the motion package raises for files and values it refuses."""

from __future__ import annotations

import os


class MotionError(ValueError):
    """A motion file or value was refused.

    The message names the file, the key, what was expected and what was found, so that a
    user can fix the file (or report it) without reading code. The parts are also kept as
    attributes for callers that want to present them differently.
    """

    def __init__(self, path=None, key=None, expected=None, found=None, *,
                 message: str | None = None, needs_body_model: bool = False):
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        self.expected = expected
        self.found = found
        # True when the file is fine but loading it needs a body model (hand PCA / mean)
        self.needs_body_model = needs_body_model
        parts = [self.path or "<motion>"]
        if key is not None:
            parts.append(f"key '{key}'")
        head = ": ".join(parts)
        if message is None:
            message = f"expected {expected}, found {found}"
        super().__init__(f"{head}: {message}")
