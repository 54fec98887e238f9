"""Hybrid Gaussian avatars: data, posing, template initialisation and avatar folders."""

from .files import AvatarFileError, load_avatar, read_meta, save_avatar
from .gaussians import Avatar, AvatarMeta, BoundGaussians, FreeGaussians
from .posing import PoseError, pose_with_params, pose_with_transforms
from .template_init import AvatarInitError, init_template_avatar

__all__ = ["Avatar", "AvatarMeta", "BoundGaussians", "FreeGaussians", "AvatarFileError",
           "load_avatar", "read_meta", "save_avatar", "PoseError", "pose_with_params",
           "pose_with_transforms", "AvatarInitError", "init_template_avatar"]
