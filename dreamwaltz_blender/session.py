"""The Blender session's backend: one client, started lazily, and the handles it has given out.

Blender needs this state to outlive operators and renders (a render engine is re-created per
render); it lives here, in one place, and `shutdown()` clears it when the add-on unregisters.
"""

from __future__ import annotations

import os
from typing import Any

from .client import BackendClient
from .path_map import worker_path

_state: dict[str, Any] = {"client": None, "avatars": {}, "objects": {}, "settings": None, "last_render": {}}


def _settings(context: Any) -> tuple:
    prefs = addon_preferences(context)
    if prefs is None:
        return (None, None, None)
    return (prefs.python or None, prefs.device if prefs.device != "auto" else None, prefs.smplx_file or None)


def addon_preferences(context: Any) -> Any:
    from . import __package__ as package

    addon = context.preferences.addons.get(package) if context is not None else None
    return addon.preferences if addon is not None else None


def backend_env_dir(create: bool = False) -> str:
    """Where Set Up Backend puts its virtual environment: the extension's user folder (or, for a
    checkout registered as a plain add-on, Blender's user data folder)."""
    import bpy

    from . import __package__ as package

    try:
        return bpy.utils.extension_path_user(package or "", path="backend-env", create=create)
    except (ValueError, RuntimeError):
        return bpy.utils.user_resource("DATAFILES", path="dreamwaltz/backend-env", create=create)


def client(context: Any = None) -> BackendClient:
    """The backend client for the current preferences (a new one if they changed)."""
    import bpy

    context = context or bpy.context
    settings = _settings(context)
    current = _state["client"]
    if current is not None and _state["settings"] != settings:
        shutdown()
        current = None
    if current is None:
        python, device, smplx = settings
        env = {"DREAMWALTZ_CACHE": os.environ["DREAMWALTZ_CACHE"]} if "DREAMWALTZ_CACHE" in os.environ else None
        current = BackendClient(python, venv=backend_env_dir(), device=device, smplx=smplx, env=env)
        _state.update(client=current, settings=settings, avatars={}, objects={})
    return current


LOADERS = {"avatars": ("load_avatar", "avatar"), "objects": ("load_ply", "object")}


def load(kind: str, path: str, context: Any = None) -> dict:
    """Ask the backend to load an avatar folder or a PLY (cheap when it already has it) and
    remember the handle for this backend process; returns the backend's reply."""
    op, field = LOADERS[kind]
    c = client(context)
    reply = c.request(op, path=path)
    _state[kind][(c.generation, os.path.abspath(path))] = int(reply[field])
    return reply


def _handle(kind: str, path: str, context: Any = None) -> int:
    import bpy

    path = worker_path(path, os.path.dirname(bpy.data.filepath) or None)  # the farm's path map
    c = client(context)
    handle = _state[kind].get((c.generation, os.path.abspath(path)))
    if handle is None or not c.alive:
        return int(load(kind, path, context)[LOADERS[kind][1]])
    return handle


def avatar_handle(path: str, context: Any = None) -> int:
    return _handle("avatars", path, context)


def object_handle(path: str, context: Any = None) -> int:
    return _handle("objects", path, context)


def record_timing(timing: dict) -> None:
    """Where the last frame's time went (rig, request, backend pose/raster/pack, fill); shown by
    the Render panel and read by bench/blender_render.py."""
    _state["last_render"] = dict(timing)


def last_timing() -> dict:
    return dict(_state["last_render"])


def shutdown() -> None:
    current = _state["client"]
    _state.update(client=None, avatars={}, objects={}, settings=None, last_render={})
    if current is not None:
        current.close()
