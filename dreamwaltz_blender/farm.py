"""Farm safety: what a shot needs on a render worker (`dreamwaltz.farm_check`), the path map
applied to the shot's own file paths, and rendering a chunk of frames that is safe to retry.

    blender -b shot.blend --python-exit-code 1 --python-expr "import bpy; bpy.ops.dreamwaltz.farm_check()"

lists every external file (avatars, Gaussian PLYs, plates and other images, linked .blend files,
the body model, the backend's interpreter) as this machine resolves it, and fails (status 1
with --python-exit-code) when any is missing, is relative to the working folder rather than
the .blend, or is not what it should be. Run it on a worker, or on the artist's machine with
the workers' $DREAMWALTZ_PATH_MAP, before submitting. `backend/farm/render_chunk.py` runs it
before every chunk.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import bpy
from bpy.props import StringProperty

from . import session
from .client import resolve_python
from .compositing import PLATE_KEY
from .path_map import PathMapError, current, is_foreign_absolute, map_path
from .rig import AVATAR_KEY, OBJECT_KEY, is_avatar_rig

AVATAR_FILES = ("avatar.json", "gaussians.safetensors")
ENV_SMPLX = "DREAMWALTZ_SMPLX"


class FarmError(RuntimeError):
    pass


@dataclass
class ExternalFile:
    kind: str            # avatar, gaussian ply, plate, image, linked blend, body model, backend python
    owner: str           # what in the shot uses it
    path: str            # as the shot (or the preferences) store it
    resolved: str        # where this machine finds it
    problem: str | None = None


def _resolve(path: str, library: Any = None) -> tuple[str, str | None]:
    """(where this machine finds `path`, a problem that stops a worker resolving it). `//` paths
    are relative to the .blend (or the library a linked datablock comes from); others go through
    $DREAMWALTZ_PATH_MAP."""
    if path.startswith("//"):
        if library is None and not bpy.data.filepath:
            return path, "relative to the .blend, but the shot is not saved"
        return os.path.normpath(bpy.path.abspath(path, library=library)), None
    resolved = map_path(path, current())
    if not os.path.isabs(resolved):
        hint = " (another system's path: map it with $DREAMWALTZ_PATH_MAP)" if is_foreign_absolute(resolved) else ""
        return resolved, f"not an absolute path here{hint}; a worker resolves it against its own working folder"
    return resolved, None


def _file(kind: str, owner: str, path: str, folder: bool = False, library: Any = None) -> ExternalFile:
    resolved, problem = _resolve(path, library)
    if problem is None:
        if folder and not os.path.isdir(resolved):
            problem = "does not exist" if not os.path.exists(resolved) else "is not a folder"
        elif not folder and not os.path.isfile(resolved):
            problem = "does not exist" if not os.path.exists(resolved) else "is not a file"
    return ExternalFile(kind, owner, path, resolved, problem)


def _avatar(obj: Any) -> tuple[ExternalFile, dict | None]:
    entry = _file("avatar", obj.name, str(obj[AVATAR_KEY]), folder=True, library=_library(obj))
    if entry.problem:
        return entry, None
    missing = [n for n in AVATAR_FILES if not os.path.isfile(os.path.join(entry.resolved, n))]
    if missing:
        entry.problem = f"is not an avatar folder ({', '.join(missing)} missing)"
        return entry, None
    try:
        with open(os.path.join(entry.resolved, "avatar.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        entry.problem = f"avatar.json cannot be read: {exc}"
        return entry, None
    return entry, meta.get("body_model") if isinstance(meta, dict) else None


def _library(block: Any) -> Any:
    return getattr(getattr(block, "original", block), "library", None)


def _datablock_files() -> list[ExternalFile]:
    files = []
    for clip in bpy.data.movieclips:
        if clip.users and clip.filepath:
            kind = "plate" if clip.get(PLATE_KEY) else "movie clip"
            files.append(_file(kind, clip.name, clip.filepath, library=clip.library))
    for image in bpy.data.images:
        if image.users and image.source in {"FILE", "SEQUENCE", "MOVIE"} and image.packed_file is None \
                and image.filepath:
            kind = "plate" if image.get(PLATE_KEY) else "image"
            files.append(_file(kind, image.name, image.filepath, library=image.library))
    for lib in bpy.data.libraries:
        files.append(_file("linked blend", lib.name, lib.filepath))
    return files


def _body_model(context: Any, needs_smplx: list[tuple[str, dict]]) -> ExternalFile:
    prefs = session.addon_preferences(context)
    configured = (getattr(prefs, "smplx_file", "") if prefs is not None else "") or os.environ.get(ENV_SMPLX, "")
    owners = ", ".join(name for name, _ in needs_smplx) or "the scene"
    if configured:
        return _file("body model", owners, configured)
    if needs_smplx:
        names = sorted({str(model.get("name")) for _, model in needs_smplx})
        return ExternalFile("body model", owners, "", "", f"the avatars were made on SMPL-X ({', '.join(names)}); set "
                            f"the SMPL-X file in the add-on preferences or ${ENV_SMPLX} on the worker")
    return ExternalFile("body model", owners, "", "open template (generated on each worker)")


def _backend_python(context: Any) -> ExternalFile:
    prefs = session.addon_preferences(context)
    python, source = resolve_python((getattr(prefs, "python", "") if prefs is not None else "") or None,
                                    session.backend_env_dir())
    entry = _file("backend python", source, python)
    if entry.problem is None and not os.access(entry.resolved, os.X_OK):
        entry.problem = "is not executable"
    return entry


def shot_files(context: Any) -> list[ExternalFile]:
    """Every external file the current scene needs to render, as this machine resolves it."""
    scene = context.scene
    files: list[ExternalFile] = []
    needs_smplx: list[tuple[str, dict]] = []
    gaussians = False
    for obj in scene.objects:
        if obj.hide_render:
            continue
        if is_avatar_rig(obj):
            gaussians = True
            entry, model = _avatar(obj)
            files.append(entry)
            if model and model.get("kind") == "smplx":
                needs_smplx.append((obj.name, model))
        elif OBJECT_KEY in obj:
            gaussians = True
            files.append(_file("gaussian ply", obj.name, str(obj[OBJECT_KEY]), library=_library(obj)))
    files += _datablock_files()
    if gaussians or scene.render.engine == "DREAMWALTZ":
        files.append(_body_model(context, needs_smplx))
        files.append(_backend_python(context))
    return files


def format_files(files: list[ExternalFile]) -> str:
    lines = []
    for f in files:
        status = "MISSING" if f.problem else "ok"
        lines.append(f"{status:<8}{f.kind:<15}{f.resolved or f.path}  [{f.owner}]" + (f": {f.problem}" if f.problem else ""))
    return "\n".join(lines)


def apply_path_map(data: Any) -> list[tuple[str, str]]:
    """Point the shot's movie clips, images and linked .blend files at this machine's copies
    ($DREAMWALTZ_PATH_MAP), in memory only; returns the (old, new) paths changed."""
    if not current():
        return []
    changed = []
    for block in list(data.movieclips) + list(data.images) + list(data.libraries):
        old = getattr(block, "filepath", "")
        if not old or old.startswith("//") or getattr(block, "packed_file", None) is not None:
            continue
        new = map_path(old, current())
        if new != old:
            block.filepath = new
            if hasattr(block, "reload"):
                block.reload()
            changed.append((old, new))
    return changed


def render_frames(scene: Any, frames: list[int], out: str | None = None) -> tuple[list[str], list[str]]:
    """Render `frames` as Render Animation would, skipping frames already written; each frame is
    written to a temporary name and renamed, so none is ever half-written. Returns (written, skipped)."""
    r = scene.render
    if out:
        r.filepath = out
    if r.is_movie_format:
        raise FarmError(f"the shot writes a movie ({r.image_settings.file_format}); farm chunks write image frames: "
                        "choose an image format (PNG, OpenEXR) and make the movie from the frames")
    written, skipped = [], []
    for frame in frames:
        path = bpy.path.abspath(r.frame_path(frame=frame))
        if os.path.exists(path):
            skipped.append(path)
            continue
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.partial")):
            os.unlink(stale)  # left by a task that was killed while writing this frame
        scene.frame_set(frame)
        bpy.ops.render.render()
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.partial")
        try:
            bpy.data.images["Render Result"].save_render(tmp, scene=scene)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(path)
    return written, skipped


class DREAMWALTZ_OT_farm_check(bpy.types.Operator):
    """List every external file this shot needs on a render farm worker; fail on any that does not resolve here"""

    bl_idname = "dreamwaltz.farm_check"
    bl_label = "Farm Check"
    bl_options = {"REGISTER"}
    report_path: StringProperty(  # type: ignore[valid-type]
        name="Report", subtype="FILE_PATH", description="Also write the list as JSON to this file")

    def execute(self, context: Any) -> set[str]:
        try:
            files = shot_files(context)
        except PathMapError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        print(format_files(files))
        if self.report_path:
            target = bpy.path.abspath(self.report_path)
            tmp = f"{target}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump([asdict(x) for x in files], f, indent=1)
            os.replace(tmp, target)
        bad = [f for f in files if f.problem]
        if bad:
            self.report({"ERROR"}, f"farm check: {len(bad)} of {len(files)} files the shot needs do not resolve here: "
                        + "; ".join(f"{f.kind} {f.resolved or f.path} ({f.problem})" for f in bad))
            return {"CANCELLED"}
        self.report({"INFO"}, f"farm check: all {len(files)} files the shot needs resolve here")
        return {"FINISHED"}


CLASSES = (DREAMWALTZ_OT_farm_check,)
