"""Writing frames: PNG files and MP4 videos, each written atomically."""

from __future__ import annotations

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


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> int:
    """Encode (H, W, 3) uint8 frames as H.264 (yuv420p, playable everywhere); returns the count.
    Odd sizes are padded by one pixel because yuv420p needs even dimensions."""
    import imageio_ffmpeg

    count = 0
    with atomic_path(Path(path), suffix=".mp4") as tmp:
        writer = None
        try:
            for frame in frames:
                h, w = frame.shape[:2]
                frame = np.pad(frame[..., :3], ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                if writer is None:
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), (frame.shape[1], frame.shape[0]), fps=fps, codec="libx264",
                        pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
                        output_params=["-crf", "18", "-f", "mp4"], ffmpeg_log_level="error")
                    writer.send(None)
                writer.send(np.ascontiguousarray(frame))
                count += 1
        finally:
            if writer is not None:
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
