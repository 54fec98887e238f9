"""Diffusion guidance: Stable Diffusion 1.5 + OpenPose ControlNet loading and score distillation.

torch, diffusers and transformers are imported only when these are used.
"""

from .models import (CONTROLNET_HUB_IDS, SD_HUB_IDS, GuidanceModelError, GuidanceModels, download_help,
                     load_guidance_models, load_tiny_encoder, parse_dtype, prepare_models)
from .sds import KINDS, VIEWS, SDSConfig, SDSGuidance, view_label

__all__ = ["CONTROLNET_HUB_IDS", "SD_HUB_IDS", "GuidanceModelError", "GuidanceModels", "download_help",
           "load_guidance_models", "load_tiny_encoder", "parse_dtype", "prepare_models", "KINDS", "VIEWS", "SDSConfig",
           "SDSGuidance", "view_label"]
