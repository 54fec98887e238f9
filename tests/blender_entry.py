"""Runs one test script inside real Blender (the bpy module) with the add-on enabled.

Usage: python tests/blender_entry.py SCRIPT RESULT_JSON. The script gets `result` (a dict it
fills; written as JSON at the end), `ROOT` and `scene_camera` in its globals. Kept out of the pytest process so
that Blender and torch never share a process, as in real use.
"""

import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402  (bpy first: it puts Blender's own modules such as addon_utils on the path)
import addon_utils  # noqa: E402



def scene_camera(location, rotation, size=None, lens=None):
    """A new camera, made the scene's, at `location` with Euler `rotation`; optionally the
    render size (width, height) and the focal length in mm."""
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.location, cam.rotation_euler = location, rotation
    if size is not None:
        scene.render.resolution_x, scene.render.resolution_y = size
    if lens is not None:
        cam.data.lens = lens
    return cam


script, out = sys.argv[1], sys.argv[2]
result: dict = {}
try:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if not os.environ.get("DREAMWALTZ_TEST_NO_REPO_ADDON"):
        mod = addon_utils.enable("dreamwaltz_blender", default_set=True, handle_error=None)
        if mod is None:
            raise RuntimeError("the add-on did not enable")
    code = compile(Path(script).read_text(), script, "exec")
    exec(code, {"result": result, "ROOT": ROOT, "bpy": bpy, "scene_camera": scene_camera,
                "__name__": "__blender_test__"})
    result.setdefault("ok", True)
except BaseException:
    result["ok"] = False
    result["traceback"] = traceback.format_exc()
finally:
    try:
        import dreamwaltz_blender.session as session

        session.shutdown()
    except Exception:
        pass
    Path(out).write_text(json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
