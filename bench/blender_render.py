"""Milliseconds per 1920×1080 frame through Blender, split into their parts: F12 of an avatar over a
plate, F12 of the avatar in a scene of meshes (Render with Scene), and a viewport redraw; plus
Import Motion of 10,000 frames beside one keyframe_insert per key.

    python bench/blender_render.py [--frames 5] [--gaussians 100000] [--out bench/results/blender_render_cpu.txt]
    python bench/blender_render.py --backend-only [--device cuda] [--out bench/results/blender_render_backend_gpu.txt]

One template avatar dances. F12 over a plate: the DreamWaltz engine, the compositor and a PNG
write. F12 in a scene: a floor, two boxes and a sun rendered by Cycles (1 sample: the meshes'
cost is Blender's own, shown alone), the avatar by DreamWaltz in the companion scene, merged by
depth over the plate. The engine records where its time went (rig evaluation, transport, the
backend's pose + rasterize + pack, filling the passes); the rest is Blender's compositor and the
file write. The viewport redraw is the Solid-view overlay's: request, backend render, upload of
the frame to a GPU texture and the draw with the depth test; it runs in a Blender that can make a
GPU context in the background (`gpu.init`, 5.3 and newer: .cache/blender/5.3.0 from
scripts/blender_versions.sh, or --viewport-blender), else without the upload and draw. Targets:
a redraw costs at most 50 ms of Blender time beyond the backend's render; transport (request,
pipe, packing into shared memory, reply) at most 5 ms.

Blender's Python cannot run on the GPU machine; there, --backend-only sends the same requests
(a 1080p viewport frame, a 1080p F12 frame in scene-linear colour) through the add-on's client to
the backend and splits them the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import cpu_name, emit  # noqa: E402

from tests.blender import has_gpu_init, run_blender  # noqa: E402

F12_SCRIPT = """
import json, time
from dreamwaltz_blender import session
from dreamwaltz_blender.rig import JOINTS_KEY
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1920, 1080, 100
scene.render.fps = 30
cam = scene_camera((0.0, -5.5, 1.0), (1.5708, 0.0, 0.0))
bpy.ops.dreamwaltz.add_avatar(filepath=ARGS["avatar"])
arm = bpy.context.active_object
bpy.ops.dreamwaltz.import_motion(filepath=ARGS["motion"])
bpy.ops.dreamwaltz.setup_plate(filepath=ARGS["plate"])
bpy.ops.dreamwaltz.use_engine()
scene.render.image_settings.file_format = "PNG"

def frames(out):
    rows = []
    for i in range(ARGS["frames"] + 1):
        scene.frame_set(1 + i)
        scene.render.filepath = ARGS["out"] + f"/{out}_{i:03d}.png"
        t0 = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        total = (time.perf_counter() - t0) * 1e3
        row = dict(session.last_timing(), total_ms=total)
        if out == "scene":
            scene.render.use_compositing = False  # the meshes alone: no companion render, no compositor
            t0 = time.perf_counter()
            bpy.ops.render.render()
            row["meshes_ms"] = (time.perf_counter() - t0) * 1e3
            scene.render.use_compositing = True
        if i:
            rows.append(row)
    return rows

result["plate_rows"] = frames("plate")

box("Floor", (8, 8, 0.02), (0, 0, -0.01))
box("Front", (0.7, 0.2, 0.6), (0.3, -1.0, 0.3))
box("Back", (1.0, 0.2, 1.0), (0.8, 1.5, 1.2))
sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
scene.collection.objects.link(sun)
sun.rotation_euler = (0.6, 0.3, 0.0)
scene.cycles.samples, scene.cycles.use_denoising = ARGS["samples"], False
assert bpy.ops.dreamwaltz.render_with_scene(engine="CYCLES") == {"FINISHED"}
result["scene_rows"] = frames("scene")

t0 = time.perf_counter()
bpy.ops.dreamwaltz.import_motion(filepath=ARGS["long_motion"], use_source_fps=True)
result["import_10k_s"] = time.perf_counter() - t0
names = arm[JOINTS_KEY].split(",")
t0 = time.perf_counter()
for f in range(500):
    for n in names:
        arm.pose.bones[n].keyframe_insert("rotation_quaternion", frame=f)
