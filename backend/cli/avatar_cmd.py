"""`python -m backend avatar init --out DIR`: a template avatar (Gaussians on the body surface)."""

from __future__ import annotations

import argparse

from .common import add_body_model, parse_betas, run


def _init(args: argparse.Namespace) -> int:
    from ..avatar import init_template_avatar, save_avatar
    from ..body import BodyModel

    body = BodyModel.load(args.body_model)
    avatar = init_template_avatar(body, args.gaussians, seed=args.seed, betas=parse_betas(args.betas))
    avatar.meta.name = args.name or avatar.meta.name
    save_avatar(avatar, args.out)
    print(f"wrote a template avatar with {avatar.num_gaussians} Gaussians "
          f"({len(avatar.free)} free, {len(avatar.bound)} mesh-bound) on {body.path.name} to {args.out}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend avatar", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="make a template avatar")
    init.add_argument("--out", required=True, help="avatar folder to write")
    init.add_argument("--gaussians", type=int, default=100_000, help="number of Gaussians (default 100000)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--betas", default=None, help="body shape, comma-separated")
    init.add_argument("--name", default=None)
    add_body_model(init)
    return run(_init, parser, argv)
