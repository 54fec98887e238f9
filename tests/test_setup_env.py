"""Set Up Backend: the plan for this machine and the runner that executes it (real processes)."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

from .blender import run_blender
from .conftest import ROOT


def _setup_env():
    # The add-on's modules import bpy at package level; this one is plain Python.
    spec = importlib.util.spec_from_file_location("dw_setup_env", ROOT / "dreamwaltz_blender" / "setup_env.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("python", [(3, 11), (3, 13)])
@pytest.mark.parametrize("system", ["linux", "windows"])
@pytest.mark.parametrize("cuda", [None, (12, 8), (13, 1)])
def test_plan_per_python_os_and_gpu(tmp_path, python, system, cuda):
    """Blender 4.2-5.0 ship Python 3.11, 5.1+ Python 3.13; Linux and Windows; CPU or an NVIDIA driver."""
    env = _setup_env()
    req = ROOT / "backend" / "requirements.txt"
    target = env.Target(python, system, cuda, compiler=cuda is not None)
    steps = env.plan(tmp_path / "venv", req, target, base_python="/blender/python/bin/python3")
    commands = [s.command for s in steps]
    venv_py = str(tmp_path / "venv" / ("Scripts/python.exe" if system == "windows" else "bin/python"))
    assert commands[0][:4] == ["/blender/python/bin/python3", "-I", "-m", "venv"]
    assert all(c[0] == venv_py and c[1] == "-I" for c in commands[1:]), "every interpreter call is isolated"
    torch = next(s for s in steps if s.label.startswith("Install torch"))
    assert f"torch=={env.TORCH_VERSION}" in torch.command
    index = torch.command[torch.command.index("--index-url") + 1] if "--index-url" in torch.command else None
    build = {None: None, (12, 8): "cu128", (13, 1): "cu130"}[cuda]
    if build:
        assert index == env.TORCH_INDEX + build and f"CUDA {build[2:-1]}.{build[-1]}" in torch.label
    elif system == "linux":
        assert index == env.TORCH_INDEX + "cpu" and "CPU" in torch.label
    else:
        assert index is None and "CPU" in torch.label, "PyPI's Windows torch is the CPU build"
    packages = next(s for s in steps if s.label == "Install the backend's requirements").command
    numpy = [p for p in packages if p.startswith("numpy")]
    assert numpy == (["numpy>=2.1,<3"] if python >= (3, 13) else ["numpy>=1.26,<2"])
    assert "smplx==0.1.28" in packages and not [p for p in packages if ";" in p]
    labels = [s.label for s in steps]
    assert ("Install gsplat" in labels) == (build is not None)
    assert any("kernels" in x for x in labels) == (build is not None)
    text = env.confirmation(target, tmp_path / "venv")
    assert "GB" in text if build else "MB" in text
    assert f"Python {python[0]}.{python[1]}" in text and str(tmp_path / "venv") in text


def test_an_old_driver_gets_the_cpu_build_and_markers_are_checked(tmp_path):
    env = _setup_env()
    assert env.Target((3, 11), "linux", (12, 2)).torch_build is None
    bad = tmp_path / "requirements.txt"
    bad.write_text('numpy; platform_machine == "x86_64"\n')
    with pytest.raises(ValueError, match="platform_machine"):
        env.requirements_for(env.Target((3, 11), "linux"), bad)


def test_steps_run_isolated_in_a_folder_of_ours(tmp_path):
    """A `pip` or `venv` module planted on PYTHONPATH or in the user's folder is never run."""
    env = _setup_env()
    planted = tmp_path / "planted"
    for name in ("pip", "venv"):
        (planted / name).mkdir(parents=True)
        (planted / name / "__init__.py").write_text("")
        (planted / name / "__main__.py").write_text("print('PLANTED'); raise SystemExit(0)")
    steps = env.plan(tmp_path / "env" / "venv", ROOT / "backend" / "requirements.txt",
                     env.Target(sys.version_info[:2], env.system_name()), base_python=sys.executable)
    where = env.Step("where", [sys.executable, "-I", "-c", "import os, sys; print('CWD', os.getcwd(), sys.flags.isolated)"])
    runner = env.SetupRunner([steps[0], where], tmp_path / "env" / "setup.log", cwd=tmp_path / "env",
                             env={**os.environ, "PYTHONPATH": str(planted)})
    old = os.getcwd()
    os.chdir(planted)
    try:
        runner.start().wait(300)
    finally:
        os.chdir(old)
    log = (tmp_path / "env" / "setup.log").read_text()
    assert runner.error is None, log
    assert "PLANTED" not in log
    assert f"CWD {tmp_path / 'env'} 1" in log
    assert env.venv_python(tmp_path / "env" / "venv").exists()


def test_runner_runs_steps_reports_optional_failures_and_stops_on_errors(tmp_path):
    env = _setup_env()
    py = sys.executable
    venv = tmp_path / "venv"
    steps = [env.Step("make a venv", [py, "-m", "venv", "--without-pip", str(venv)]),
             env.Step("optional thing", [py, "-c", "raise SystemExit(3)"], optional=True, note_on_failure="skipped it"),
             env.Step("check", [str(env.venv_python(venv)), "-c", "print('hello from the venv')"])]
    runner = env.SetupRunner(steps, tmp_path / "setup.log").start()
    runner.wait(120)
    assert runner.done and runner.error is None and runner.progress == 1.0
    assert runner.notes == ["optional thing failed: skipped it"]
    assert "hello from the venv" in (tmp_path / "setup.log").read_text()
    failing = env.SetupRunner([env.Step("broken", [py, "-c", "raise SystemExit(2)"]),
                               env.Step("never", [py, "-c", "print('never')"])], tmp_path / "fail.log").start()
    failing.wait(60)
    assert "broken failed (exit 2)" in failing.error and str(tmp_path / "fail.log") in failing.error
    assert "=== never" not in (tmp_path / "fail.log").read_text(), "set-up stops at the first failed step"


def test_runner_cancel_stops_the_running_step(tmp_path):
    env = _setup_env()
    runner = env.SetupRunner([env.Step("slow", [sys.executable, "-c", "import time; time.sleep(60)"]),
                              env.Step("after", [sys.executable, "-c", "print('after')"])], tmp_path / "c.log").start()
    time.sleep(1.0)
    t0 = time.monotonic()
    runner.cancel()
    runner.wait(20)
    assert runner.done and runner.cancelled and time.monotonic() - t0 < 10
    assert "=== after" not in (tmp_path / "c.log").read_text()


def test_setup_refuses_when_blender_is_offline(tmp_path):
    result = run_blender("""
        result["online"] = bpy.app.online_access
        try:
            bpy.ops.dreamwaltz.setup_backend()
            result["error"] = None
        except RuntimeError as exc:
            result["error"] = str(exc)
    """, tmp_path)
    assert result["online"] is False  # background Blender starts offline unless told otherwise
    assert "work offline" in result["error"] and "Backend Python" in result["error"]
