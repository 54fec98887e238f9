"""Add-on preferences: which Python runs the backend, the device, and where models live."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty


def _package() -> str:
    return __package__ or "dreamwaltz_blender"


class DreamWaltzPreferences(bpy.types.AddonPreferences):
    bl_idname = _package()

    python: StringProperty(  # type: ignore[valid-type]
        name="Backend Python", subtype="FILE_PATH",
        description="An interpreter with torch for the backend (empty: $DREAMWALTZ_PYTHON, the set-up "
                    "environment, else Blender's own Python)")
    device: EnumProperty(  # type: ignore[valid-type]
        name="Device", items=[("auto", "Automatic", "CUDA when available"), ("cuda", "CUDA", ""), ("cpu", "CPU", "")])
    smplx_file: StringProperty(  # type: ignore[valid-type]
        name="SMPL-X File", subtype="FILE_PATH",
        description="Your licensed SMPLX_NEUTRAL_2020.npz (empty: the open template, a procedural mannequin)")
    sd_model: StringProperty(  # type: ignore[valid-type]
        name="Stable Diffusion 1.5", default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        description="A local diffusers folder or a Hugging Face id")
    controlnet: StringProperty(  # type: ignore[valid-type]
        name="OpenPose ControlNet", default="lllyasviel/control_v11p_sd15_openpose",
        description="A local diffusers folder or a Hugging Face id")
    tiny_encoder: StringProperty(  # type: ignore[valid-type]
        name="Fast Encoder (TAESD)", default="",
        description="A TAESD AutoencoderTiny folder or Hugging Face id (e.g. madebyollin/taesd): about twice as "
                    "fast avatar creation; its effect on quality is not yet measured. Empty: the SD VAE")
    compile_models: BoolProperty(  # type: ignore[valid-type]
        name="Compile Diffusion Models", default=False,
        description="torch.compile the UNet, ControlNet and encoder: 15-30 % faster iterations after 1.5-3 "
                    "minutes of compiling per run (CUDA)")
    cache_dir: StringProperty(  # type: ignore[valid-type]
        name="Cache Folder", subtype="DIR_PATH",
        description="Where generated models and checkpoints go (empty: the extension's user folder)")

    def draw(self, context: Any) -> None:
        layout = self.layout
        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        box.prop(self, "python", text="Use This Python")
        row = box.row()
        row.operator("dreamwaltz.setup_backend", icon="IMPORT")
        row.operator("dreamwaltz.restart_backend", icon="FILE_REFRESH")
        from . import session

        current = session._state["client"]
        if current is not None and current.hello:
            box.label(text=f"Running: {current.python} ({current.python_source}); rasterizer "
                           f"{current.hello.get('rasterizer')}")
        box.label(text=f"Set-up environment: {session.backend_env_dir()}")
        col = layout.column()
        for name in ("device", "smplx_file", "sd_model", "controlnet", "tiny_encoder", "compile_models", "cache_dir"):
            col.prop(self, name)


CLASSES = (DreamWaltzPreferences,)
