"""Run a script in real Blender (a subprocess with the bpy module and the add-on enabled).

Which Blender: the bpy module of this Python (5.0, the project's .venv), or the Python named by
$DREAMWALTZ_TEST_BLENDER (a virtual environment with another bpy wheel, made by
scripts/blender_versions.sh). The backend then stays in this Python, which has torch.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_BLENDER = "DREAMWALTZ_TEST_BLENDER"


def blender_python() -> str:
    return os.environ.get(ENV_BLENDER) or sys.executable


@functools.cache
def has_gpu_init(python: str) -> bool:
    """Whether that Python's Blender can make a background GPU context (`gpu.init`, 5.3 on)."""
    probe = "import bpy, gpu, sys; sys.exit(not hasattr(gpu, 'init'))"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def run_blender(script: str, tmp_path: Path, timeout: float = 600, env: dict | None = None,
                python: str | None = None) -> dict:
    """Execute `script` in Blender (`python`'s, by default `blender_python()`); returns the
    `result` dict it filled (asserts it did not raise)."""
    path = tmp_path / "blender_script.py"
    out = tmp_path / "blender_result.json"
    if out.exists():
        out.unlink()
    path.write_text(textwrap.dedent(script))
    child_env = {**os.environ, **(env or {})}
    python = python or blender_python()
    if python != sys.executable:
        child_env.setdefault("DREAMWALTZ_PYTHON", sys.executable)
    proc = subprocess.run([python, str(ROOT / "tests" / "blender_entry.py"), str(path), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=child_env)
    if not out.exists():
        raise AssertionError(f"Blender died ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    if not result.get("ok"):
        raise AssertionError(f"Blender script failed:\n{result.get('traceback')}\n--- stderr ---\n{proc.stderr[-3000:]}")
    result["_stdout"], result["_stderr"] = proc.stdout, proc.stderr
    return result
