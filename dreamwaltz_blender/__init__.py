"""DreamWaltz for Blender: text-driven, animatable 3D Gaussian avatars.

Thin Blender glue: rigs, motion keys, the render engine and compositing live here; all GPU work
happens in the backend process, reached through `client.py`. This package never imports torch.
"""

from __future__ import annotations

bl_info = {
    "name": "DreamWaltz",
    "author": "DreamWaltz for Blender developers",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "3D Viewport > Sidebar > DreamWaltz",
    "description": "Text-driven, animatable 3D Gaussian human avatars",
    "category": "Animation",
}


def _classes() -> tuple:
    from . import engine, farm, operators, panels, preferences

    return (preferences.CLASSES + operators.CLASSES + farm.CLASSES + panels.CLASSES
            + (engine.DreamWaltzRenderEngine,))


def register() -> None:
    """Refuses (with the Blender it needs) below the minimum version, before registering anything."""
    import bpy

    from . import compat

    reason = compat.unsupported_reason()
    if reason is not None:
        raise RuntimeError(reason)
    from . import create, engine, menus, paths, shape, viewport

    for cls in _classes():
        bpy.utils.register_class(cls)
    shape.register()
    viewport.register()
    create.register()
    menus.register()
    paths.register()
    for panel in engine.compatible_panels():
        panel.COMPAT_ENGINES.add(engine.DreamWaltzRenderEngine.bl_idname)


def unregister() -> None:
    import bpy

    from . import create, engine, menus, paths, session, shape, viewport

    session.shutdown()
    paths.unregister()
    menus.unregister()
    create.unregister()
    viewport.unregister()
    shape.unregister()
    for panel in engine.compatible_panels():
        panel.COMPAT_ENGINES.discard(engine.DreamWaltzRenderEngine.bl_idname)
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
