"""File › Import (Avatar, Motion, Gaussian Splats) and File › Export (Gaussian PLY) entries."""

from __future__ import annotations

from typing import Any

IMPORTS = (("dreamwaltz.add_avatar", "DreamWaltz Avatar (folder)", "ARMATURE_DATA"),
           ("dreamwaltz.import_motion", "DreamWaltz Motion (.npz, .npy, .pkl, .json)", "ACTION"),
           ("dreamwaltz.import_ply", "Gaussian Splats (.ply, .splat, .spz, .glb)", "POINTCLOUD_DATA"))
EXPORTS = (("dreamwaltz.export_ply", "Gaussian Splats (.ply)", "POINTCLOUD_DATA"),)


def _entries(layout: Any, entries: tuple) -> None:
    layout.operator_context = "INVOKE_DEFAULT"
    for idname, text, icon in entries:
        layout.operator(idname, text=text, icon=icon)


def draw_import(self: Any, context: Any) -> None:
    _entries(self.layout, IMPORTS)


def draw_export(self: Any, context: Any) -> None:
    _entries(self.layout, EXPORTS)


def register() -> None:
    import bpy

    bpy.types.TOPBAR_MT_file_import.append(draw_import)
    bpy.types.TOPBAR_MT_file_export.append(draw_export)


def unregister() -> None:
    import bpy

    bpy.types.TOPBAR_MT_file_export.remove(draw_export)
    bpy.types.TOPBAR_MT_file_import.remove(draw_import)
