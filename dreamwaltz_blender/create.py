"""Create: text in, avatar out. The training job runs in the backend; Blender stays responsive.

The run's settings and folder live on the scene (saved with the .blend), so Resume works after
Blender or the backend restarts; progress (stage, step, loss, ETA, preview) lives on the window
manager and is refreshed from the backend's events by a `bpy.app.timers` function.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import session
from .client import BackendError

PREVIEW_IMAGE = "DreamWaltz Preview"
FINAL_EVENTS = ("job_done", "job_failed", "job_cancelled")


class DreamWaltzCreateSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", default="a chef dressed in white")  # type: ignore[valid-type]
    negative_prompt: StringProperty(  # type: ignore[valid-type]
        name="Negative Prompt", default="", description="What to avoid (empty: the method's default)")
    expression: BoolProperty(  # type: ignore[valid-type]
        name="Expression Control", default=False, description="Mesh-bound face, trained with expressions")
    recipe: EnumProperty(  # type: ignore[valid-type]
        name="Recipe", default="fast",
        items=[("fast", "Fast", "Ours: 4 views per iteration, minutes on one GPU (the preset sets its length)"),
               ("dreamwaltz-g", "DreamWaltz-G", "The published recipe: a NeRF stage, then three 3DGS stages of "
                                                "one view per iteration (about 30,000 iterations)")])
    preset: EnumProperty(  # type: ignore[valid-type]
        name="Quality", default="default",
        items=[("draft", "Draft", "1200 iterations, 60k Gaussians (about 3 min on one H100-class GPU)"),
               ("default", "Default", "3000 iterations, 100k Gaussians (about 6 min on one H100-class GPU)"),
               ("high", "High", "6000 iterations, 150k Gaussians (about 12 min on one H100-class GPU)")])
    steps: IntProperty(name="Iterations", default=0, min=0,  # type: ignore[valid-type]
                       description="Override the preset's iteration count (0: the preset's)")
    seed: IntProperty(name="Seed", default=0, min=0)  # type: ignore[valid-type]
    run_folder: StringProperty(name="Run Folder", subtype="DIR_PATH",  # type: ignore[valid-type]
                               description="Where checkpoints, previews and the avatar go (empty: the cache folder)")


class DreamWaltzCreateProgress(bpy.types.PropertyGroup):
    job: IntProperty(default=-1)  # type: ignore[valid-type]
    state: StringProperty(default="")  # type: ignore[valid-type]
    stage: StringProperty(default="")  # type: ignore[valid-type]
    recipe: StringProperty(default="")  # type: ignore[valid-type]
    stage_index: IntProperty(default=0)  # type: ignore[valid-type]
    stages: IntProperty(default=0)  # type: ignore[valid-type]
    step: IntProperty(default=0)  # type: ignore[valid-type]
    total: IntProperty(default=0)  # type: ignore[valid-type]
    loss: FloatProperty(default=0.0)  # type: ignore[valid-type]
    eta: FloatProperty(default=0.0)  # type: ignore[valid-type]
    message: StringProperty(default="")  # type: ignore[valid-type]
    avatar: StringProperty(default="", subtype="DIR_PATH")  # type: ignore[valid-type]
    out: StringProperty(default="", subtype="DIR_PATH")  # type: ignore[valid-type]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "avatar"


def run_folder(context: Any) -> str:
    settings = context.scene.dreamwaltz_create
    if settings.run_folder:
        return bpy.path.abspath(settings.run_folder).rstrip(os.sep)
    prefs = session.addon_preferences(context)
    base = bpy.path.abspath(prefs.cache_dir) if prefs is not None and prefs.cache_dir else \
        os.path.dirname(session.backend_env_dir())
    recipe = "" if settings.recipe == "fast" else f"-{settings.recipe}"
    return os.path.join(base, "runs", f"{_slug(settings.prompt)}{recipe}-{settings.seed}")


def job_params(context: Any, resume: bool) -> dict:
    settings = context.scene.dreamwaltz_create
    prefs = session.addon_preferences(context)
    params: dict[str, Any] = {"out": run_folder(context), "resume": resume, "recipe": settings.recipe,
                              "preset": settings.preset, "expression": settings.expression, "seed": settings.seed}
    if settings.prompt.strip():
        params["prompt"] = settings.prompt.strip()
    if settings.steps:
        params["steps"] = settings.steps
    if settings.negative_prompt.strip():
        params["sds"] = {"negative_prompt": settings.negative_prompt.strip()}
    if prefs is not None:
        if prefs.sd_model:
            params["sd_model"] = prefs.sd_model
        if prefs.controlnet:
            params["controlnet"] = prefs.controlnet
        if prefs.tiny_encoder.strip():
            params["tiny_encoder"] = prefs.tiny_encoder.strip()
            params["sds"] = dict(params.get("sds", {}), encoder="tiny")
        if prefs.compile_models:
            params["compile"] = True
        params["allow_download"] = bool(bpy.app.online_access)
    return params


def handle_event(progress: Any, event: dict) -> None:
    """Fold one backend event into the progress properties (and the preview image)."""
    if event.get("job") != progress.job and event.get("event") != "backend_died":
        return
    kind = event.get("event")
    if kind == "job_progress":
        progress.state = "running"
        progress.stage = str(event.get("stage") or "")
        progress.recipe = str(event.get("recipe") or "")
        progress.stage_index = int(event.get("stage_index") or 0)
        progress.stages = len(event.get("stages") or ())
        progress.step = int(event.get("step") or 0)
        progress.total = int(event.get("total") or 0)
        progress.loss = float(event.get("loss") or 0.0)
        progress.eta = float(event.get("eta") or 0.0)
        if event.get("preview"):
            _show_preview(str(event["preview"]))
    elif kind in ("job_started", "job_queued"):
        progress.state = kind.split("_")[1]
        progress.stage = ""
    elif kind == "job_done":
        progress.state = "done"
        result = event.get("result") or {}
        progress.avatar = str(result.get("avatar") or "")
        progress.message = f"done: {progress.avatar}"
        if progress.avatar:
            _show_preview(os.path.join(progress.avatar, "preview.png"))
    elif kind == "job_cancelled":
        progress.state = "cancelled"
        progress.message = "cancelled; Resume continues from the last checkpoint"
    elif kind in ("job_failed", "backend_died"):
        progress.state = "failed"
        error = event.get("error") or {}
        progress.message = str(error.get("message") if isinstance(error, dict) else error)


def _show_preview(path: str) -> None:
    if not os.path.exists(path):
        return
    image = bpy.data.images.get(PREVIEW_IMAGE)
    if image is None:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = PREVIEW_IMAGE
    else:
        image.filepath = path
        image.reload()
    image.preview_ensure()


def _pump() -> float | None:
    """Timer: move backend events into the UI until the job ends."""
    wm: Any = bpy.context.window_manager
    progress = wm.dreamwaltz_progress
    client = session._state["client"]
    if client is None or progress.job < 0:
        return None
    for event in client.poll_events():
        handle_event(progress, event)
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
    return None if progress.state in ("done", "failed", "cancelled") else 0.5


def start(context: Any, resume: bool) -> dict:
    client = session.client(context)
    progress = context.window_manager.dreamwaltz_progress
    params = job_params(context, resume)
    reply = client.request("job_start", kind="train", params=params)
    progress.job = int(reply["job"])
    progress.state, progress.step, progress.total, progress.message = "queued", 0, 0, ""
    progress.out, progress.avatar = params["out"], ""
    if bpy.app.background:  # scripts and render nodes: block until the job ends
        final = client.wait_job(progress.job)
        for event in client.poll_events():
            handle_event(progress, event)
        handle_event(progress, final)
    elif not bpy.app.timers.is_registered(_pump):
        bpy.app.timers.register(_pump, first_interval=0.2)
    return reply


class DREAMWALTZ_OT_create_avatar(bpy.types.Operator):
    """Create an avatar from the prompt (score distillation on the backend's GPU)"""

    bl_idname = "dreamwaltz.create_avatar"
    bl_label = "Create"
    resume: BoolProperty(default=False, options={"HIDDEN"})  # type: ignore[valid-type]

    def execute(self, context: Any) -> set[str]:
        settings = context.scene.dreamwaltz_create
        if not self.resume and not settings.prompt.strip():
            self.report({"ERROR"}, "type a prompt first")
            return {"CANCELLED"}
        try:
            start(context, self.resume)
        except BackendError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        progress = context.window_manager.dreamwaltz_progress
        if progress.state == "failed":
            self.report({"ERROR"}, progress.message)
            return {"CANCELLED"}
        return {"FINISHED"}


class DREAMWALTZ_OT_cancel_create(bpy.types.Operator):
    """Stop the training job; it saves a checkpoint that Resume continues from"""

    bl_idname = "dreamwaltz.cancel_create"
    bl_label = "Cancel"

    def execute(self, context: Any) -> set[str]:
        progress = context.window_manager.dreamwaltz_progress
        if progress.job >= 0:
            try:
                session.client(context).request("job_cancel", job=progress.job)
            except BackendError as exc:
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
        return {"FINISHED"}


class DREAMWALTZ_OT_add_created(bpy.types.Operator):
    """Add the created avatar to the scene"""

    bl_idname = "dreamwaltz.add_created"
    bl_label = "Add to Scene"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context: Any) -> set[str]:
        progress = context.window_manager.dreamwaltz_progress
        folder = progress.avatar or os.path.join(run_folder(context), "avatar")
        ops: Any = bpy.ops
        return ops.dreamwaltz.add_avatar(filepath=folder)


