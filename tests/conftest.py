"""Shared fixtures: one cache for the generated open template per test session (subprocesses,
the server and Blender inherit it through DREAMWALTZ_CACHE), the real data folder, and small
template avatars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .farm_shot import farm_shot, farm_tiny_models  # noqa: F401  (fixtures of the farm tests)

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    if "DREAMWALTZ_CACHE" not in os.environ:
        cache = ROOT / ".cache" / "test"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["DREAMWALTZ_CACHE"] = str(cache)
    os.environ.pop("DREAMWALTZ_SMPLX", None)


def data_dir() -> Path | None:
    """The real test data (../shared/data beside the project, or $DREAMWALTZ_DATA)."""
    env = os.environ.get("DREAMWALTZ_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if path is None:
        pytest.skip("the real test data (../shared/data) is not on this machine")
    return path


@pytest.fixture(scope="session")
def body():
    from backend.body import BodyModel

    return BodyModel.load()


@pytest.fixture(scope="session")
def small_avatar(body):
    from backend.avatar import init_template_avatar

    return init_template_avatar(body, 6000, seed=1)


@pytest.fixture(scope="session")
def avatar_dir(small_avatar, tmp_path_factory) -> Path:
    from backend.avatar import save_avatar

    return save_avatar(small_avatar, tmp_path_factory.mktemp("avatars") / "mannequin")


def run_backend(*args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m backend ...` in a real subprocess, as a user would run it."""
    proc = subprocess.run([sys.executable, "-m", "backend", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"backend {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Tiny random-weight SD 1.5 + ControlNet folders, per test module (training tests)."""
    from backend.guidance.configs import write_model_folders

    out = tmp_path_factory.mktemp("tiny-models")
    write_model_folders(out)
    return out


@pytest.fixture(scope="module")
def models(tiny_dir):
    from backend.guidance import load_guidance_models

    return load_guidance_models(tiny_dir / "stable-diffusion", tiny_dir / "controlnet", "cpu")
