"""Set Up Backend: a virtual environment with the backend's pinned requirements, from Blender.

The plan (which commands, for which Python and OS) and the runner (a background process per
step, a log, progress, cancel) are plain Python, so they work and are tested outside Blender;
the operator only drives them from a timer. Nothing here runs unless the user presses the
button and confirms the download, and never when Blender is set to work offline.

Every interpreter runs isolated (`-I`: no PYTHON* variables, no user site, not the current
folder on sys.path) in a working folder of ours, so nothing in the user's folders or
environment can stand in for pip, venv or the backend's packages.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

TORCH_VERSION = "2.13.0"
GSPLAT = "gsplat==1.5.3"
TORCH_INDEX = "https://download.pytorch.org/whl/"
PYPI = "https://pypi.org/simple"
CUDA_BUILDS = ((13, 0), (12, 8), (12, 6))   # torch's CUDA builds, newest first
# Approximate downloads in MB (torch's wheel with the NVIDIA libraries it pulls), shown as "about"
TORCH_MB = {("linux", True): 3300, ("windows", True): 2900, ("linux", False): 190, ("windows", False): 120,
            ("darwin", False): 80}
REQUIREMENTS_MB = 160


@dataclasses.dataclass
class Step:
    label: str
    command: list[str]
    optional: bool = False      # a failure is reported but does not stop set-up
    note_on_failure: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """What the environment is made for: the base interpreter's version, the OS, and the GPU."""

    python: tuple[int, int]
    system: str                          # "linux", "windows" or "darwin"
    cuda: tuple[int, int] | None = None  # the CUDA version the NVIDIA driver supports
    compiler: bool = False               # nvcc (and on Windows cl.exe) for gsplat's kernels

    @property
    def torch_build(self) -> str | None:
        """torch's CUDA build for this driver ("cu128"), None for the CPU build."""
        if self.cuda is None or self.system == "darwin":
            return None
        for build in CUDA_BUILDS:
            if self.cuda >= build:
                return f"cu{build[0]}{build[1]}"
        return None


