"""`python -m backend export-ply`: an avatar as a standard 3DGS .ply, canonical or posed."""

from __future__ import annotations

import argparse

from .common import CommandError, add_body_model, parse_betas, run
from .motion_source import BUILTIN_DANCE, load


def _main(args: argparse.Namespace) -> int:
    import torch

    from ..avatar import load_avatar, pose_with_params
    from ..body import BodyModel
    from ..ply import write_ply
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
    write_ply(args.out, gaussians)
    what = f"frame {args.frame} of {args.motion}" if args.motion else "the canonical pose"
    print(f"wrote {len(gaussians)} Gaussians ({what}, SMPL-X Y-up metres) to {args.out}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend export-ply", description=__doc__)
    parser.add_argument("--avatar", required=True)
    parser.add_argument("--out", required=True, help="the .ply to write")
    parser.add_argument("--motion", default=None, help=f"pose from this motion file (or {BUILTIN_DANCE})")
    parser.add_argument("--frame", type=int, default=0, help="which frame of --motion")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--betas", default=None)
    add_body_model(parser)
    return run(_main, parser, argv)
