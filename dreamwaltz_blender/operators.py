"""Operators: every action of the panels, scriptable as `bpy.ops.dreamwaltz.*`.

Each reports one clear message on failure (naming the file and the problem) and changes
nothing in the scene then; successful actions are undoable.
"""

from __future__ import annotations

import os
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import session
from .client import BackendError
from .paths import stored_path
from .rig import AVATAR_KEY, OBJECT_KEY, avatar_path, build_rig, is_avatar_rig
from .rollback import Change

USER_ERRORS = (BackendError, ValueError, OSError, RuntimeError)


def active_rig(context: Any) -> Any:
    obj = context.active_object
    if is_avatar_rig(obj):
        return obj
    if obj is not None and obj.parent is not None and is_avatar_rig(obj.parent):
        return obj.parent
    return None


class Reporting:
    """Run `apply` inside a `rollback.Change` (`self.change`): a failure puts the scene back
    as it was, and a user error becomes one report instead of a traceback."""

    report: Any  # bpy.types.Operator.report, from the operator class this is mixed into
    change: Change

    def apply(self, context: Any) -> set[str]:
        raise NotImplementedError

    def execute(self, context: Any) -> set[str]:
        self.change = Change(context)
        try:
            return self.apply(context)
        except USER_ERRORS as exc:
            self.change.undo()
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except BaseException:
            self.change.undo()
            raise


class _FromFile(Reporting):
    """An operator that asks for a file or folder first when run from the UI."""

    def invoke(self, context: Any, event: Any) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


class NeedsRig:
    """Greyed out, with the reason in the tooltip, until an avatar rig is active."""

    @classmethod
    def poll(cls, context: Any) -> bool:
        if active_rig(context) is None:
            getattr(cls, "poll_message_set")("Select an avatar rig first (Add Avatar creates one)")
            return False
        return True


def require_rig(context: Any) -> Any:
    arm = active_rig(context)
    if arm is None:
        raise ValueError("select an avatar rig first (Add Avatar creates one)")
    return arm


class DREAMWALTZ_OT_add_avatar(_FromFile, bpy.types.Operator):
    """Add an avatar: an SMPL-X rig with its body shape, a proxy mesh, and the Gaussians bound to it"""

    bl_idname = "dreamwaltz.add_avatar"
    bl_label = "Add Avatar"
    bl_options = {"REGISTER", "UNDO"}
    filepath: StringProperty(name="Avatar Folder", subtype="DIR_PATH")  # type: ignore[valid-type]

    def apply(self, context: Any) -> set[str]:
        path = bpy.path.abspath(self.filepath).rstrip(os.sep)
        if not os.path.isdir(path):
            raise ValueError(f"the avatar folder {path} does not exist")
        meta = session.load("avatars", path, context)
        rig = session.client(context).rig(int(meta["avatar"]))
        name = meta.get("name") or os.path.basename(path)
        if name == "template":
            name = os.path.basename(path)
        if context.object is not None and context.object.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        arm = build_rig(context, name, rig, path)
        from . import shape

        shape.init_rig(arm, rig["betas"], shape._request(arm, betas=rig["betas"]))
        for obj in context.selected_objects:
            obj.select_set(False)
        arm.select_set(True)
        context.view_layer.objects.active = arm
        self.report({"INFO"}, f"added {name}: {meta['num_gaussians']:,} Gaussians on {rig['body_model']['name']}")
        self._render_with_scene(context)
        return {"FINISHED"}

    def _render_with_scene(self, context: Any) -> None:
        """A scene with meshes renders them with the avatar (Render with Scene)."""
        from . import scene_composite

        scene = context.scene
        if not scene_composite.scene_geometry(scene):
            return
        try:
            engine, other = scene_composite.render_with_scene(self.change, scene)
        except scene_composite.SceneCompositeError as exc:
            self.report({"WARNING"}, f"the avatar renders alone: {exc}")
            return
        self.report({"INFO"}, f"meshes render with {engine}, avatars with DreamWaltz (scene {other.name!r})")


UP_AXES = (("AUTO", "Auto", "The convention of the file's format: -Y for .ply and .splat captures (COLMAP), "
             "Y for .spz, glTF and DreamWaltz exports"),
           ("Y", "Y Up", "Y is up (DreamWaltz exports, .spz, glTF, most web viewers)"),
           ("NEG_Y", "-Y Up (COLMAP)", "Y points down: captures trained on COLMAP poses (INRIA, Brush, SuperSplat)"),
           ("Z", "Z Up", "Already Z-up like Blender"))
UP_ROTATIONS = {"y": (1.5707963267948966, 0.0, 0.0), "-y": (-1.5707963267948966, 0.0, 0.0), "z": (0.0, 0.0, 0.0)}


