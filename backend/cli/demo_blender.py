"""The Blender half of the demo: run in its own process with the `bpy` module.

    python -m backend.cli.demo_blender --avatar DIR --motion FILE --plate FIRST_FRAME_OR_VIDEO
        --camera CAMERA.json --out FRAMES_DIR [--fps F]

It does what a user does in the add-on: register it, Add Avatar, Import Motion, Set Up Plate,
switch to the DreamWaltz engine, Render Animation (engine + compositor + PNG files). It prints
one JSON line with the time each part took. torch never loads in this process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _camera(scene, camera_file: Path) -> None:
    import bpy
    import mathutils
    import numpy as np

    from dreamwaltz_blender.camera import apply_opencv
    from dreamwaltz_blender.rig import Y_UP_TO_Z_UP

    spec = json.loads(camera_file.read_text())
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    to_blender = np.eye(4)
    to_blender[:3, :3] = np.array(mathutils.Euler(Y_UP_TO_Z_UP).to_matrix())
    w2c = np.asarray(spec["world_to_camera"]) @ np.linalg.inv(to_blender)
    apply_opencv(cam, scene, w2c, np.asarray(spec["K"]), spec["width"], spec["height"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.cli.demo_blender", description=__doc__)
    for name in ("--avatar", "--motion", "--plate", "--camera", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--fps", type=float, default=30.0)
    args = parser.parse_args(argv)

    timings = {}
    t = time.perf_counter()
    import bpy

    sys.path.insert(0, str(ROOT))
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    if addon_utils.enable("dreamwaltz_blender", default_set=True, handle_error=None) is None:
        raise SystemExit("error: the DreamWaltz add-on did not enable")
    from dreamwaltz_blender.animation import set_scene_fps

    scene = bpy.context.scene
    set_scene_fps(scene, args.fps)
    timings["blender start"] = time.perf_counter() - t

    t = time.perf_counter()
    assert bpy.ops.dreamwaltz.add_avatar(filepath=args.avatar) == {"FINISHED"}
    timings["add avatar (backend start, rig)"] = time.perf_counter() - t
    t = time.perf_counter()
    assert bpy.ops.dreamwaltz.import_motion(filepath=args.motion) == {"FINISHED"}
    timings["import motion"] = time.perf_counter() - t
    t = time.perf_counter()
    frame_end = scene.frame_end
    _camera(scene, Path(args.camera))
    assert bpy.ops.dreamwaltz.setup_plate(filepath=args.plate) == {"FINISHED"}
    scene.frame_end = min(scene.frame_end, frame_end) if scene.frame_end > scene.frame_start else frame_end
    bpy.ops.dreamwaltz.use_engine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(out / "frame_")
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    timings["camera, plate, compositor"] = time.perf_counter() - t
    t = time.perf_counter()
    bpy.ops.render.render(animation=True)
    timings[f"render {scene.frame_end - scene.frame_start + 1} frames (engine + compositor + PNG)"] = \
        time.perf_counter() - t
    from dreamwaltz_blender import session

    session.shutdown()
    print("DEMO_TIMINGS " + json.dumps(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
