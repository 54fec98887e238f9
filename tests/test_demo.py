"""The main job: `python -m backend demo`, through real Blender, with nothing but the project."""

from __future__ import annotations

import imageio_ffmpeg

from backend.avatar import read_meta

from .conftest import run_backend


def _frames(video) -> tuple[tuple[int, int], int]:
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    return meta["size"], sum(1 for _ in reader)


def test_demo_renders_a_video_and_a_contact_sheet_through_blender(tmp_path):
    out = tmp_path / "demo"
    proc = run_backend("demo", "--out", str(out), "--seconds", "0.3", "--width", "160", "--height", "120",
                       "--gaussians", "4000", check=True)
    assert _frames(out / "demo.mp4") == ((160, 120), 9)
    assert (out / "contact_sheet.png").exists()
    assert "blender: render 9 frames (engine + compositor + PNG)" in proc.stdout
    assert "demo video:" in proc.stdout and "contact sheet:" in proc.stdout


def test_demo_trains_the_avatar_first_when_given_a_prompt(tmp_path):
    models = tmp_path / "models"
    run_backend("dev", "tiny-models", "--out", str(models), check=True)
    out = tmp_path / "demo"
    proc = run_backend("demo", "--out", str(out), "--seconds", "0.2", "--width", "96", "--height", "96",
                       "--prompt", "a chef dressed in white", "--sd-model", str(models / "stable-diffusion"),
                       "--controlnet", str(models / "controlnet"), "--steps", "3", check=True)
    assert read_meta(out / "train" / "avatar")["prompt"] == "a chef dressed in white"
    assert "train an avatar for 'a chef dressed in white'" in proc.stdout
    assert _frames(out / "demo.mp4")[1] == 6