result["keyframe_insert_500_s"] = time.perf_counter() - t0
"""

VIEWPORT_SCRIPT = """
import time
import gpu
from dreamwaltz_blender.camera import view_to_opencv
from dreamwaltz_blender.viewport import ViewFrames, draw_overlay_frame, upload_textures
drawing = hasattr(gpu, "init")
if drawing:
    gpu.init()
result["drawing"] = drawing
result["blender"] = bpy.app.version_string
result["gpu"] = gpu.platform.renderer_get() if drawing else "none"
scene = bpy.context.scene
cam = scene_camera((0.0, -5.5, 1.0), (1.5708, 0.0, 0.0), size=(1920, 1080))
bpy.ops.dreamwaltz.add_avatar(filepath=ARGS["avatar"])
bpy.ops.dreamwaltz.import_motion(filepath=ARGS["motion"])
dg = bpy.context.evaluated_depsgraph_get()
P = cam.evaluated_get(dg).calc_matrix_camera(dg, x=1920, y=1080)
view = view_to_opencv(P, cam.matrix_world.inverted(), 1920, 1080)
frames = ViewFrames(upload_textures if drawing else (lambda reply: None), color="srgb", slot="overlay")
offscreen = gpu.types.GPUOffScreen(1920, 1080) if drawing else None

def redraw():
    t0 = time.perf_counter()
    frame = frames.get("region", bpy.context.evaluated_depsgraph_get(), view)
    t1 = time.perf_counter()
    if drawing:
        with offscreen.bind():
            fb = gpu.state.active_framebuffer_get()
            fb.clear(color=(0.2, 0.2, 0.2, 1.0), depth=1.0)
            draw_overlay_frame(frame.data, P)
            fb.read_color(0, 0, 1, 1, 4, 0, "FLOAT")  # waits for the GPU
    t2 = time.perf_counter()
    return frame, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t2 - t0) * 1e3

rows = []
for i in range(ARGS["frames"] + 2):
    scene.frame_set(1 + i)  # a new pose: the frame is rendered again
    frame, get_ms, draw_ms, total = redraw()
    if i >= 2:
        rows.append(dict(frame.timing, get_ms=get_ms, draw_ms=draw_ms, redraw_ms=total))
result["rows"] = rows
result["cached"] = [dict(zip(("get_ms", "draw_ms", "redraw_ms"), redraw()[1:])) for _ in range(ARGS["frames"])]
result["renders"] = frames.renders
"""


def run_in_blender(python: str, script: str, args: dict, tmp: Path, name: str) -> dict:
    """`script` with `ARGS = args` in that Python's Blender (tests/blender.py runs it)."""
    folder = tmp / name
    folder.mkdir()
    return run_blender(f"ARGS = {json.dumps(args)}\n" + textwrap.dedent(script), folder, timeout=3600, python=python)


def viewport_blender(choice: str | None) -> str:
    """The bpy Python asked for, else the first with gpu.init (DREAMWALTZ_TEST_BLENDER, then the
    version matrix's newest), else the .venv's."""
    if choice:
        if not Path(choice).exists():
            raise SystemExit(f"--viewport-blender {choice}: no such Python")
        return choice
    candidates = [os.environ.get("DREAMWALTZ_TEST_BLENDER")] + \
        [str(p / "bin" / "python") for p in sorted((ROOT / ".cache" / "blender").glob("*"), reverse=True)]
    return next((p for p in candidates if p and Path(p).exists() and has_gpu_init(p)), sys.executable)


