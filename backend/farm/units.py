"""The two units of farm work, as command lines that every adapter (Slurm, OpenJD, Flamenco) runs.

- A render chunk: Blender renders frames A..B of a shot with the add-on enabled, skipping
  frames already written (`render_chunk.py`, run by Blender or by a Python that has `bpy`).
- A training: `python -m backend train --prompt P --out RUNS/NAME --resume`, which starts a
  run, resumes it from its checkpoint, or returns at once when its avatar exists.

Both are safe to run again, so a scheduler may retry, requeue or resubmit them freely.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .frames import chunk_frames, format_frames, parse_frames

RENDER_ENTRY = Path(__file__).resolve().with_name("render_chunk.py")
BACKEND_ROOT = Path(__file__).resolve().parents[2]     # the folder that holds `backend`
MANAGED_TRAIN_OPTIONS = ("--prompt", "--out", "--resume")


class FarmError(ValueError):
    """A farm job that cannot be written, submitted or followed (the message says why)."""


def is_python(exe: str) -> bool:
    """A Python interpreter (python, python3.11, python.exe) rather than a Blender executable."""
    name = Path(exe).name.lower().removesuffix(".exe")
    return re.fullmatch(r"python[0-9.]*", name) is not None


@dataclass(frozen=True)
class RenderJob:
    """A shot's frames in chunks. `blender` is a Blender executable or a Python with the bpy
    module (told apart by its name: python, python3, python3.11...); `env` is what the worker's
    process gets on top of its own (the backend's Python, the body model, a path map)."""

    shot: str
    frames: list[int]
    chunk: int
    out: str | None = None
    blender: str = "blender"
    env: dict[str, str] = field(default_factory=dict)

    def chunks(self) -> list[str]:
        return [format_frames(c) for c in chunk_frames(self.frames, self.chunk)]

    def command(self, frames: str, result: str | None = None) -> list[str]:
        args = ["--frames", frames] + (["--out", self.out] if self.out else []) + \
               (["--result", result] if result else [])
        if is_python(self.blender):
            return [self.blender, str(RENDER_ENTRY), self.shot] + args
        return [self.blender, "-b", self.shot, "--python", str(RENDER_ENTRY), "--"] + args


def render_job(shot: str | os.PathLike, frames: str, chunk: int, out: str | None = None,
               blender: str | None = None, python: str | None = None, body_model: str | None = None,
               path_map: str | None = None) -> RenderJob:
    """A RenderJob from command-line values, checked (paths made absolute where they are local)."""
    shot_path = Path(shot).expanduser().resolve()
    if not shot_path.is_file():
        raise FarmError(f"the shot {shot} does not exist")
    if shot_path.suffix.lower() != ".blend":
        raise FarmError(f"the shot {shot} is not a .blend file")
    frame_list = parse_frames(frames)
    if chunk < 1:
        raise FarmError(f"--chunk must be at least 1, got {chunk}")
    if out is not None and not out.startswith("//"):
        out = str(Path(out).expanduser().absolute())
    env = {}
    if python:
        env["DREAMWALTZ_PYTHON"] = _exe_path(python)
    if body_model:
        env["DREAMWALTZ_SMPLX"] = str(Path(body_model).expanduser().absolute())
    if path_map:
        env["DREAMWALTZ_PATH_MAP"] = path_map
    return RenderJob(str(shot_path), frame_list, chunk, out, _exe_path(blender or "blender"), env)


@dataclass(frozen=True)
class TrainRun:
    index: int
    prompt: str
    name: str


@dataclass(frozen=True)
class TrainJob:
    """One training per prompt, each in its own run folder under `runs_dir`."""

    runs_dir: str
    runs: list[TrainRun]
    python: str = sys.executable
    train_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ranks: int = 1       # > 1: each avatar trained view-parallel by this many ranks (torchrun, one GPU each)

    def out(self, run: TrainRun) -> str:
        return str(Path(self.runs_dir) / run.name)

    def command(self, run: TrainRun) -> list[str]:
        launch = [self.python, "-m", "backend"] if self.ranks <= 1 else \
            [self.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.ranks}",
             "-m", "backend"]
        return launch + ["train", "--prompt", run.prompt, "--out", self.out(run), "--resume"] + self.train_args


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FarmError(f"cannot read the prompts file {path}: {exc.strerror or exc}") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise FarmError(f"the prompts file {path} holds no prompt (one per line; # starts a comment)")
    return prompts


def run_name(index: int, prompt: str) -> str:
    """The run folder of a prompt: its line number and a slug, e.g. 003-a-chef-in-white."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].rstrip("-")
    return f"{index:03d}-{slug or 'avatar'}"


def train_job(prompts_file: str | os.PathLike, runs_dir: str | os.PathLike, train_args: list[str],
              python: str | None = None, ranks: int = 1) -> TrainJob:
    for arg in train_args:
        if arg.split("=", 1)[0] in MANAGED_TRAIN_OPTIONS:
            raise FarmError(f"{arg.split('=', 1)[0]} is set by the farm for each task (the prompts file gives "
                            "--prompt, --runs gives --out, and every task resumes); leave it out of the train options")
    prompts = read_prompts(prompts_file)
    runs = [TrainRun(i, p, run_name(i, p)) for i, p in enumerate(prompts)]
    env = {"PYTHONPATH": str(BACKEND_ROOT)}
    return TrainJob(str(Path(runs_dir).expanduser().absolute()), runs, _exe_path(python or sys.executable),
                    list(train_args), env, max(1, ranks))


def _exe_path(exe: str) -> str:
    """Absolute where it names a local file; a bare name (found on the worker's PATH) stays."""
    path = Path(exe).expanduser()
    if os.sep in exe or (os.altsep and os.altsep in exe) or path.exists():
        return str(path.absolute())
    return exe
