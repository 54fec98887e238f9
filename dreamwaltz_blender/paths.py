"""File paths the add-on stores (avatar folders, PLY files, plates): relative to the .blend where
they can be ("//..."), so a shot moves to another machine with its files.

A path is made relative when it is stored in a saved .blend, and again when the .blend is saved
(the first Save As of a new file included); it is resolved against the .blend, or against the
library a linked object comes from.
"""

from __future__ import annotations

import os
from typing import Any

KEYS = ("dreamwaltz_avatar", "dreamwaltz_ply")


def stored_path(path: str, blend: str | None = None) -> str:
    """`path` relative to the .blend (`blend`, default: the open one) where it can be."""
    import bpy

    from .path_map import is_foreign_absolute

    blend = bpy.data.filepath if blend is None else blend
    if not blend or path.startswith("//") or is_foreign_absolute(path):  # another OS's path: for the path map
        return path
    try:
        return "//" + os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(blend))).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        return path


def resolved_path(obj: Any, key: str) -> str:
    """The absolute path stored on `obj` under `key`."""
    import bpy

    original = getattr(obj, "original", obj)
    return os.path.normpath(bpy.path.abspath(str(obj[key]), library=original.library))


def relativize(blend: str) -> None:
    """Store the add-on's paths (on its objects, and its plates' files) relative to `blend`."""
    import bpy

    for obj in bpy.data.objects:
        if obj.library is not None:
            continue
        for key in KEYS:
            if key in obj and not str(obj[key]).startswith("//"):
                obj[key] = stored_path(str(obj[key]), blend)
    from .compositing import plate_datablocks

    for item in plate_datablocks():
        if item.library is None and item.filepath and not item.filepath.startswith("//"):
            item.filepath = stored_path(bpy.path.abspath(item.filepath), blend)


def _on_save(filepath: Any = None, *_args: Any) -> None:
    import bpy

    blend = filepath if isinstance(filepath, str) and filepath else bpy.data.filepath
    if blend:
        relativize(blend)


def register() -> None:
    import bpy

    if _on_save not in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.append(_on_save)


def unregister() -> None:
    import bpy

    if _on_save in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.remove(_on_save)
