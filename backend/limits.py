"""The bounds every loader of untrusted files keeps to (motion files, body models, avatars).

Files come from strangers (dataset mirrors, forums, shared drives). Each limit below is far
above what a real file needs and far below what would take a machine down; a file beyond one
is refused with a message naming the file, the key and the limit. numpy-free and torch-free:
the motion package imports this in Blender's Python.
"""

from __future__ import annotations

MAX_FILE_BYTES = 1 << 30
"""A pickle or JSON file is read whole into memory: at most 1 GiB."""

MAX_JSON_BYTES = 128 << 20
"""A JSON motion file (Motion-X-ReEnact): at most 128 MiB (Python holds each number in ~32 bytes)."""

MAX_ARRAY_BYTES = 1 << 30
"""One array of a .npy / .npz / pickle: at most 1 GiB once decoded."""

MAX_FRAMES = 1 << 21
"""Frames of one motion (2,097,152: 4.8 hours at 120 fps), as loaded and after resampling."""

PICKLE_MAX_DEPTH = 64
"""Containers nested inside each other in a pickle (real motion pickles: under 10)."""

PICKLE_MAX_OPS = 1_000_000
"""Opcodes of one pickle, i.e. objects it can make (real motion pickles: about a thousand)."""

PICKLE_MAX_LONG_BYTES = 256
"""Bytes of one pickled integer (torch's magic number has 10)."""

DECODE_BUDGET_FACTOR = 4
DECODE_BUDGET_BASE = 64 << 20
"""Arrays a pickle's torch stand-ins may materialise: 4 × the file size + 64 MiB in all
(strides can repeat a small storage; the file size bounds everything else)."""
