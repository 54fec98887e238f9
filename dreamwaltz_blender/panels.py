"""The "DreamWaltz" tab in the 3D viewport's sidebar: Avatar, Motion, Render & Composite."""

from __future__ import annotations

from typing import Any

import bpy

from . import session
from .operators import active_rig
from .rig import AVATAR_KEY, EXPRESSION_KEY


class _Tab:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DreamWaltz"

    def ui(self) -> bpy.types.UILayout:
        """The panel's layout (always set while Blender draws the panel)."""
        layout = getattr(self, "layout", None)
        assert layout is not None
        return layout


class DREAMWALTZ_PT_create(_Tab, bpy.types.Panel):
    bl_label = "Create"

    def draw(self, context: Any) -> None:
        from .create import PREVIEW_IMAGE, eta_text, is_active, status_text

        layout = self.ui()
        settings = context.scene.dreamwaltz_create
        progress = context.window_manager.dreamwaltz_progress
        col = layout.column()
        col.prop(settings, "prompt", text="")
        col.prop(settings, "negative_prompt", text="Avoid")
        row = col.row()
        row.prop(settings, "recipe", text="")
        if settings.recipe == "fast":
            row.prop(settings, "preset", text="")
        row.prop(settings, "expression", text="Expressions")
        col.prop(settings, "run_folder")
        prefs = session.addon_preferences(context)
        if prefs is not None:
            col.label(text=f"Models: {prefs.sd_model or '?'} + {prefs.controlnet or '?'}", icon="PREFERENCES")
        running = is_active(progress)
        row = layout.row(align=True)
        if running:
            row.operator("dreamwaltz.cancel_create", icon="CANCEL")
        else:
            row.operator("dreamwaltz.create_avatar", icon="PLAY")
            row.operator("dreamwaltz.create_avatar", text="Resume", icon="RECOVER_LAST").resume = True
        status = status_text(progress)
        if status:
            layout.label(text=status, icon="TIME")
        if progress.total:
            stage = f"{progress.stage} ({progress.stage_index + 1}/{progress.stages})" if progress.stages \
                else progress.stage
            text = (f"{progress.recipe} {stage} {progress.step}/{progress.total}  loss {progress.loss:.3g}  "
                    f"ETA {eta_text(progress.eta)}").strip()
            layout.progress(factor=progress.step / max(progress.total, 1), text=text)
        image = bpy.data.images.get(PREVIEW_IMAGE)
        if image is not None and image.preview is not None:
            layout.template_icon(icon_value=image.preview.icon_id, scale=8.0)
        if progress.state == "done":
            layout.operator("dreamwaltz.add_created", icon="ADD")
        if progress.message:
            row = layout.row()
            row.label(text=progress.message.splitlines()[0], icon="ERROR" if progress.state == "failed" else "INFO")
            if progress.state == "failed":
                row.operator("dreamwaltz.create_error", text="", icon="INFO")


class DREAMWALTZ_PT_create_advanced(_Tab, bpy.types.Panel):
    bl_label = "Advanced"
    bl_parent_id = "DREAMWALTZ_PT_create"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: Any) -> None:
        settings = context.scene.dreamwaltz_create
        col = self.ui().column()
        col.prop(settings, "seed")
        col.prop(settings, "steps")


class DREAMWALTZ_PT_avatar(_Tab, bpy.types.Panel):
    bl_label = "Avatar"

    def draw(self, context: Any) -> None:
        layout = self.ui()
        layout.operator("dreamwaltz.add_avatar", icon="ARMATURE_DATA")
        layout.operator("dreamwaltz.import_ply", icon="POINTCLOUD_DATA")
        arm = active_rig(context)
        if arm is None:
            layout.label(text="No avatar selected", icon="INFO")
            return
        box = layout.box()
        box.label(text=arm.name, icon="OUTLINER_OB_ARMATURE")
        box.label(text=str(arm[AVATAR_KEY]))
        if EXPRESSION_KEY in arm:
            box.label(text="Expression")
            col = box.column(align=True)
            for i in range(len(arm[EXPRESSION_KEY])):
                col.prop(arm, f'["{EXPRESSION_KEY}"]', index=i, text=f"{i}")


class DREAMWALTZ_PT_shape(_Tab, bpy.types.Panel):
    bl_label = "Shape"
    bl_parent_id = "DREAMWALTZ_PT_avatar"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return active_rig(context) is not None

    def draw(self, context: Any) -> None:
        from .shape import is_edited

        arm = active_rig(context)
        layout = self.ui()
        shape = arm.dreamwaltz_shape
        col = layout.column(align=True)
        col.prop(shape, "height")
        col.prop(shape, "weight")
        col = layout.column(align=True)
        for i in range(len(shape.betas)):
            col.prop(shape, "betas", index=i, text=f"Beta {i}")
        row = layout.row()
        row.operator("dreamwaltz.reset_shape", icon="LOOP_BACK")
        row.enabled = is_edited(arm)
        if any(abs(b) >= 4.999 for b in shape.betas):
            layout.label(text="Clamped at ±5: the body model is not meaningful beyond", icon="ERROR")


class DREAMWALTZ_PT_motion(_Tab, bpy.types.Panel):
    bl_label = "Motion"

    def draw(self, context: Any) -> None:
        layout = self.ui()
        layout.enabled = active_rig(context) is not None
        layout.operator("dreamwaltz.import_motion", icon="ACTION")
        scene = context.scene
        layout.label(text=f"Scene: {scene.render.fps / scene.render.fps_base:.3g} fps, "
                          f"frames {scene.frame_start}-{scene.frame_end}")


class DREAMWALTZ_PT_render(_Tab, bpy.types.Panel):
    bl_label = "Render & Composite"

    def draw(self, context: Any) -> None:
        from .scene_composite import companion
        from .viewport import overlay_error

        layout = self.ui()
        scene = context.scene
        avatars = companion(scene)
        if avatars is not None:
            layout.label(text=f"Meshes: {scene.render.engine.replace('BLENDER_', '').title()}, "
                              f"avatars: DreamWaltz ({avatars.name})", icon="SCENE_DATA")
        elif scene.render.engine != "DREAMWALTZ":
            layout.operator("dreamwaltz.use_engine", icon="RENDER_STILL")
        layout.operator("dreamwaltz.render_with_scene", icon="SCENE_DATA")
        layout.operator("dreamwaltz.setup_plate", icon="FILE_MOVIE")
        layout.operator("dreamwaltz.import_reenactment", icon="CAMERA_DATA")
        layout.prop(scene.dreamwaltz_viewport, "overlay")
        error = overlay_error()
        if error:
            layout.label(text=f"Overlay stopped: {error}"[:120], icon="ERROR")
        client = session._state["client"]
        box = layout.box()
        if client is not None and client.hello:
            box.label(text=f"Backend: {client.hello.get('rasterizer', '?')} rasterizer on "
                           f"{client.hello.get('device', {}).get('name', '?')}")
            box.label(text=f"Python: {client.python} ({client.python_source})")
        else:
            box.label(text="Backend: starts with the first action")
        box.operator("dreamwaltz.restart_backend", icon="FILE_REFRESH")


CLASSES = (DREAMWALTZ_PT_create, DREAMWALTZ_PT_create_advanced, DREAMWALTZ_PT_avatar, DREAMWALTZ_PT_shape, DREAMWALTZ_PT_motion, DREAMWALTZ_PT_render)
