"""What glTF 2.0 with ``KHR_gaussian_splatting`` stores (the Khronos extension, status
"Complete, ratified"; its attributes are those of the April 2026 release candidate): a POINTS
primitive whose attributes are POSITION, KHR_gaussian_splatting:ROTATION (unit xyzw),
:SCALE (linear), :OPACITY (linear, [0,1]), :SH_DEGREE_0_COEF_0 (the f_dc coefficients) and
:SH_DEGREE_l_COEF_n for l = 1..3 (n = 0..2l, m from -l to l), each VEC3 float; the extension
object names the kernel ("ellipse") and colour space. glTF is Y up."""

from __future__ import annotations

EXTENSION = "KHR_gaussian_splatting"
PREFIX = EXTENSION + ":"
GLB_MAGIC, GLB_VERSION = 0x46546C67, 2
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942
FLOAT, BYTE, UNSIGNED_BYTE, SHORT, UNSIGNED_SHORT = 5126, 5120, 5121, 5122, 5123
COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
COLOR_SPACE = "srgb_rec709_display"  # captures and our avatars are trained on sRGB images
NATIVE_UP = "y"


def sh_attribute(degree: int, n: int) -> str:
    return f"{PREFIX}SH_DEGREE_{degree}_COEF_{n}"
