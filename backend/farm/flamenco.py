"""Flamenco job types (JavaScript job compiler scripts) for DreamWaltz renders and trainings.

`install(DIR)` copies `flamenco/*.js` into Flamenco Manager's `scripts/` folder with this
machine's paths as defaults of the settings that name the add-on's render-chunk script, the
backend's folder and its Python (editable per job in Flamenco's web interface, and free to use
Flamenco's two-way variables such as `{dreamwaltz}` for mixed-OS farms).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files import write_text_atomic
from .units import BACKEND_ROOT, RENDER_ENTRY, FarmError

SCRIPTS = Path(__file__).resolve().with_name("flamenco")


def job_types() -> list[Path]:
    return sorted(SCRIPTS.glob("*.js"))


def render_script(path: Path, python: str | None = None) -> str:
    """A job type's JavaScript with its placeholders filled in (JSON string literals)."""
    values = {"__RENDER_CHUNK__": str(RENDER_ENTRY), "__BACKEND_ROOT__": str(BACKEND_ROOT),
              "__PYTHON__": python or sys.executable}
    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(key, json.dumps(value))
    return text


def install(folder: str | Path, python: str | None = None) -> list[Path]:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FarmError(f"{folder} is not a folder (give Flamenco Manager's scripts/ folder)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for script in job_types():
        target = folder / script.name
        write_text_atomic(target, render_script(script, python))
        written.append(target)
    return written
