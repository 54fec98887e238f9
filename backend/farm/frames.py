"""Frame ranges and chunks: "1-1000", "1..250" (Blender's style), "7", "1-3,9,12-20".

Stdlib only: the render-chunk entry loads this file inside Blender, whose Python has no torch.
A chunk is written back as Flamenco writes its chunks ("1-4", "5,6", "9"), which every parser
here reads again.
"""

from __future__ import annotations


class FrameRangeError(ValueError):
    """A frame range that cannot be read (the message quotes it)."""


def parse_frames(text: str) -> list[int]:
    """The frames of `text`, sorted, each once."""
    frames: set[int] = set()
    cleaned = str(text).replace("..", "-").strip()
    if not cleaned:
        raise FrameRangeError("the frame range is empty (write e.g. 1-250)")
    for part in cleaned.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if lo == "" and sep:  # a negative start: "-5-3"
            lo2, sep2, hi2 = hi.partition("-")
            lo, sep, hi = "-" + lo2, sep2, hi2
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise FrameRangeError(f"cannot read the frame range {text!r}: {part!r} is not N or A-B") from None
        if last < first:
            raise FrameRangeError(f"the frame range {text!r} runs backwards ({part})")
        frames.update(range(first, last + 1))
    return sorted(frames)


def format_frames(frames: list[int]) -> str:
    """Frames as ranges: [1, 2, 3, 4] -> "1-4", [5, 6] -> "5,6", [1, 2, 3, 9] -> "1-3,9"."""
    if not frames:
        raise FrameRangeError("no frames")
    frames = sorted(set(frames))
    parts: list[str] = []
    start = prev = frames[0]
    for f in frames[1:] + [None]:  # type: ignore[list-item]
        if f is not None and f == prev + 1:
            prev = f
            continue
        if prev == start:
            parts.append(str(start))
        elif prev == start + 1:
            parts += [str(start), str(prev)]
        else:
            parts.append(f"{start}-{prev}")
        if f is not None:
            start = prev = f
    return ",".join(parts)


def chunk_frames(frames: list[int], size: int) -> list[list[int]]:
    """Consecutive chunks of at most `size` frames, in order."""
    if size < 1:
        raise FrameRangeError(f"the chunk size must be at least 1, got {size}")
    return [frames[i:i + size] for i in range(0, len(frames), size)]
