"""`python -m backend export-ply`: an avatar, canonical or posed, as a standard 3DGS file: INRIA
.ply (the full layout, f_rest zero-padded to --sh-degree), SuperSplat .compressed.ply, .splat,
.spz or glTF .glb (KHR_gaussian_splatting), chosen by --format or the --out suffix."""

from __future__ import annotations

import argparse

from .common import CommandError, add_body_model, parse_betas, run
from .motion_source import BUILTIN_DANCE, load


def _main(args: argparse.Namespace) -> int:
    import torch

    from ..avatar import load_avatar, pose_with_params
    from ..body import BodyModel
    from ..gsio import Splats, format_for_path, write_gaussians
    from ..sequence import frame_params

    body = BodyModel.load(args.body_model) if args.body_model else None
    avatar = load_avatar(args.avatar, body=body)
    betas = parse_betas(args.betas)
    params = {}
    if args.motion:
        motion = load(args.motion, args.fps, avatar.body)
        if not 0 <= args.frame < motion.num_frames:
            raise CommandError(f"--frame {args.frame} is outside the motion's {motion.num_frames} frames")
        params = frame_params(motion, args.frame)
    with torch.no_grad():
        gaussians = pose_with_params(avatar, betas=betas, **params)
    fmt = args.format or format_for_path(args.out)
    options = {"sh_degree": args.sh_degree} if fmt == "ply" else {}
    if args.sh_degree is not None and fmt != "ply":
        raise CommandError(f"--sh-degree applies to INRIA .ply output only, not {fmt}")
    if args.up != "y" and fmt in ("spz", "glb"):
        raise CommandError(f"{fmt} files are Y up by specification; --up {args.up} applies to .ply and .splat")
    write_gaussians(args.out, Splats.from_gaussian_set(gaussians, up="y").turned(args.up), fmt, **options)
    what = f"frame {args.frame} of {args.motion}" if args.motion else "the canonical pose"
    print(f"wrote {len(gaussians)} Gaussians ({what}, metres, {args.up} up) to {args.out} as {fmt}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend export-ply", description=__doc__)
    parser.add_argument("--avatar", required=True)
    parser.add_argument("--out", required=True, help="the file to write (.ply, .compressed.ply, .splat, .spz, .glb)")
    parser.add_argument("--format", choices=("ply", "compressed-ply", "splat", "spz", "glb"), default=None,
                        help="output format (default: from the --out suffix)")
    parser.add_argument("--sh-degree", type=int, choices=(0, 1, 2, 3), default=None,
                        help="SH degree declared in an INRIA .ply (f_rest zero-padded; default 3, as the "
                        "reference loader expects)")
    parser.add_argument("--up", choices=("y", "-y", "z"), default="y",
                        help="up axis of the written file: y (SMPL-X's, the default), -y (write --up=-y; what PLY viewers such as "
                        "SuperSplat assume for captures) or z; .spz and .glb are always y")
    parser.add_argument("--motion", default=None, help=f"pose from this motion file (or {BUILTIN_DANCE})")
    parser.add_argument("--frame", type=int, default=0, help="which frame of --motion")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--betas", default=None)
    add_body_model(parser)
    return run(_main, parser, argv)
