"""What Niantic's ``.spz`` stores, shared by its reader and writer (nianticlabs/spz, format
versions 1-4). Versions 1-3: one gzip stream of a 16-byte header (magic "NGSP", version, count,
SH degree, fractional bits, flags, reserved) then positions, alphas, colours, scales, rotations
and SH as planes. Version 4: a plain 32-byte header (…, stream count, TOC offset), a TOC of
(compressed, uncompressed) u64 sizes, and one zstd stream per plane. Encodings: positions 24-bit
fixed point (float16 in version 1); alpha = opacity·255; colour = f_dc·0.15·255 + 127.5; scale =
(ln s + 10)·16; rotation x y z w (first three as u8 in versions 1-2, smallest three in 2+10×3
bits from version 3); SH (coefficient outer, channel inner) = c·128 + 128. Frame: RUB
(x right, y up, z back), so "y" up."""

from __future__ import annotations

MAGIC = 0x5053474E
COLOR_SCALE = 0.15
SQRT1_2 = 0.7071067811865476
MAX_FILE_DEGREE = 4
NATIVE_UP = "y"


def rest_dim(degree: int) -> int:
    return (degree + 1) ** 2 - 1
