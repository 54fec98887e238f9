"""The one error the Gaussian file readers and writers raise."""

from __future__ import annotations

import os


class GaussianFileError(ValueError):
    """A Gaussian file that cannot be read or written; the message names the file and, where
    one is at fault, the property."""

    def __init__(self, path: str | os.PathLike, prop: str | None, message: str) -> None:
        self.path, self.prop = os.fspath(path), prop
        super().__init__(f"{self.path}: {prop} {message}" if prop else f"{self.path}: {message}")
