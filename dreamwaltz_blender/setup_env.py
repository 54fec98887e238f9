"""Set Up Backend: a virtual environment with the backend's pinned requirements, from Blender.

The plan (which commands) and the runner (a background process per step, a log, progress,
cancel) are plain Python, so they work and are tested outside Blender; the operator in
`operators_setup.py` only drives them from a timer. Nothing here runs unless the user presses
the button, and never when Blender is set to work offline.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

TORCH_VERSION = "2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclasses.dataclass
class Step:
    label: str
    command: list[str]
    optional: bool = False      # a failure is reported but does not stop set-up
    note_on_failure: str = ""


def has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def has_cuda_compiler() -> bool:
    return shutil.which("nvcc") is not None or Path(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc").exists()


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def plan(venv: Path, requirements: Path, base_python: str | None = None, cuda: bool | None = None,
         compiler: bool | None = None) -> list[Step]:
    """The set-up steps for this machine."""
    cuda = has_nvidia_gpu() if cuda is None else cuda
    compiler = has_cuda_compiler() if compiler is None else compiler
    py = str(venv_python(venv))
    pip = [py, "-m", "pip", "--disable-pip-version-check", "install"]
    torch = pip + [f"torch=={TORCH_VERSION}"] + ([] if cuda else ["--index-url", CPU_INDEX,
                                                                  "--extra-index-url", "https://pypi.org/simple"])
    steps = [
        Step("Create the environment", [base_python or sys.executable, "-m", "venv", str(venv)]),
        Step("Update pip", pip + ["--upgrade", "pip"], optional=True),
        Step(f"Install torch {TORCH_VERSION} ({'CUDA' if cuda else 'CPU'} build)", torch),
        Step("Install the backend's requirements", pip + ["-r", str(requirements)]),
    ]
    if cuda:
        steps.append(Step("Install gsplat", pip + ["gsplat==1.5.3"], optional=True,
                          note_on_failure="the torch rasterizer will be used"))
        if compiler:
            steps.append(Step("Build gsplat's CUDA kernels (about a minute)",
                              [py, "-c", "from gsplat.cuda._backend import _C; assert _C is not None"],
                              optional=True, note_on_failure="the build failed: the torch rasterizer will be used"))
    steps.append(Step("Check the backend", [py, "-c", "import torch, smplx, numpy; print(torch.__version__)"]))
    return steps


class SetupRunner:
    """Runs the steps one after another in a background thread; poll `state` from the UI."""

    def __init__(self, steps: list[Step], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.steps = steps
        self.log_path = log_path
        self.env = env
        self.current = -1
        self.done = False
        self.error: str | None = None
        self.notes: list[str] = []
        self.cancelled = False
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def start(self) -> "SetupRunner":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    @property
    def progress(self) -> float:
        return max(0.0, self.current) / max(len(self.steps), 1) if not self.done else 1.0

    @property
    def label(self) -> str:
        if self.done:
            return "cancelled" if self.cancelled else (f"failed: {self.error}" if self.error else "done")
        return self.steps[self.current].label if self.current >= 0 else "starting"

    def cancel(self) -> None:
        self.cancelled = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            for i, step in enumerate(self.steps):
                if self.cancelled:
                    break
                self.current = i
                log.write(f"\n=== {step.label}: {' '.join(step.command)}\n")
                log.flush()
                try:
                    self._proc = subprocess.Popen(step.command, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=self.env)
                    code = self._proc.wait()
                except OSError as exc:
                    code, log_note = -1, str(exc)
                    log.write(log_note + "\n")
                if self.cancelled:
                    break
                if code != 0:
                    message = f"{step.label} failed (exit {code}); see {self.log_path}"
                    if step.optional:
                        self.notes.append(f"{step.label} failed: {step.note_on_failure or 'skipped'}")
                        continue
                    self.error = message
                    break
        self.done = True