class DREAMWALTZ_OT_import_ply(_FromFile, bpy.types.Operator):
    """Import a 3DGS file (.ply, compressed .ply, .splat, .spz, .glb) as a static Gaussian object that renders together with avatars"""

    bl_idname = "dreamwaltz.import_ply"
    bl_label = "Import Gaussian Splats"
    bl_options = {"REGISTER", "UNDO"}
    filepath: StringProperty(name="Gaussian File", subtype="FILE_PATH")  # type: ignore[valid-type]
    filter_glob: StringProperty(default="*.ply;*.splat;*.spz;*.glb;*.gltf", options={"HIDDEN"})  # type: ignore[valid-type]
    up_axis: EnumProperty(name="Up Axis", items=UP_AXES, default="AUTO",  # type: ignore[valid-type]
                          description="Which axis of the file is up; the object is rotated to Blender's Z-up")

    def apply(self, context: Any) -> set[str]:
        path = bpy.path.abspath(self.filepath)
        reply = session.load("objects", path, context)
        lo, hi = reply["bounds"]["min"], reply["bounds"]["max"]
        corners = [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        edges = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]
        name = os.path.splitext(os.path.basename(path))[0]
        mesh = bpy.data.meshes.new(name)
        mesh.from_pydata(corners, edges, [])
        obj = bpy.data.objects.new(name, mesh)
        obj[OBJECT_KEY] = stored_path(path)
        obj["dreamwaltz_gaussians"] = int(reply["num_gaussians"])
        up = reply.get("up", "y") if self.up_axis == "AUTO" else {"Y": "y", "NEG_Y": "-y", "Z": "z"}[self.up_axis]
        obj.rotation_euler = UP_ROTATIONS.get(up, UP_ROTATIONS["y"])
        context.collection.objects.link(obj)
        sh = f", SH degree {reply['sh_degree']}" if reply.get("sh_degree") else ""
        self.report({"INFO"}, f"imported {reply['num_gaussians']:,} Gaussians from {os.path.basename(path)} "
                              f"({reply.get('format', 'ply')}{sh}, {up} up)")
        return {"FINISHED"}


class DREAMWALTZ_OT_import_motion(NeedsRig, _FromFile, bpy.types.Operator):
    """Import motion (AMASS, AIST++, Motion-X, TalkSHOW, DreamWaltz-G, ReEnact, TRAM) onto the active avatar"""

    bl_idname = "dreamwaltz.import_motion"
    bl_label = "Import Motion"
    bl_options = {"REGISTER", "UNDO"}
    filepath: StringProperty(name="Motion File", subtype="FILE_PATH")  # type: ignore[valid-type]
    target_fps: FloatProperty(name="Target FPS", default=0.0, min=0.0,  # type: ignore[valid-type]
                              description="Resample to this rate (0: the scene's frame rate)")
    use_source_fps: BoolProperty(name="Use Source Rate", default=False,  # type: ignore[valid-type]
                                 description="Set the scene to the motion's own frame rate instead of resampling")
    frame_start: IntProperty(name="Start Frame", default=-1,  # type: ignore[valid-type]
                             description="First frame of the motion (-1: the scene's start)")
    source_fps: FloatProperty(  # type: ignore[valid-type]
        name="Source FPS", default=0.0, min=0.0, max=1000.0,
        description="The file's own frame rate, for files that do not store one (0: the file's, else the "
                    "format's default; DreamWaltz-G's 265-column aist.npy is 60)")
    up_axis: EnumProperty(  # type: ignore[valid-type]
        name="Up Axis", default="AUTO",
        items=[("AUTO", "Automatic", "From the format, else read off the body (a standing body's up direction)"),
               ("Y", "Y Up", ""), ("Z", "Z Up", "AMASS and most motion capture"), ("-Y", "-Y Up", "OpenCV camera space"),
               ("-Z", "-Z Up", "")])

    def apply(self, context: Any) -> set[str]:
        from .motion_import import import_motion

        arm = require_rig(context)
        self.change.keep_scene(context.scene)
        self.change.keep_rig(arm)
        start = None if self.frame_start < 0 else self.frame_start
        motion = import_motion(context, arm, bpy.path.abspath(self.filepath), self.target_fps,
                               self.use_source_fps, start, self.source_fps or None,
                               None if self.up_axis == "AUTO" else self.up_axis)
        for note in motion.get("notes", []):
            self.report({"WARNING"}, f"{os.path.basename(self.filepath)}: {note}")
        self.report({"INFO"}, f"imported {motion['num_frames']} frames ({motion['format']}, "
                              f"{motion['source_fps']:g} -> {motion['fps']:g} fps, {motion['source_up_axis']} up)")
        return {"FINISHED"}


