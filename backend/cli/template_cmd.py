"""`python -m backend template --out PATH.npz`: write the open template body model."""

from __future__ import annotations

import argparse

from .common import run


def _main(args: argparse.Namespace) -> int:
    from ..body.template import write_template

    path = write_template(args.out)
    print(f"wrote the open template (a procedural mannequin in the SMPL-X layout) to {path}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend template", description=__doc__)
    parser.add_argument("--out", required=True, help="where to write the .npz")
    return run(_main, parser, argv)
