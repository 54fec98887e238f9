"""Writing frames: PNG files and MP4 videos, each written atomically."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .files import atomic_path


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """`image` is (H, W, 3|4) uint8 or float in [0, 1]."""
    from PIL import Image

    if image.dtype != np.uint8:
        image = to_uint8(image)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _encoder_failed(exc: BaseException, path: str | os.PathLike) -> OSError:
    err = exc.errno if isinstance(exc, OSError) and exc.errno not in (None, errno.EPIPE) else errno.EIO
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    return OSError(err, f"the video encoder stopped writing ({first}; a full disk or a file size limit?)",
                   os.fspath(path))


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> int:
    """Encode (H, W, 3) uint8 frames as H.264 (yuv420p, playable everywhere); returns the count.
    Odd sizes are padded by one pixel because yuv420p needs even dimensions. An encoder that
    cannot write (a full disk) is an OSError naming `path`; the previous file stays."""
    import imageio_ffmpeg

    count = 0
    with atomic_path(Path(path), suffix=".mp4") as tmp:
        writer = None
        try:
            for frame in frames:
                h, w = frame.shape[:2]
                frame = np.pad(frame[..., :3], ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                try:
                    if writer is None:
                        writer = imageio_ffmpeg.write_frames(
                            str(tmp), (frame.shape[1], frame.shape[0]), fps=fps, codec="libx264",
                            pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
                            output_params=["-crf", "18", "-f", "mp4"], ffmpeg_log_level="error")
                        writer.send(None)
                    writer.send(np.ascontiguousarray(frame))
                except (RuntimeError, OSError) as exc:
                    raise _encoder_failed(exc, path) from None
                count += 1
            if writer is not None:
                done, writer = writer, None
                try:
                    done.close()                 # ffmpeg writes the file's index now: it can fail too
                    written, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))   # ffmpeg may exit 0 anyway
                except (RuntimeError, OSError) as exc:
                    raise _encoder_failed(exc, path) from None
                if written != count:
                    raise _encoder_failed(RuntimeError(f"{written} of {count} frames in the file"), path)
        finally:
            if writer is not None:
                with contextlib.suppress(RuntimeError, OSError):
                    writer.close()
        if count == 0:
            raise ValueError(f"no frames to write to {path}")
    return count


def contact_sheet(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tile equally sized images into one (for a glance at a whole clip)."""
    h, w = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    sheet = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = img[..., :3]
    return sheet
