"""What the commands share: body-model and device options, error reporting, a progress bar."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any


class CommandError(Exception):
    """A user error a command reports as one line (exit status 1)."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is meant for the user (they name file and problem)."""
    from ..avatar import AvatarFileError, AvatarInitError, PoseError
    from ..body import BodyModelError
    from ..motion.errors import MotionError
    from ..gsio import GaussianFileError
    from ..render import RenderError

    return (CommandError, AvatarFileError, AvatarInitError, PoseError, BodyModelError,
            MotionError, GaussianFileError, RenderError)


def run(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """Run a command: a user error, or any OSError (a full disk, a file size limit, a missing
    folder), is one `error:` line naming the file, exit status 1; never a traceback."""
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        from ..files import describe_os_error

        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_body_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--body-model", metavar="PATH", default=None,
                        help="SMPL-X .npz (default: $DREAMWALTZ_SMPLX, else the open template)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to compute (auto: cuda when available)")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was asked for, but torch sees no CUDA GPU")
    return name


def parse_betas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise CommandError(f"--betas must be comma-separated numbers, got {text!r}") from exc


def parse_range(text: str | None, count: int) -> range:
    """'A:B' (Python-style, B exclusive, either may be empty) over `count` frames."""
    if not text:
        return range(count)
    try:
        a, b = text.split(":")
        start = int(a) if a else 0
        stop = int(b) if b else count
    except ValueError as exc:
        raise CommandError(f"--frames must look like A:B, got {text!r}") from exc
    start, stop = max(0, min(start, count)), max(0, min(stop, count))
    if stop <= start:
        raise CommandError(f"--frames {text} selects no frames of the {count} in the motion")
    return range(start, stop)


class Progress:
    """A one-line progress bar on stderr (no dependency, safe when stderr is a log file)."""

    def __init__(self, total: int, label: str, stream: Any = None) -> None:
        self.total, self.label, self.start = total, label, time.perf_counter()
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def update(self, done: int) -> None:
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * done / max(self.total, 1))
        line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"{rate:.1f}/s ETA {eta:.0f}s")
        if self.tty:
            print("\r" + line, end="" if done < self.total else "\n", file=self.stream, flush=True)
        elif done == self.total or done % max(1, self.total // 10) == 0:
            print(line, file=self.stream, flush=True)
