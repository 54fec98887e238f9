"""`python -m backend render`: an avatar on a motion, to PNG frames (a folder) or an MP4."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import CommandError, Progress, add_body_model, add_device, parse_betas, parse_range, resolve_device, run
from .motion_source import BUILTIN_DANCE, load


def _main(args: argparse.Namespace) -> int:
    import numpy as np

    from ..avatar import load_avatar
    from ..body import BodyModel
    from ..sequence import clip_cameras, render_frames
    from ..video import to_uint8, write_mp4, write_png

    if args.width < 16 or args.height < 16 or args.width > 8192 or args.height > 8192:
        raise CommandError(f"--width/--height must be between 16 and 8192, got {args.width}x{args.height}")
    device = resolve_device(args.device)
    body = BodyModel.load(args.body_model, device) if args.body_model else None
    avatar = load_avatar(args.avatar, body=body, device=device)
    betas = parse_betas(args.betas)
    motion = load(args.motion, args.fps, avatar.body, seconds=args.seconds)
    frames = parse_range(args.frames, motion.num_frames)
    cameras = clip_cameras(avatar, motion, args.width, args.height, args.camera, betas=betas)
    background = np.array([float(c) for c in args.background.split(",")], dtype=np.float32)
    out = Path(args.out)
    as_video = out.suffix.lower() == ".mp4"
    if not as_video:
        out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(frames), "render")
    t0 = time.perf_counter()

    def images():
        for k, (i, r) in enumerate(render_frames(avatar, motion, cameras, args.rasterizer, frames, betas=betas)):
            rgb = (r.rgb + (1 - r.alpha) * __import__("torch").as_tensor(background, device=r.rgb.device)).cpu().numpy()
            image = to_uint8(rgb)
            if not as_video:
                rgba = np.concatenate([rgb, r.alpha.cpu().numpy()], axis=-1) if args.alpha else rgb
                write_png(out / f"frame_{i:06d}.png", rgba)
            progress.update(k + 1)
            yield image

    if as_video:
        write_mp4(out, images(), fps=motion.fps)
    else:
        for _ in images():
            pass
    elapsed = time.perf_counter() - t0
    print(f"rendered {len(frames)} frames of {args.motion} ({motion.fps:g} fps) at {args.width}x{args.height} "
          f"on {device} in {elapsed:.1f} s ({1000 * elapsed / len(frames):.0f} ms/frame) -> {out}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend render", description=__doc__)
    parser.add_argument("--avatar", required=True, help="avatar folder")
    parser.add_argument("--motion", required=True,
                        help=f"motion file (AMASS, AIST++, Motion-X, TalkSHOW, DreamWaltz-G .npy, ...) or {BUILTIN_DANCE}")
    parser.add_argument("--out", required=True, help="folder for PNG frames, or a file ending in .mp4")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--fps", type=float, default=None, help="resample the motion to this rate")
    parser.add_argument("--frames", default=None, help="A:B, frames after resampling (B exclusive)")
    parser.add_argument("--camera", choices=("front", "orbit"), default="front")
    parser.add_argument("--rasterizer", choices=("auto", "torch", "gsplat"), default="auto")
    parser.add_argument("--background", default="1,1,1", help="r,g,b in [0,1] (default white)")
    parser.add_argument("--alpha", action="store_true", help="write RGBA PNGs (frames mode)")
    parser.add_argument("--betas", default=None, help="render with another body shape: comma-separated betas (the first N; the rest 0)")
    parser.add_argument("--seconds", type=float, default=4.0, help=f"length of {BUILTIN_DANCE}")
    add_body_model(parser)
    add_device(parser)
    return run(_main, parser, argv)
