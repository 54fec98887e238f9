"""Fixtures of the farm tests (registered in conftest.py): tiny diffusion models, and a tiny
8-frame shot rendered once by Blender's own Render Animation.

The shot: an avatar moving across the frame (keyed), a static Gaussian PLY, a plate image
sequence through the compositor, 64x48 pixels, the DreamWaltz engine. It is saved twice: as
made here (`shot.blend`), and as a Windows machine would have saved it, its avatar, PLY and
plate named `P:\\dw\\assets\\...` (`shot_mapped.blend`), which resolves here only through
`path_map`. `ref/0001.png`... is the one-process render that farm renders must equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from .blender import run_blender

FRAMES = 8
SIZE = (64, 48)


@dataclass(frozen=True)
class Shot:
    root: Path
    blend: Path
    mapped_blend: Path
    path_map: str
    assets: Path

    def ref(self, frame: int) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(self.root / "ref" / f"{frame:04d}.png"))


def _plate(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(1, FRAMES + 1):
        img = np.stack([(xx * 255 // w + 20 * i) % 256, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"plate_{i:04d}.png")
    return folder / "plate_0001.png"


@pytest.fixture(scope="session")
def farm_shot(tmp_path_factory, body) -> Shot:
    import torch

    from backend.avatar import init_template_avatar, pose_with_params, save_avatar
    from backend.ply import write_ply

    root = tmp_path_factory.mktemp("farm-shot")
    assets = root / "assets"
    avatar = init_template_avatar(body, 1500, seed=2)
    save_avatar(avatar, assets / "avatar")
    with torch.no_grad():
        write_ply(assets / "statue.ply", pose_with_params(avatar))
    plate = _plate(assets / "plate")
    blend, mapped = root / "shot.blend", root / "shot_mapped.blend"
    run_blender(f"""
        scene = bpy.context.scene
        scene_camera((0.0, -4.5, 0.9), (1.5708, 0.0, 0.0))
        bpy.ops.dreamwaltz.add_avatar(filepath={str(assets / "avatar")!r})
        arm = bpy.context.active_object
        arm.location = (-0.5, 0.0, 0.0)
        arm.keyframe_insert("location", frame=1)
        arm.location = (0.5, 0.0, 0.0)
        arm.keyframe_insert("location", frame={FRAMES})
        assert bpy.ops.dreamwaltz.import_ply(filepath={str(assets / "statue.ply")!r}) == {{"FINISHED"}}
        statue = [o for o in bpy.data.objects if "dreamwaltz_ply" in o][0]
        statue.location.x = 1.2
        assert bpy.ops.dreamwaltz.setup_plate(filepath={str(plate)!r}) == {{"FINISHED"}}
        bpy.ops.dreamwaltz.use_engine()
        scene.frame_start, scene.frame_end = 1, {FRAMES}
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGB"
        scene.render.filepath = "//ref/####"
        bpy.ops.wm.save_as_mainfile(filepath={str(blend)!r})
        bpy.ops.render.render(animation=True)
        arm["dreamwaltz_avatar"] = "P:\\\\dw\\\\assets\\\\avatar"
        statue["dreamwaltz_ply"] = "P:\\\\dw\\\\assets\\\\statue.ply"
        for plate in [*bpy.data.movieclips, *bpy.data.images]:
            if plate.get("dreamwaltz_plate"):
                plate.filepath = "P:\\\\dw\\\\assets\\\\plate\\\\plate_0001.png"
        bpy.ops.wm.save_as_mainfile(filepath={str(mapped)!r}, copy=True)
        result["size"] = [scene.render.resolution_x, scene.render.resolution_y]
    """, root)
    shot = Shot(root, blend, mapped, f"P:\\dw={root}", assets)
    first, last = shot.ref(1), shot.ref(FRAMES)
    assert first.shape == (SIZE[1], SIZE[0], 3) and (first != last).any(), "the reference frames differ"
    return shot


def frames_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def assert_equals_reference(shot: Shot, folder: Path, frames: range) -> None:
    from PIL import Image

    assert frames_in(folder) == [f"{f:04d}.png" for f in frames]
    for f in frames:
        got = np.asarray(Image.open(folder / f"{f:04d}.png"))
        assert np.array_equal(got, shot.ref(f)), f"frame {f} differs from the one-process render"


@pytest.fixture(scope="session")
def farm_tiny_models(tmp_path_factory) -> Path:
    from backend.guidance.configs import write_model_folders

    out = tmp_path_factory.mktemp("farm-tiny-models")
    write_model_folders(out)
    return out


def tiny_train_args(models: Path, steps: int) -> list[str]:
    return ["--sd-model", str(models / "stable-diffusion"), "--controlnet", str(models / "controlnet"),
            "--steps", str(steps), "--views", "1", "--resolution", "32", "--num-gaussians", "800",
            "--preview-every", "0", "--device", "cpu"]
