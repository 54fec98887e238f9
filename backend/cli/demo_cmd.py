"""`python -m backend demo --out OUT`: the whole product in one command, with nothing but the project.

The open-template avatar dances (the project's own dance, or `--motion FILE`) over a plate (a
generated stage, or `--plate VIDEO`), rendered by real Blender, headless, with the add-on
registered: Add Avatar, Import Motion, Set Up Plate, the DreamWaltz engine and the compositor.
The frames become `OUT/demo.mp4` and `OUT/contact_sheet.png`. With `--prompt` (on a GPU machine
with the diffusion weights) it creates the avatar from text first. Where the `bpy` module is missing
(a render node without Blender) the backend renders the same shot alone and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from ..files import write_text_atomic
from .common import CommandError, Progress, add_device, resolve_device, run
from .motion_source import BUILTIN_DANCE, load


def stage_plate(folder: Path, frames: int, width: int, height: int) -> Path:
    """A generated plate: a studio backdrop (wall, floor, a soft spotlight that drifts), as a PNG
    sequence, so the demo shows a real plate passing through the compositor."""
    import numpy as np

    from ..video import write_png

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = 0.78 * height
    wall = np.stack([0.16 + 0.18 * y / height, 0.19 + 0.18 * y / height, 0.27 + 0.14 * y / height], -1)
    floor = np.stack([0.36 - 0.1 * (y - horizon) / height, 0.32 - 0.1 * (y - horizon) / height,
                      0.29 - 0.08 * (y - horizon) / height], -1)
    base = np.where((y > horizon)[..., None], floor, wall)
    edge = np.exp(-((y - horizon) / 2.0) ** 2)[..., None] * 0.08
    for i in range(frames):
        cx = width * (0.5 + 0.12 * np.sin(2 * np.pi * i / max(frames, 1)))
        spot = np.exp(-(((x - cx) / (0.35 * width)) ** 2 + ((y - 0.55 * height) / (0.55 * height)) ** 2))
        write_png(folder / f"plate_{i + 1:04d}.png", base * (0.7 + 0.5 * spot[..., None]) + edge)
    return folder / "plate_0001.png"


def _blender_available() -> bool:
    return importlib.util.find_spec("bpy") is not None


def _render_in_blender(args: argparse.Namespace, avatar_dir: Path, motion_file: Path, plate: Path,
                       camera_file: Path, frames_dir: Path, fps: float) -> dict:
    from .. import protocol as P

    root = Path(__file__).resolve().parents[2]
    cmd = P.isolated_command(sys.executable, str(root), "backend.cli.demo_blender", "--avatar", str(avatar_dir),
                             "--motion", str(motion_file), "--plate", str(plate), "--camera", str(camera_file),
                             "--out", str(frames_dir), "--fps", str(fps))
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timings: dict = {}
    tail: list[str] = []
    for line in proc.stdout or []:
        if line.startswith("DEMO_TIMINGS "):
            timings = json.loads(line[len("DEMO_TIMINGS "):])
        elif line.startswith("Fra:") or "Saved:" in line:
            print(f"  blender: {line.strip()}", file=sys.stderr, flush=True)
        else:
            tail = (tail + [line.rstrip()])[-30:]
    if proc.wait() != 0:
        raise CommandError("Blender failed to render the demo:\n" + "\n".join(tail))
    return timings


def _render_backend_only(avatar, motion, cameras, frames_dir: Path, plate_dir: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from ..sequence import render_frames
    from ..video import to_uint8, write_png

    progress = Progress(motion.num_frames, "render")
    plates = sorted(plate_dir.glob("*.png"))
    for i, r in render_frames(avatar, motion, cameras):
        plate = np.asarray(Image.open(plates[min(i, len(plates) - 1)]).convert("RGB"), dtype=np.float32) / 255
        rgb = r.rgb.cpu().numpy() + (1 - r.alpha.cpu().numpy()) * plate
        write_png(frames_dir / f"frame_{i + 1:04d}.png", to_uint8(rgb))
        progress.update(i + 1)
    del torch


def _train(args: argparse.Namespace, run: Path) -> Path:
    """Create the avatar from `--prompt` first (a GPU and the diffusion weights are needed for a
    real avatar; tiny random-weight models run anywhere). A second demo run resumes the run."""
    from .train_cmd import main as train_main

    argv = ["--out", str(run)]
    if (run / "config.json").exists():
        argv.append("--resume")
    else:
        argv += ["--prompt", args.prompt]
        for flag, value in (("--sd-model", args.sd_model), ("--controlnet", args.controlnet),
                            ("--preset", args.preset), ("--steps", args.steps)):
            if value is not None:
                argv += [flag, str(value)]
    if train_main(argv) != 0:
        raise CommandError(f"training the demo's avatar failed (run folder {run})")
    return run / "avatar"


def _main(args: argparse.Namespace) -> int:
    import numpy as np

    from ..avatar import init_template_avatar, save_avatar
    from ..body import BodyModel
    from ..motion import save_motion
    from ..sequence import clip_cameras
    from ..video import contact_sheet, write_mp4

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: list[tuple[str, float]] = []
    t = time.perf_counter()
    device = resolve_device(args.device)
    body = BodyModel.load(device=device)
    if args.prompt:
        avatar_dir = _train(args, out / "train")
        from ..avatar import load_avatar

        avatar = load_avatar(avatar_dir, device=device)
        timings.append((f"train an avatar for {args.prompt!r} ({avatar.num_gaussians:,} Gaussians)",
                        time.perf_counter() - t))
    else:
        avatar = init_template_avatar(body, args.gaussians, seed=0)
        avatar.meta.name = "mannequin"
        avatar_dir = save_avatar(avatar, out / "avatar")
        timings.append((f"open template + template avatar ({avatar.num_gaussians:,} Gaussians)", time.perf_counter() - t))

    t = time.perf_counter()
    motion = load(args.motion, args.fps, body, seconds=args.seconds)
    motion_file = out / "motion.npz"
    save_motion(motion, motion_file)
    cam = clip_cameras(avatar, motion, args.width, args.height, "front")[0]
    camera_file = out / "camera.json"
    write_text_atomic(camera_file, json.dumps({"world_to_camera": np.asarray(cam.world_to_camera).tolist(),
                                       "K": np.asarray(cam.K).tolist(), "width": args.width, "height": args.height}))
    if args.plate:
        plate = Path(args.plate).resolve()
        if not plate.exists():
            raise CommandError(f"the plate {plate} does not exist")
    else:
        plate = stage_plate(out / "plate", motion.num_frames, args.width, args.height)
    timings.append((f"motion ({motion.num_frames} frames at {motion.fps:g} fps), camera, plate", time.perf_counter() - t))

    frames_dir = out / "frames"
    for old in frames_dir.glob("frame_*.png"):
        old.unlink()
    t = time.perf_counter()
    if _blender_available():
        blender = _render_in_blender(args, avatar_dir, motion_file, plate, camera_file, frames_dir, motion.fps)
        timings += [(f"blender: {k}", v) for k, v in blender.items()]
    else:
        print("note: the bpy module is not installed here; the backend renders the shot without Blender",
              file=sys.stderr)
        frames_dir.mkdir(parents=True, exist_ok=True)
        _render_backend_only(avatar, motion, clip_cameras(avatar, motion, args.width, args.height, "front"),
                             frames_dir, plate.parent)
        timings.append(("render (backend only)", time.perf_counter() - t))

    t = time.perf_counter()
    from PIL import Image

    files = sorted(frames_dir.glob("frame_*.png"))
    if not files:
        raise CommandError(f"no frames were rendered into {frames_dir}")
    write_mp4(out / "demo.mp4", (np.asarray(Image.open(f).convert("RGB")) for f in files), fps=motion.fps)
    picks = [files[int(k)] for k in np.linspace(0, len(files) - 1, 8)]
    thumbs = [np.asarray(Image.open(f).convert("RGB").reduce(2)) for f in picks]
    from ..video import write_png

    write_png(out / "contact_sheet.png", contact_sheet(thumbs, columns=4))
    timings.append(("encode demo.mp4 + contact sheet", time.perf_counter() - t))

    width = max(len(name) for name, _ in timings)
    print("\nDreamWaltz demo — how long each part took:")
    for name, seconds in timings:
        print(f"  {name:<{width}}  {seconds:7.1f} s")
    print(f"\ndemo video:    {out / 'demo.mp4'}\ncontact sheet: {out / 'contact_sheet.png'}\n"
          f"avatar:        {avatar_dir} (open it in Blender with DreamWaltz > Add Avatar)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend demo", description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--motion", default=BUILTIN_DANCE, help=f"a motion file, or {BUILTIN_DANCE}")
    parser.add_argument("--plate", default=None, help="a video or image sequence (default: a generated stage)")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=4.0, help=f"length of {BUILTIN_DANCE}")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--gaussians", type=int, default=60_000)
    parser.add_argument("--prompt", default=None,
                        help="create the avatar from this prompt first (needs SD 1.5 + ControlNet weights)")
    parser.add_argument("--sd-model", default=None, metavar="DIR|ID")
    parser.add_argument("--controlnet", default=None, metavar="DIR|ID")
    parser.add_argument("--preset", choices=("draft", "default", "high"), default=None)
    parser.add_argument("--steps", type=int, default=None, help="training iterations (default: the preset's)")
    add_device(parser)
    return run(_main, parser, argv)
