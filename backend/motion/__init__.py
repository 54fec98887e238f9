"""Motion import: every motion format users bring, read safely, as one Y-up SMPL-X type.

numpy only: this package must import in Blender's Python (no torch). See README.md.
"""

from .bodydata import NpzBody
from .errors import MotionError
from .loader import SUPPORTED_FORMATS, detect_format, load_motion, save_motion
from .types import CameraTrack, Motion

__all__ = ["CameraTrack", "Motion", "MotionError", "NpzBody", "SUPPORTED_FORMATS", "detect_format",
           "load_motion", "save_motion"]
