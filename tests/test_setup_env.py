"""Set Up Backend: the plan for this machine and the runner that executes it (real processes)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from .blender import run_blender
from .conftest import ROOT


def _setup_env():
    # The add-on's modules import bpy at package level; this one is plain Python.
    spec = importlib.util.spec_from_file_location("dw_setup_env", ROOT / "dreamwaltz_blender" / "setup_env.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_plan_pins_torch_and_builds_gsplat_only_with_cuda(tmp_path):
    env = _setup_env()
    req = ROOT / "backend" / "requirements.txt"
    cpu = env.plan(tmp_path / "venv", req, cuda=False, compiler=False)
    commands = [" ".join(s.command) for s in cpu]
    assert any("torch==2.13.0" in c and env.CPU_INDEX in c for c in commands)
    assert any(str(req) in c for c in commands)
    assert not any("gsplat" in c for c in commands)
    gpu = env.plan(tmp_path / "venv", req, cuda=True, compiler=True)
    gcommands = [" ".join(s.command) for s in gpu]
    assert any("torch==2.13.0" in c and env.CPU_INDEX not in c for c in gcommands)
    assert any("gsplat==1.5.3" in c for c in gcommands) and any("_backend import _C" in c for c in gcommands)
    no_nvcc = env.plan(tmp_path / "venv", req, cuda=True, compiler=False)
    assert not any("_backend import _C" in " ".join(s.command) for s in no_nvcc)


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
