"""Seconds per rendered 1920×1080 frame end to end through Blender, split into its parts.

    python bench/blender_render.py [--frames 5] [--gaussians 100000] [--out bench/results/blender_render_cpu.txt]

One avatar (a template avatar) dances over a plate; each frame is an F12 render with the
DreamWaltz engine, the compositor and a PNG write. The engine records where its time went (rig
evaluation, transport, backend pose + rasterize + pack, filling the passes); the rest of the
frame is Blender's compositor and file write. Also times Import Motion of 10,000 frames (the
add-on's bulk keying) beside keying the same motion one keyframe_insert call at a time, which
is what SMPL-X add-ons do. Blender's Python 3.11 cannot run on the GPU machine, so this runs
on the CPU; the backend's GPU share comes from bench/render.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCRIPT = """
import json, statistics, time, sys
import numpy as np
from dreamwaltz_blender import session
from dreamwaltz_blender.rig import JOINTS_KEY
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1920, 1080, 100
scene.render.fps = 30
cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
scene.collection.objects.link(cam)
scene.camera = cam
cam.location = (0.0, -5.5, 0.0)
cam.rotation_euler = (1.5708, 0.0, 0.0)
bpy.ops.dreamwaltz.add_avatar(filepath=ARGS["avatar"])
arm = bpy.context.active_object
bpy.ops.dreamwaltz.import_motion(filepath=ARGS["motion"])
bpy.ops.dreamwaltz.setup_plate(filepath=ARGS["plate"])
bpy.ops.dreamwaltz.use_engine()
scene.render.image_settings.file_format = "PNG"
rows = []
for i in range(ARGS["frames"] + 1):
    scene.frame_set(1 + i)
    scene.render.filepath = ARGS["out"] + f"/frame_{i:03d}.png"
    t0 = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    total = (time.perf_counter() - t0) * 1e3
    if i:
        rows.append(dict(session.last_timing(), total_ms=total))
result["rows"] = rows
# Import Motion of 10,000 frames: bulk keys, beside one keyframe_insert per key
t0 = time.perf_counter()
bpy.ops.dreamwaltz.import_motion(filepath=ARGS["long_motion"], use_source_fps=True)
result["import_10k_s"] = time.perf_counter() - t0
names = arm[JOINTS_KEY].split(",")
frames = 500
t0 = time.perf_counter()
for f in range(frames):
    for n in names:
        arm.pose.bones[n].keyframe_insert("rotation_quaternion", frame=f)
result["keyframe_insert_500_s"] = time.perf_counter() - t0
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import numpy as np

    from backend.avatar import init_template_avatar, save_avatar
    from backend.body import BodyModel
    from backend.cli.demo_cmd import stage_plate
    from backend.dance import dance
    from backend.motion import save_motion

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        body = BodyModel.load()
        save_avatar(init_template_avatar(body, args.gaussians), tmp / "avatar")
        save_motion(dance(seconds=2.0, num_expression=body.num_expression), tmp / "dance.npz")
        save_motion(dance(seconds=10_000 / 30, num_expression=body.num_expression), tmp / "long.npz")
        plate = stage_plate(tmp / "plate", 3, 1920, 1080)
        (tmp / "frames").mkdir()
        script = tmp / "bench_script.py"
        payload = dict(avatar=str(tmp / "avatar"), motion=str(tmp / "dance.npz"), plate=str(plate),
                       frames=args.frames, out=str(tmp / "frames"), long_motion=str(tmp / "long.npz"))
        script.write_text(f"ARGS = {json.dumps(payload)}\n" + textwrap.dedent(SCRIPT))
        result_file = tmp / "result.json"
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "blender_entry.py"), str(script), str(result_file)],
                              cwd=ROOT, capture_output=True, text=True)
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        if not result.get("ok"):
            print(proc.stderr[-3000:], result.get("traceback"), file=sys.stderr)
            return 1

    rows = result["rows"]
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    backend = med["pose_ms"] + med["raster_ms"] + med["pack_ms"]
    transport = med["request_ms"] + med["copy_ms"] - backend
    parts = [("rig evaluation (evaluated pose bones -> 55 skinning transforms)", med["rig_ms"]),
             ("transport (JSON request + shared-memory frame + copy)", transport),
             ("backend: pose (skinning)", med["pose_ms"]),
             ("backend: rasterize (torch reference, CPU)", med["raster_ms"]),
             ("backend: pack into shared memory", med["pack_ms"]),
             ("fill Combined + Depth passes", med["fill_ms"]),
             ("Blender: compositor (Alpha Over plate) + PNG write + overhead",
              med["total_ms"] - med["rig_ms"] - med["request_ms"] - med["copy_ms"] - med["fill_ms"])]
    lines = ["# bench/blender_render.py — one 1920x1080 frame through Blender (F12 + compositor + PNG), median "
             f"of {len(rows)}", f"# device: {platform.processor() or platform.machine()} CPU, 2 cores; "
             f"{args.gaussians:,} Gaussians; Blender 5.0.1 (bpy wheel)", "",
             "| part | ms | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {ms:.1f} | {100 * ms / med['total_ms']:.0f}% |" for name, ms in parts]
    lines += [f"| **total per frame** | **{med['total_ms']:.1f}** | |", "",
              "| Import Motion | seconds |", "|---|---:|",
              f"| 10,000 frames, 55 bones + root + expression, bulk keys (ours) | {result['import_10k_s']:.2f} |",
              f"| 500 frames x 55 bones, one keyframe_insert per key (SMPL-X add-on style) | "
              f"{result['keyframe_insert_500_s']:.2f} |",
              f"| ...extrapolated to 10,000 frames | {20 * result['keyframe_insert_500_s']:.1f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from backend.files import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
