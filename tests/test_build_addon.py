"""The extension zip: built, validated by Blender's own tool, installed into Blender and used."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

import numpy as np
import pytest

import build_addon

from .blender import run_blender
from .conftest import ROOT


def test_zip_holds_the_addon_backend_and_manifest_only(tmp_path):
    proc = subprocess.run([sys.executable, "build_addon.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Blender's validator" in proc.stdout and "Success" in proc.stdout
    zips = list(tmp_path.glob("*.zip"))
    assert [z.name for z in zips] == [f"dreamwaltz-{build_addon.project_version()}.zip"]
    names = zipfile.ZipFile(zips[0]).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "client.py" in names
    assert "backend_src/backend/protocol.py" in names and "backend_src/backend/__main__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "bench/", ".venv"))]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_manifest_problems_are_named():
    good = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    assert build_addon.check_manifest(good) == []
    bad = dict(good, version="9.9.9", license=["GPL"], permissions={"files": "x"})
    del bad["tagline"]
    problems = " ".join(build_addon.check_manifest(bad))
    for fragment in ("'tagline'", "9.9.9", "SPDX", "'network'"):
        assert fragment in problems


@pytest.mark.versions
def test_zip_installs_as_an_extension_and_works(tmp_path, avatar_dir):
    """On every supported Blender (scripts/blender_versions.sh): the packaged add-on and the
    backend inside it add an avatar and key a motion."""
    motion = tmp_path / "walk.npz"
    np.savez(motion, poses=np.random.default_rng(0).normal(0, 0.2, (12, 156)), trans=np.zeros((12, 3)),
             mocap_framerate=30.0, gender="neutral")
    build_addon.build(tmp_path / "dist")
    zip_path = next((tmp_path / "dist").glob("*.zip"))
    result = run_blender(f"""
        import sys, addon_utils
        assert bpy.ops.extensions.package_install_files(
            filepath={str(zip_path)!r}, repo="user_default", enable_on_install=True) == {{"FINISHED"}}
        name = "bl_ext.user_default.dreamwaltz"
        result["enabled"] = name in bpy.context.preferences.addons
        result["module"] = sys.modules[name].__file__
        assert bpy.ops.dreamwaltz.add_avatar(filepath={str(avatar_dir)!r}) == {{"FINISHED"}}
        client = sys.modules[name + ".session"].client()
        result["backend_cwd"] = str(sys.modules[name + ".client"].backend_root())
        result["bones"] = len(bpy.context.active_object.data.bones)
        assert bpy.ops.dreamwaltz.import_motion(filepath={str(motion)!r}, use_source_fps=True) == {{"FINISHED"}}
        result["frames"] = [bpy.context.scene.frame_start, bpy.context.scene.frame_end]
        addon_utils.disable(name, default_set=True)
        result["disabled"] = name not in bpy.context.preferences.addons and not hasattr(bpy.types, "DREAMWALTZ_OT_add_avatar")
    """, tmp_path, env={"DREAMWALTZ_TEST_NO_REPO_ADDON": "1", "BLENDER_USER_RESOURCES": str(tmp_path / "user")})
    assert result["enabled"] and result["disabled"]
    assert result["module"].startswith(str(tmp_path / "user"))
    assert result["backend_cwd"].endswith("dreamwaltz/backend_src"), "the packaged backend is the one launched"
    assert result["bones"] == 55
    assert result["frames"][1] - result["frames"][0] + 1 == 12
