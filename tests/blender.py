"""Run a script in real Blender (a subprocess with the bpy module and the add-on enabled)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_blender(script: str, tmp_path: Path, timeout: float = 600, env: dict | None = None) -> dict:
    """Execute `script` in Blender; returns the `result` dict it filled (asserts it did not raise)."""
    path = tmp_path / "blender_script.py"
    out = tmp_path / "blender_result.json"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "blender_entry.py"), str(path), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    if not out.exists():
        raise AssertionError(f"Blender died ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    if not result.get("ok"):
        raise AssertionError(f"Blender script failed:\n{result.get('traceback')}\n--- stderr ---\n{proc.stderr[-3000:]}")
    return result
