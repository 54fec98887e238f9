"""Body models: the SMPL-X API the rest of the backend poses, and the open template."""

from .joints import JOINT_NAMES, NUM_JOINTS, PARENTS
from .model import BodyModel, BodyModelError, BodyOutput, axis_angle_to_matrix

__all__ = ["JOINT_NAMES", "NUM_JOINTS", "PARENTS", "BodyModel", "BodyModelError", "BodyOutput",
           "axis_angle_to_matrix"]