ACTIVE_STATES = ("queued", "started", "running")


def is_active(progress: Any) -> bool:
    """A job the user can cancel: from the moment it is queued, through model loading,
    downloading and compiling, to its last step."""
    return progress.state in ACTIVE_STATES


def status_text(progress: Any) -> str:
    """What the job is doing before its steps start (the panel shows steps as a bar)."""
    if progress.state == "queued":
        return "Queued: waiting for the running job"
    if progress.state == "started":
        return "Starting"
    if progress.state == "running" and not progress.total:
        return (progress.stage or "working").capitalize()
    return ""


def error_lines(message: str, width: int = 70) -> list[str]:
    """The whole error, wrapped for a popup (backend errors span several lines)."""
    import textwrap

    lines: list[str] = []
    for paragraph in message.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, width, subsequent_indent="  ") or [""])
    return lines


class DREAMWALTZ_OT_create_error(bpy.types.Operator):
    """Show the whole error of the last Create (in a popup; printed in the Info log too)"""

    bl_idname = "dreamwaltz.create_error"
    bl_label = "Error Details"

    @classmethod
    def poll(cls, context: Any) -> bool:
        if not context.window_manager.dreamwaltz_progress.message:
            getattr(cls, "poll_message_set")("Create has not failed")
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        message = context.window_manager.dreamwaltz_progress.message
        self.report({"ERROR"}, message)
        if not bpy.app.background:
            lines = error_lines(message)

            def draw(menu: Any, _context: Any) -> None:
                col = menu.layout.column(align=True)
                for line in lines:
                    col.label(text=line)

            context.window_manager.popup_menu(draw, title="DreamWaltz: Create failed", icon="ERROR")
        return {"FINISHED"}


def eta_text(seconds: float) -> str:
    return time.strftime("%M:%S", time.gmtime(max(0.0, seconds))) if seconds < 3600 else f"{seconds / 3600:.1f} h"


CLASSES = (DreamWaltzCreateSettings, DreamWaltzCreateProgress, DREAMWALTZ_OT_create_avatar,
           DREAMWALTZ_OT_cancel_create, DREAMWALTZ_OT_add_created, DREAMWALTZ_OT_create_error)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    setattr(bpy.types.Scene, "dreamwaltz_create", PointerProperty(type=DreamWaltzCreateSettings))
    setattr(bpy.types.WindowManager, "dreamwaltz_progress", PointerProperty(type=DreamWaltzCreateProgress))


def unregister() -> None:
    if bpy.app.timers.is_registered(_pump):
        bpy.app.timers.unregister(_pump)
    delattr(bpy.types.WindowManager, "dreamwaltz_progress")
    delattr(bpy.types.Scene, "dreamwaltz_create")
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
