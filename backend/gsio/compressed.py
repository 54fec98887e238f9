"""What SuperSplat / PlayCanvas compressed PLY stores, shared by its reader and writer: chunks
of 256 Gaussians, each with float bounds (position, log scale, colour), and per Gaussian four
uint32 words: position and log scale as 11-10-11 bits within the chunk bounds, rotation as the
smallest three quaternion components (2-bit index of the largest, 3×10 bits), colour and opacity
as 8-8-8-8; higher SH as uchar f_rest_* in an 'sh' element, value = (n - 0.5)·8 with n in [0,1]."""

from __future__ import annotations

CHUNK = 256
CHUNK_PROPS = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
               "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z")
COLOR_PROPS = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
VERTEX_PROPS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
SQRT1_2 = 0.7071067811865476
NATIVE_UP = "-y"
