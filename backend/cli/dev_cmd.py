"""`python -m backend dev tiny-models --out DIR`: developer tools.

tiny-models writes random-weight models of the Stable Diffusion 1.5 and OpenPose ControlNet
architectures at tiny widths, in the diffusers folder layout, as DIR/stable-diffusion and
DIR/controlnet (and a tiny TAESD encoder as DIR/taesd), so that `python -m backend train --sd-model DIR/stable-diffusion --controlnet
DIR/controlnet ...` runs anywhere (CPU, no download) in seconds. They produce noise, not
avatars: they exist to exercise the whole pipeline.
"""

from __future__ import annotations

import argparse
import sys

from .common import run


def _tiny_models(args: argparse.Namespace) -> int:
    from ..guidance.configs import write_model_folders

    sd, cn = write_model_folders(args.out, size=args.size, seed=args.seed)
    print(f"wrote {sd}, {cn} and {sd.parent / 'taesd'}", file=sys.stderr)
    print(f"use: python -m backend train --sd-model {sd} --controlnet {cn} [--tiny-encoder {sd.parent / 'taesd'}] ...",
          file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="tool", required=True)
    tiny = sub.add_parser("tiny-models", help="write tiny random-weight SD 1.5 + ControlNet models")
    tiny.add_argument("--out", required=True, help="folder to write stable-diffusion/ and controlnet/ into")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--size", choices=("tiny", "sd15"), default="tiny",
                      help="sd15 writes full-size random weights (about 4 GB; for offline speed tests)")
    tiny.set_defaults(func=_tiny_models)
    return run(lambda args: args.func(args), parser, argv)