class DREAMWALTZ_OT_setup_plate(_FromFile, bpy.types.Operator):
    """Put a video or image sequence behind the avatars: camera background and compositor"""

    bl_idname = "dreamwaltz.setup_plate"
    bl_label = "Set Up Plate"
    bl_options = {"REGISTER", "UNDO"}
    filepath: StringProperty(name="Plate", subtype="FILE_PATH")  # type: ignore[valid-type]

    def apply(self, context: Any) -> set[str]:
        from .compositing import setup_plate

        self.change.keep_scene(context.scene)
        clip = setup_plate(context.scene, bpy.path.abspath(self.filepath))
        self.report({"INFO"}, f"plate {clip.name}: {clip.size[0]}x{clip.size[1]}, {clip.frame_duration} frames")
        return {"FINISHED"}


class DREAMWALTZ_OT_import_reenactment(NeedsRig, _FromFile, bpy.types.Operator):
    """A ready shot from a Motion-X-ReEnact clip or a TRAM result: camera, motion and plate"""

    bl_idname = "dreamwaltz.import_reenactment"
    bl_label = "Import Reenactment Shot"
    bl_options = {"REGISTER", "UNDO"}
    filepath: StringProperty(name="Clip JSON or TRAM Folder", subtype="FILE_PATH")  # type: ignore[valid-type]
    plate: StringProperty(name="Plate (inpainted video)", subtype="FILE_PATH")  # type: ignore[valid-type]

    def apply(self, context: Any) -> set[str]:
        from .motion_import import import_reenactment

        arm = require_rig(context)
        self.change.keep_scene(context.scene)
        self.change.keep_rig(arm)
        plate = bpy.path.abspath(self.plate) if self.plate else None
        motion = import_reenactment(context, arm, bpy.path.abspath(self.filepath), plate)
        self.report({"INFO"}, f"reenactment shot: {motion['num_frames']} frames with a keyed camera")
        return {"FINISHED"}


class DREAMWALTZ_OT_export_ply(NeedsRig, _FromFile, bpy.types.Operator):
    """Export the active avatar's Gaussians as a standard 3DGS .ply (Y-up, as SMPL-X)"""

    bl_idname = "dreamwaltz.export_ply"
    bl_label = "Export Gaussian PLY"
    filepath: StringProperty(name="PLY File", subtype="FILE_PATH")  # type: ignore[valid-type]
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})  # type: ignore[valid-type]
    pose: EnumProperty(  # type: ignore[valid-type]
        name="Pose", default="CANONICAL",
        items=[("CANONICAL", "Canonical", "The rest pose the avatar was trained in"),
               ("CURRENT", "Current Frame", "Posed as the rig is at the current frame (keys, IK, constraints)")])

    def invoke(self, context: Any, event: Any) -> set[str]:
        if not self.filepath:
            blend = bpy.data.filepath
            self.filepath = os.path.splitext(blend)[0] + ".ply" if blend else "avatar.ply"
        return super().invoke(context, event)

    def apply(self, context: Any) -> set[str]:
        import numpy as np

        from .rig import expression_values, local_rotations, skinning_transforms

        arm = require_rig(context)
        path = bpy.path.abspath(self.filepath)
        if not path.lower().endswith(".ply"):
            path += ".ply"
        fields: dict[str, Any] = {"avatar": session.avatar_handle(avatar_path(arm), context), "path": path}
        if self.pose == "CURRENT":
            evaluated = arm.evaluated_get(context.evaluated_depsgraph_get())
            to_rig = np.linalg.inv(np.array(evaluated.matrix_world, dtype=np.float64))
            fields.update(transforms=(to_rig @ skinning_transforms(evaluated)).tolist(),
                          local_rotations=local_rotations(evaluated).tolist(),
                          expression=expression_values(evaluated))
        reply = session.client(context).request("export_ply", **fields)
        self.report({"INFO"}, f"exported {reply['num_gaussians']:,} Gaussians ({'posed' if reply['posed'] else 'canonical'}) "
                              f"to {reply['path']}")
        return {"FINISHED"}


class DREAMWALTZ_OT_render_with_scene(Reporting, bpy.types.Operator):
    """Render the scene's meshes with its own engine and the avatars with DreamWaltz, merged by depth in the compositor; each avatar's proxy casts its shadow"""

    bl_idname = "dreamwaltz.render_with_scene"
    bl_label = "Render with Scene"
    bl_options = {"REGISTER", "UNDO"}
    engine: EnumProperty(  # type: ignore[valid-type]
        name="Meshes", default="SCENE",
        items=[("SCENE", "Scene's Engine", "The scene's own render engine (EEVEE if it is DreamWaltz)"),
               ("EEVEE", "EEVEE", "Render the meshes with EEVEE"),
               ("CYCLES", "Cycles", "Render the meshes with Cycles")])

    def apply(self, context: Any) -> set[str]:
        from . import scene_composite

        scene = context.scene
        engine, other = scene_composite.render_with_scene(self.change, scene, self.engine)
        self.report({"INFO"}, f"meshes render with {engine}, avatars with DreamWaltz (scene {other.name!r}), "
                              "merged by depth; motion blur is off")
        return {"FINISHED"}


