"""`python -m backend demo --out OUT`: the whole product in one command, with nothing but the project.

The open-template avatar dances (the project's own dance, or `--motion FILE`) and is rendered
to `OUT/demo.mp4` and `OUT/contact_sheet.png`; it prints where the results are and how long each
part took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import Progress, add_device, resolve_device, run
from .motion_source import BUILTIN_DANCE, load


def _main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..avatar import init_template_avatar, save_avatar
    from ..body import BodyModel
    from ..sequence import clip_cameras, render_frames
    from ..video import contact_sheet, to_uint8, write_mp4, write_png

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: list[tuple[str, float]] = []
    t = time.perf_counter()
    device = resolve_device(args.device)
    body = BodyModel.load(device=device)
    timings.append(("body model (open template)", time.perf_counter() - t))

    t = time.perf_counter()
    avatar = init_template_avatar(body, args.gaussians, seed=0)
    save_avatar(avatar, out / "avatar")
    timings.append((f"template avatar ({avatar.num_gaussians:,} Gaussians)", time.perf_counter() - t))

    t = time.perf_counter()
    motion = load(args.motion, args.fps, body, seconds=args.seconds)
    cameras = clip_cameras(avatar, motion, args.width, args.height, "orbit")
    timings.append((f"motion ({motion.num_frames} frames at {motion.fps:g} fps)", time.perf_counter() - t))

    t = time.perf_counter()
    progress = Progress(motion.num_frames, "demo")
    thumbs: list[np.ndarray] = []
    step = max(1, motion.num_frames // 8)
    bg = torch.tensor([0.93, 0.93, 0.95], device=device)

    def frames():
        for i, r in render_frames(avatar, motion, cameras):
            image = to_uint8((r.rgb + (1 - r.alpha) * bg).cpu().numpy())
            if i % step == 0 and len(thumbs) < 8:
                thumbs.append(image)
            progress.update(i + 1)
            yield image

    write_mp4(out / "demo.mp4", frames(), fps=motion.fps)
    write_png(out / "contact_sheet.png", contact_sheet(thumbs, columns=4))
    timings.append((f"render {args.width}x{args.height} on {device}", time.perf_counter() - t))

    width = max(len(name) for name, _ in timings)
    for name, seconds in timings:
        print(f"  {name:<{width}}  {seconds:6.1f} s")
    print(f"demo video:    {out / 'demo.mp4'}\ncontact sheet: {out / 'contact_sheet.png'}\navatar:        {out / 'avatar'}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend demo", description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--motion", default=BUILTIN_DANCE, help=f"a motion file, or {BUILTIN_DANCE}")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--gaussians", type=int, default=60_000)
    add_device(parser)
    return run(_main, parser, argv)
