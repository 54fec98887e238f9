"""`python -m backend serve`: run the backend server on stdin/stdout (for the Blender add-on).

stdout carries only protocol messages: at start the protocol's stream is moved to a private
file descriptor and fd 1 points at stderr, so whatever a library prints lands in the log.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend serve",
                                description="Serve the DreamWaltz backend protocol on stdin/stdout "
                                            "(JSON lines; see docs/protocol.md). stderr is the log.")
    p.add_argument("--device", default=os.environ.get("DREAMWALTZ_DEVICE", "auto"),
                   help="torch device: auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--smplx", default=None, help="SMPL-X .npz file (default: $DREAMWALTZ_SMPLX, else the open template)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE at start (it may call backend.server.register_job_kind); repeatable")
    p.add_argument("--log-level", default=os.environ.get("DREAMWALTZ_LOG", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _protocol_streams() -> tuple:
    """(stdin, stdout) binary streams for the protocol; fd 1 is redirected to stderr."""
    out_fd = os.dup(sys.stdout.fileno())  # not inheritable (PEP 446): children never hold it
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    proto_out = os.fdopen(out_fd, "wb", buffering=0)
    proto_in = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=1 << 16)
    return proto_in, proto_out


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stdin, stdout = _protocol_streams()
    for module in args.plugin:
        importlib.import_module(module)
    from .core import Server

    server = Server(stdin, stdout, device=args.device, smplx=args.smplx)
    code = server.run()
    logging.shutdown()
    sys.stderr.flush()
    # daemon threads may still be inside torch: leave without interpreter teardown
    os._exit(code)