class DREAMWALTZ_OT_use_engine(Reporting, bpy.types.Operator):
    """Render this scene with the DreamWaltz engine (the Gaussians alone: a scene set to render with its meshes goes back to that)"""

    bl_idname = "dreamwaltz.use_engine"
    bl_label = "Use DreamWaltz Renderer"
    bl_options = {"REGISTER", "UNDO"}

    def apply(self, context: Any) -> set[str]:
        from . import scene_composite

        scene = context.scene
        scene_composite.keep(self.change, scene)
        scene_composite.tear_down(scene)
        scene.render.engine = "DREAMWALTZ"
        context.view_layer.use_pass_z = True
        return {"FINISHED"}


class DREAMWALTZ_OT_restart_backend(bpy.types.Operator):
    """Stop the backend process; the next action starts a fresh one"""

    bl_idname = "dreamwaltz.restart_backend"
    bl_label = "Restart Backend"

    def execute(self, context: Any) -> set[str]:
        session.shutdown()
        return {"FINISHED"}


class DREAMWALTZ_OT_setup_backend(bpy.types.Operator):
    """Create a Python environment for the backend and install its pinned packages (asks first: it downloads up to a few GB)"""

    bl_idname = "dreamwaltz.setup_backend"
    bl_label = "Set Up Backend"

    _runner: Any = None
    _timer: Any = None

    @staticmethod
    def _offline_message() -> str | None:
        if bpy.app.online_access:
            return None
        return ("Blender is set to work offline: allow online access in Preferences > System > Network to download "
                "the backend's packages, or set 'Backend Python' to an interpreter that has torch")

    def invoke(self, context: Any, event: Any) -> set[str]:
        from pathlib import Path

        from .setup_env import confirmation, this_machine

        message = self._offline_message()
        if message:
            self.report({"ERROR"}, message)
            return {"CANCELLED"}
        text = confirmation(this_machine(), Path(session.backend_env_dir()))
        return context.window_manager.invoke_confirm(self, event, title="Set Up Backend", message=text,
                                                     confirm_text="Download and Install", icon="IMPORT")

    def execute(self, context: Any) -> set[str]:
        from pathlib import Path

        from .client import backend_root
        from .setup_env import SetupRunner, plan

        message = self._offline_message()
        if message:
            self.report({"ERROR"}, message)
            return {"CANCELLED"}
        venv = Path(session.backend_env_dir(create=True))
        requirements = backend_root() / "backend" / "requirements.txt"
        log = venv.parent / "setup.log"
        self._runner = SetupRunner(plan(venv, requirements), log, cwd=venv.parent).start()
        wm = context.window_manager
        if bpy.app.background:
            self._runner.wait()
            return self._finish(context)
        wm.progress_begin(0, 100)
        self._timer = wm.event_timer_add(0.5, window=context.window)
        wm.modal_handler_add(self)
        self.report({"INFO"}, f"setting up the backend in {venv} (log: {log})")
        return {"RUNNING_MODAL"}

    def modal(self, context: Any, event: Any) -> set[str]:
        runner = self._runner
        if event.type == "ESC":
            runner.cancel()
        if event.type != "TIMER" and event.type != "ESC":
            return {"PASS_THROUGH"}
        context.window_manager.progress_update(int(100 * runner.progress))
        context.workspace.status_text_set(f"DreamWaltz set-up: {runner.label} (Esc cancels)")
        if not runner.done:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        context.workspace.status_text_set(None)
        return self._finish(context)

    def _finish(self, context: Any) -> set[str]:
        runner = self._runner
        if runner.cancelled:
            self.report({"WARNING"}, "backend set-up cancelled")
            return {"CANCELLED"}
        if runner.error:
            self.report({"ERROR"}, runner.error)
            return {"CANCELLED"}
        for note in runner.notes:
            self.report({"WARNING"}, note)
        session.shutdown()  # the next action starts the new environment's backend
        self.report({"INFO"}, "backend set up: the next DreamWaltz action uses it")
        return {"FINISHED"}


CLASSES = (DREAMWALTZ_OT_add_avatar, DREAMWALTZ_OT_import_ply, DREAMWALTZ_OT_import_motion,
           DREAMWALTZ_OT_setup_plate, DREAMWALTZ_OT_import_reenactment, DREAMWALTZ_OT_export_ply,
           DREAMWALTZ_OT_render_with_scene, DREAMWALTZ_OT_use_engine,
           DREAMWALTZ_OT_restart_backend, DREAMWALTZ_OT_setup_backend)
__all__ = ["CLASSES", "NeedsRig", "active_rig", "AVATAR_KEY"]