def median(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def transport(rows: list[dict]) -> float:
    """Median of each round trip less the backend's pose and rasterize (request, pipe, packing
    into shared memory, reply): per frame, since medians of the parts need not add up."""
    return float(np.median([r["request_ms"] + r["copy_ms"] - r["pose_ms"] - r["raster_ms"] for r in rows]))


def table(title: str, parts: list[tuple[str, float]], total: float) -> list[str]:
    lines = [f"## {title}", "", "| part | ms | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |" for name, ms in parts]
    return lines + [f"| **total per frame** | **{total:.1f}** | |", ""]


def engine_parts(rows: list[dict], prefix: str = "") -> tuple[list[tuple[str, float]], float]:
    """The engine's split of its frame: rig, transport, backend, fill (and the engine's total)."""
    return [(f"{prefix}rig evaluation (evaluated pose bones -> 55 skinning transforms)", median(rows, "rig_ms")),
            (f"{prefix}transport (JSON request + pack into shared memory + reply)", transport(rows)),
            (f"{prefix}backend: pose (skinning)", median(rows, "pose_ms")),
            (f"{prefix}backend: rasterize + scene-linear colour", median(rows, "raster_ms")),
            (f"{prefix}fill Combined + Depth passes", median(rows, "fill_ms"))], median(rows, "engine_ms")


def blender_tables(f12: dict, viewport: dict, args: argparse.Namespace) -> list[str]:
    plate = f12["plate_rows"]
    parts, engine = engine_parts(plate)
    total = median(plate, "total_ms")
    lines = table(f"F12: the avatar over a plate (DreamWaltz engine, compositor, PNG write), median of {len(plate)}",
                  parts + [("Blender: compositor (Alpha Over plate) + PNG write + overhead", total - engine)], total)
    scene = f12["scene_rows"]
    parts, engine = engine_parts(scene, "avatars: ")
    total, meshes = median(scene, "total_ms"), median(scene, "meshes_ms")
    lines += table(f"F12: the avatar in a scene of meshes (Render with Scene: Cycles, {args.samples} sample(s), for "
                   f"the meshes; DreamWaltz for the avatar; merged by depth over the plate), median of {len(scene)}",
                   [(f"meshes: Cycles alone ({args.samples} sample(s), Blender's own cost)", meshes)] + parts +
                   [("Blender: compositor (depth merge + plate) + PNG write + overhead", total - meshes - engine)], total)
    rows = viewport["rows"]
    drawing = viewport["drawing"]
    redraw = median(rows, "redraw_ms")
    moved = transport(rows)
    n_a = "" if drawing else " (not measured: no GPU context in this Blender)"
    parts = [("rig evaluation + request (the frame's key)", median(rows, "rig_ms")),
             ("transport (JSON request + pack into shared memory + reply; views, no copy)", moved),
             ("backend: pose (skinning)", median(rows, "pose_ms")),
             ("backend: rasterize", median(rows, "raster_ms")),
             (f"upload: shared memory -> gpu.types.Buffer -> RGBA32F + R32F textures (no conversion){n_a}", median(rows, "upload_ms")),
             (f"draw: overlay shader with the depth test, until the GPU is done{n_a}", median(rows, "draw_ms"))]
    lines += table(f"Viewport redraw, 1920x1080 Solid-view overlay (Blender {viewport['blender']}, GPU: "
                   f"{viewport['gpu']}), a new pose each redraw, median of {len(rows)}", parts, redraw)
    beyond = float(np.median([r["redraw_ms"] - r["pose_ms"] - r["raster_ms"] for r in rows]))
    cached = viewport["cached"]
    lines += ["| viewport target | ms | target | |", "|---|---:|---:|---|",
              f"| Blender time beyond the backend's render | {beyond:.1f} | 50 | {'met' if beyond <= 50 else 'NOT met'} |",
              f"| transport | {moved:.1f} | 5 | {'met' if moved <= 5 else 'NOT met'} |",
              f"| a redraw that changes nothing (the frame is reused): all | {median(cached, 'redraw_ms'):.1f} | | |",
              f"| ...of which the request's key (rig evaluation, no backend call) | {median(cached, 'get_ms'):.1f} | | |",
              f"| ...of which the draw{n_a} | {median(cached, 'draw_ms'):.1f} | | |", ""]
    lines += ["## Import Motion", "", "| Import Motion | seconds |", "|---|---:|",
              f"| 10,000 frames, 55 bones + root + expression, bulk keys (ours) | {f12['import_10k_s']:.2f} |",
              f"| 500 frames x 55 bones, one keyframe_insert per key (SMPL-X add-on style) | "
              f"{f12['keyframe_insert_500_s']:.2f} |",
              f"| ...extrapolated to 10,000 frames | {20 * f12['keyframe_insert_500_s']:.1f} |"]
    return lines


def backend_only(args: argparse.Namespace, folder: Path, motion_path: Path) -> list[str]:
    """The requests a 1080p viewport redraw and a 1080p F12 send, straight to the backend."""
    import torch

    from backend.avatar import load_avatar, pose_with_params
    from backend.avatar.preview import framing_camera
    from backend.body import BodyModel
    from backend.body.kinematics import rodrigues, skinning_transforms
    from backend.motion import load_motion
    from dreamwaltz_blender.client import BackendClient

    body = BodyModel.load()
    rest = body.rest_joints().numpy()
    motion = load_motion(motion_path, body_model=body)
    with torch.no_grad():
        cam = framing_camera(pose_with_params(load_avatar(folder)).means, 1920, 1080)
    camera = {"world_to_camera": np.asarray(cam.world_to_camera).tolist(), "K": np.asarray(cam.K).tolist(),
              "near": 0.1, "far": 100.0}
    client = BackendClient(device=args.device)
    hello = client.start()
    handle = client.request("load_avatar", path=str(folder))["avatar"]
    kinds = {"viewport redraw (display colour)": dict(color="srgb", slot="overlay"),
             "F12 frame (scene-linear colour)": dict(color="linear", slot="frame")}
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(args.frames + 2):
        _, transforms = skinning_transforms(rodrigues(motion.full_pose[i % motion.num_frames]), rest,
                                            motion.transl[i % motion.num_frames])
        item = {"avatar": handle, "transforms": transforms.tolist()}
        for name, kw in kinds.items():
            reply = client.render(camera=camera, width=1920, height=1080, avatars=[item], flip_y=True,
                                  depth_empty=1e10, copy=False, **kw)
            if i >= 2:
                rows[name].append(reply["timing"])
    client.close()
    dev = hello["device"]
    lines = [f"# bench/blender_render.py --backend-only — the backend's share of a 1920x1080 Blender frame",
             f"# device: {dev.get('name')} ({dev.get('type')}), rasterizer {hello['rasterizer']}; torch "
             f"{hello.get('torch_version')}; {args.gaussians:,} Gaussians; median of {args.frames} frames", "",
             "| request | pose ms | rasterize ms | pack ms | transport ms | round trip ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        trip = float(np.median([x["request_ms"] + x["copy_ms"] for x in r]))
        lines.append(f"| {name} | {median(r, 'pose_ms'):.2f} | {median(r, 'raster_ms'):.2f} | {median(r, 'pack_ms'):.2f} | "
                     f"{transport(r):.2f} | {trip:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--gaussians", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=1, help="Cycles samples for the meshes")
    parser.add_argument("--viewport-blender", default=None, help="bpy Python for the viewport part (needs gpu.init)")
    parser.add_argument("--backend-only", action="store_true", help="only the backend's share (the GPU machine)")
    parser.add_argument("--device", default=None, help="backend device with --backend-only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

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
        if args.backend_only:
            lines = backend_only(args, tmp / "avatar", tmp / "dance.npz")
        else:
            save_motion(dance(seconds=10_000 / 30, num_expression=body.num_expression), tmp / "long.npz")
            plate = stage_plate(tmp / "plate", 3, 1920, 1080)
            (tmp / "frames").mkdir()
            payload = dict(avatar=str(tmp / "avatar"), motion=str(tmp / "dance.npz"), plate=str(plate),
                           frames=args.frames, out=str(tmp / "frames"), long_motion=str(tmp / "long.npz"),
                           samples=args.samples)
            f12 = run_in_blender(sys.executable, F12_SCRIPT, payload, tmp, "f12")
            viewport = run_in_blender(viewport_blender(args.viewport_blender), VIEWPORT_SCRIPT, payload, tmp, "viewport")
            load = os.getloadavg()
            lines = [f"# bench/blender_render.py — 1920x1080 frames through Blender, split into their parts",
                     f"# date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device: {cpu_name()} "
                     f"({os.cpu_count()} cores, CPU backend, torch rasterizer), load average at the end {load[0]:.1f}; "
                     f"{args.gaussians:,} Gaussians; F12 in Blender {'.'.join(map(str, f12['blender']))} (bpy wheel), "
                     f"python {platform.python_version()}", ""]
            lines += blender_tables(f12, viewport, args)
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