def system_name() -> str:
    return {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")


def driver_cuda() -> tuple[int, int] | None:
    """The CUDA version the NVIDIA driver supports ("CUDA Version: 12.8" in nvidia-smi), or None
    without an NVIDIA GPU."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run([exe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", proc.stdout)
    return (int(match.group(1)), int(match.group(2))) if proc.returncode == 0 and match else None


def has_cuda_compiler(system: str) -> bool:
    nvcc = shutil.which("nvcc") is not None or Path(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc").exists()
    return nvcc and (system != "windows" or shutil.which("cl") is not None)


def python_version(python: str) -> tuple[int, int]:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return sys.version_info[:2]
    out = subprocess.run([python, "-I", "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                         text=True, timeout=60, cwd=os.path.dirname(python) or None, check=True).stdout.split()
    return int(out[0]), int(out[1])


def this_machine(base_python: str | None = None) -> Target:
    system = system_name()
    cuda = driver_cuda()
    return Target(python_version(base_python or sys.executable), system, cuda,
                  cuda is not None and has_cuda_compiler(system))


def venv_python(venv: Path, system: str | None = None) -> Path:
    return venv / ("Scripts/python.exe" if (system or system_name()) == "windows" else "bin/python")


# ---- requirements, per Python --------------------------------------------------------------
_MARKER = re.compile(r'^\s*(python_version|sys_platform)\s*(==|!=|<=|>=|<|>)\s*"([^"]+)"\s*$')
_PLATFORMS = {"linux": "linux", "windows": "win32", "darwin": "darwin"}


def _holds(marker: str, target: Target) -> bool:
    """A requirement's environment marker: clauses on python_version / sys_platform joined by
    `and` (all the backend's file uses); anything else is refused by name."""
    ok = True
    for clause in marker.split(" and "):
        match = _MARKER.match(clause)
        if not match:
            raise ValueError(f"backend/requirements.txt: the marker {clause.strip()!r} is not supported "
                             "(use python_version or sys_platform comparisons joined by 'and')")
        name, op, value = match.groups()
        if name == "python_version":
            have: tuple = target.python
            want: tuple = tuple(int(x) for x in value.split("."))
        else:
            have, want = (_PLATFORMS[target.system],), (value,)
        ok &= {"==": have == want, "!=": have != want, "<": have < want, "<=": have <= want,
               ">": have > want, ">=": have >= want}[op]
    return ok


def requirements_for(target: Target, requirements: Path) -> list[str]:
    """The requirement lines of the backend's file that apply to this Python and OS."""
    out = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, _, marker = line.partition(";")
        if not marker or _holds(marker, target):
            out.append(spec.strip())
    return out


def download_mb(target: Target) -> int:
    return TORCH_MB.get((target.system, target.torch_build is not None), 200) + REQUIREMENTS_MB


def confirmation(target: Target, venv: Path) -> str:
    """What the user agrees to: the download, its size and where it goes."""
    build = f"CUDA {target.torch_build[2:-1]}.{target.torch_build[-1]}" if target.torch_build else "CPU"
    size = download_mb(target)
    size_text = f"about {size / 1000:.1f} GB" if size >= 1000 else f"about {size} MB"
    return (f"Download {size_text} (torch {TORCH_VERSION}, {build} build, and the backend's packages) for "
            f"Python {target.python[0]}.{target.python[1]} into {venv}?")


def plan(venv: Path, requirements: Path, target: Target | None = None, base_python: str | None = None) -> list[Step]:
    """The set-up steps for this machine (or for `target`)."""
    base = base_python or sys.executable
    target = target or this_machine(base)
    py = str(venv_python(venv, target.system))
    pip = [py, "-I", "-m", "pip", "--disable-pip-version-check", "install"]
    build = target.torch_build
    if build is not None:
        index = ["--index-url", TORCH_INDEX + build, "--extra-index-url", PYPI]
    elif target.system == "linux":  # PyPI's Linux torch is the CUDA build: take the CPU one
        index = ["--index-url", TORCH_INDEX + "cpu", "--extra-index-url", PYPI]
    else:                            # PyPI's Windows and macOS torch is the CPU build
        index = []
    label = f"CUDA {build[2:-1]}.{build[-1]}" if build else "CPU"
    steps = [
        Step("Create the environment", [base, "-I", "-m", "venv", str(venv)]),
        Step("Update pip", pip + ["--upgrade", "pip"], optional=True),
        Step(f"Install torch {TORCH_VERSION} ({label} build)", pip + [f"torch=={TORCH_VERSION}"] + index),
        Step("Install the backend's requirements", pip + requirements_for(target, requirements)),
    ]
    if build is not None:
        steps.append(Step("Install gsplat", pip + [GSPLAT], optional=True,
                          note_on_failure="the torch rasterizer will be used"))
        if target.compiler:
            steps.append(Step("Build gsplat's CUDA kernels (about a minute)",
                              [py, "-I", "-c", "from gsplat.cuda._backend import _C; assert _C is not None"],
                              optional=True, note_on_failure="the build failed: the torch rasterizer will be used"))
    steps.append(Step("Check the backend", [py, "-I", "-c", "import torch, smplx, numpy; print(torch.__version__)"]))
    return steps


class SetupRunner:
    """Runs the steps one after another in a background thread; poll `state` from the UI.
    Each step runs in `cwd` (default: the log's folder, which set-up owns)."""

    def __init__(self, steps: list[Step], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.steps = steps
        self.log_path = log_path
        self.env = env
        self.cwd = cwd or log_path.parent
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
        self.cwd.mkdir(parents=True, exist_ok=True)
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
                                                  stdin=subprocess.DEVNULL, env=self.env, cwd=str(self.cwd))
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
