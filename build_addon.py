"""Build the Blender extension zip: the add-on, the backend source it launches, the manifest.

    python build_addon.py [--out DIR]

The version comes from one place, `backend/__init__.py`; the manifest must agree. The manifest
is checked for what Blender and the project require, then the zip is checked with Blender's own
extension validator when the `bpy` module is installed. Tests, caches and data stay out.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "dreamwaltz_blender"
BACKEND = ROOT / "backend"
MANIFEST = ROOT / "blender_manifest.toml"
REQUIRED = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
            "blender_version_min", "license")
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache"}


class BuildError(Exception):
    pass


def project_version() -> str:
    text = (BACKEND / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise BuildError("backend/__init__.py has no __version__")
    return match.group(1)


def check_manifest(manifest: dict) -> list[str]:
    """Problems with the manifest, as sentences (empty when it is fine)."""
    problems = [f"the manifest lacks the field {k!r}" for k in REQUIRED if k not in manifest]
    if manifest.get("id") != "dreamwaltz":
        problems.append(f"the manifest id must be 'dreamwaltz', got {manifest.get('id')!r}")
    if manifest.get("version") != project_version():
        problems.append(f"the manifest version {manifest.get('version')!r} differs from backend.__version__ "
                        f"{project_version()!r} (the one place the version is set)")
    if manifest.get("blender_version_min") != "4.2.0":
        problems.append("blender_version_min must be 4.2.0")
    licenses = manifest.get("license") or []
    if not licenses or not all(isinstance(x, str) and x.startswith("SPDX:") for x in licenses):
        problems.append("license must be a list of SPDX identifiers such as 'SPDX:GPL-3.0-or-later'")
    permissions = manifest.get("permissions") or {}
    for name in ("files", "network"):
        reason = permissions.get(name)
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"the permission {name!r} must be declared with its reason")
    return problems


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not (SKIP_PARTS & set(p.parts))
                  and p.suffix not in (".pyc", ".pyo"))


def build(out_dir: Path) -> Path:
    manifest = tomllib.loads(MANIFEST.read_text())
    problems = check_manifest(manifest)
    if problems:
        raise BuildError("; ".join(problems))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    from backend.files import atomic_path

    with atomic_path(target, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(MANIFEST, "blender_manifest.toml")
        for path in _files(ADDON):
            zf.write(path, path.relative_to(ADDON).as_posix())
        for path in _files(BACKEND):
            zf.write(path, ("backend_src" / path.relative_to(ROOT)).as_posix())
        zf.writestr("backend_src/requirements.txt", (ROOT / "requirements.txt").read_text())
    return target


def blender_validator() -> Path | None:
    """Blender's own extension tool (blender_ext.py), when the bpy module is installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("bpy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        hits = sorted(Path(base).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if hits:
            return hits[-1]
    return None


def validate_with_blender(zip_path: Path) -> str:
    tool = blender_validator()
    if tool is None:
        return "Blender's validator is not installed here (no bpy module); only the project's checks ran"
    proc = subprocess.run([sys.executable, str(tool), "validate", str(zip_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"Blender's extension validator refused {zip_path.name}: {(proc.stdout + proc.stderr).strip()}")
    return f"Blender's validator: {(proc.stdout.strip().splitlines() or ['ok'])[-1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        path = build(Path(args.out))
        note = validate_with_blender(path)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"built {path} ({path.stat().st_size / 1e6:.1f} MB); {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
