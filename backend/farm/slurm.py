"""Slurm: array jobs for render chunks and trainings, written as sbatch scripts, submitted,
waited for and reported per task. Slurm schedules; this module only writes and reads.

A job folder holds `job.sbatch`, `job.json` (what each array task does, and the job id once
submitted), `logs/task-N.log` (appended across requeues) and `tasks/N.jsonl` (one line per
attempt of task N: host, CUDA_VISIBLE_DEVICES, restart count, written by the task before it
starts its unit) plus, for renders, `tasks/N.result.json` (frames written and skipped).
Each task `exec`s its unit, so Slurm's signals (a requeue, preemption, the warning before the
time limit) reach Blender or Python directly: training saves a checkpoint on SIGTERM.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_text_atomic
from .frames import parse_frames
from .units import FarmError, RenderJob, TrainJob

DEFAULT_MAX_ARRAY = 1001      # Slurm's default MaxArraySize


@dataclass
class SlurmOptions:
    max_parallel: int | None = None     # at most this many tasks at once (%N)
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None             # Slurm's formats: MM, HH:MM:SS, D-HH:MM ...
    partition: str | None = None
    job_name: str | None = None
    sbatch_args: list[str] = field(default_factory=list)   # more `#SBATCH` options, verbatim


def parse_time(text: str) -> int:
    """Seconds in one of Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise FarmError(f"--time {text!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if b is None:
        return int(a) * 60
    if c is None:
        return int(a) * 60 + int(b)
    return (int(a) * 60 + int(b)) * 60 + int(c)


def warning_seconds(limit_s: int) -> int:
    """When to warn before the time limit: 2 minutes, less on short limits."""
    return max(10, min(120, limit_s // 5))


def _header(name: str, count: int, job_dir: Path, opts: SlurmOptions, warn: bool) -> list[str]:
    if count > DEFAULT_MAX_ARRAY:
        raise FarmError(f"{count} array tasks are more than Slurm's usual limit ({DEFAULT_MAX_ARRAY}, MaxArraySize): "
                        "use larger chunks")
    array = f"0-{count - 1}" + (f"%{opts.max_parallel}" if opts.max_parallel else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={opts.job_name or name}", f"#SBATCH --array={array}",
             f"#SBATCH --output={job_dir / 'logs'}/task-%a.log", "#SBATCH --open-mode=append", "#SBATCH --requeue",
             f"#SBATCH --chdir={job_dir}"]
    if opts.gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{opts.gpus_per_task}")
    if opts.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={opts.cpus_per_task}")
    if opts.mem:
        lines.append(f"#SBATCH --mem={opts.mem}")
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.time:
        lines.append(f"#SBATCH --time={opts.time}")
        if warn:  # SIGTERM to the task itself (B:) before the limit, so it saves a checkpoint in time
            lines.append(f"#SBATCH --signal=B:TERM@{warning_seconds(parse_time(opts.time))}")
    lines += [f"#SBATCH {a}" for a in opts.sbatch_args]
    return lines


# The attempt record, written by bash before the unit starts (values are plain words: escaped anyway).
_RECORD = r'''record() {  # TASKS: the job folder's tasks/
  local esc='s/\\/\\\\/g; s/"/\\"/g'
  local host gpus
  host=$(hostname | sed "$esc"); gpus=$(printf '%s' "${CUDA_VISIBLE_DEVICES-}" | sed "$esc")
  mkdir -p "$TASKS"
  printf '{"task": %s, "job": "%s", "array_job": "%s", "attempt": %s, "host": "%s", "cuda_visible_devices": %s, "started": %s}\n' \
    "$SLURM_ARRAY_TASK_ID" "$SLURM_JOB_ID" "${SLURM_ARRAY_JOB_ID-}" "${SLURM_RESTART_COUNT:-0}" "$host" \
    "$( [ -n "${CUDA_VISIBLE_DEVICES+x}" ] && printf '"%s"' "$gpus" || printf null)" "$(date +%s)" \
    >> "$TASKS/$SLURM_ARRAY_TASK_ID.jsonl"
  echo "dreamwaltz farm: task $SLURM_ARRAY_TASK_ID attempt ${SLURM_RESTART_COUNT:-0} on $host, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
}'''


def _bash_array(name: str, values: list[str]) -> str:
    return f"{name}=(" + " ".join(shlex.quote(v) for v in values) + ")"


def _exports(env: dict[str, str]) -> list[str]:
    out = []
    for key, value in env.items():
        if key == "PYTHONPATH":
            out.append(f"export PYTHONPATH={shlex.quote(value)}${{PYTHONPATH:+:$PYTHONPATH}}")
        else:
            out.append(f"export {key}={shlex.quote(value)}")
    return out


def render_script(job: RenderJob, job_dir: Path, opts: SlurmOptions) -> str:
    chunks = job.chunks()
    lines = _header(f"dreamwaltz-render-{Path(job.shot).stem}", len(chunks), job_dir, opts, warn=False)
    cmd = job.command("FRAMES", result="RESULT")
    cmd_text = " ".join('"$FRAMES"' if a == "FRAMES" else '"$RESULT"' if a == "RESULT" else shlex.quote(a)
                        for a in cmd)
    lines += ["# written by `python -m backend farm slurm render`: array task N renders chunk N of the shot's frames,",
              "# skipping frames already written (safe to requeue or resubmit)",
              "set -euo pipefail", f"TASKS={shlex.quote(str(job_dir / 'tasks'))}", _RECORD,
              _bash_array("CHUNKS", chunks), 'FRAMES=${CHUNKS[$SLURM_ARRAY_TASK_ID]}',
              'RESULT="$TASKS/$SLURM_ARRAY_TASK_ID.result.json"',
              "record", *_exports(job.env), f"exec {cmd_text}", ""]
    return "\n".join(lines)


def train_script(job: TrainJob, job_dir: Path, opts: SlurmOptions) -> str:
    lines = _header("dreamwaltz-train", len(job.runs), job_dir, opts, warn=True)
    sample = job.command(job.runs[0])
    i_prompt, i_out = sample.index("--prompt") + 1, sample.index("--out") + 1
    parts = []
    for k, a in enumerate(sample):
        parts.append('"${PROMPTS[$i]}"' if k == i_prompt else '"${OUTS[$i]}"' if k == i_out else shlex.quote(a))
    lines += ["# written by `python -m backend farm slurm train`: array task N trains prompt N into its run folder;",
              "# --resume starts, resumes from the checkpoint or returns at once, so requeues and resubmits are safe",
              "set -euo pipefail", f"TASKS={shlex.quote(str(job_dir / 'tasks'))}", _RECORD,
              _bash_array("PROMPTS", [r.prompt for r in job.runs]),
              _bash_array("OUTS", [job.out(r) for r in job.runs]), "i=$SLURM_ARRAY_TASK_ID",
              "record", *_exports(job.env), f"exec {' '.join(parts)}", ""]
    return "\n".join(lines)


def write_job(job: RenderJob | TrainJob, job_dir: str | Path, opts: SlurmOptions) -> Path:
    """Write the job folder (script and description); returns the script's path."""
    job_dir = Path(job_dir).absolute()
    (job_dir / "logs").mkdir(parents=True, exist_ok=True)
    (job_dir / "tasks").mkdir(exist_ok=True)
    if isinstance(job, RenderJob):
        script = render_script(job, job_dir, opts)
        tasks = [{"task": i, "frames": c} for i, c in enumerate(job.chunks())]
        info = {"kind": "render", "shot": job.shot, "out": job.out, "tasks": tasks}
    else:
        script = train_script(job, job_dir, opts)
        tasks = [{"task": r.index, "prompt": r.prompt, "run": job.out(r)} for r in job.runs]
        info = {"kind": "train", "runs": job.runs_dir, "tasks": tasks}
    path = job_dir / "job.sbatch"
    write_text_atomic(path, script)
    path.chmod(0o755)
    write_text_atomic(job_dir / "job.json", json.dumps(info, indent=1))
    return path


def _slurm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = shutil.which(args[0])
    if exe is None:
        raise FarmError(f"{args[0]} is not on PATH: this machine is not a Slurm submit host "
                        "(scripts/slurm_up.sh starts a single-node cluster for tests)")
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout)


def submit(job_dir: str | Path) -> str:
    """sbatch the job folder's script; returns the job id (also stored in job.json)."""
    job_dir = Path(job_dir).absolute()
    proc = _slurm("sbatch", "--parsable", str(job_dir / "job.sbatch"))
    if proc.returncode != 0:
        raise FarmError(f"sbatch refused {job_dir / 'job.sbatch'}: {proc.stderr.strip() or proc.stdout.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    info = json.loads((job_dir / "job.json").read_text())
    info.setdefault("submissions", []).append({"job_id": job_id, "time": int(time.time())})
    info["job_id"] = job_id
    write_text_atomic(job_dir / "job.json", json.dumps(info, indent=1))
    return job_id


def queued(job_id: str) -> dict[int, str]:
    """Array task -> state, for the tasks still in the queue (pending, running, requeued...)."""
    proc = _slurm("squeue", "-h", "-r", "-j", job_id, "-o", "%K %T")
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return {}
        raise FarmError(f"squeue failed for job {job_id}: {proc.stderr.strip()}")
    out: dict[int, str] = {}
    for line in proc.stdout.splitlines():
        task, _, state = line.strip().partition(" ")
        if task.isdigit():
            out[int(task)] = state
    return out


@dataclass
class TaskState:
    state: str
    exit_code: str = ""
    restarts: int = 0


def scheduler_states(job_id: str) -> dict[int, TaskState]:
    """Every array task's state as the controller knows it (empty once it has forgotten the job)."""
    proc = _slurm("scontrol", "-o", "show", "job", job_id)
    if proc.returncode != 0:
        return {}
    states: dict[int, TaskState] = {}
    for line in proc.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        ids = fields.get("ArrayTaskId", "")
        if not ids:
            continue
        state = TaskState(fields.get("JobState", "?"), fields.get("ExitCode", ""), int(fields.get("Restarts", "0") or 0))
        for task in parse_frames(ids.split("%")[0]):
            states[task] = state
    return states


def wait(job_id: str, timeout: float | None = None, poll: float = 2.0, log=sys.stderr) -> None:
    """Block until no task of the job is queued (pending, running or requeued)."""
    t0 = time.monotonic()
    last = None
    while True:
        tasks = queued(job_id)
        if not tasks:
            return
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(_count(tasks.values()).items()))
        if summary != last:
            print(f"job {job_id}: {summary}", file=log, flush=True)
            last = summary
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise FarmError(f"job {job_id} is still queued after {timeout:.0f} s ({summary}); it goes on running: "
                            f"follow it with `python -m backend farm slurm status JOB_DIR --wait`")
        time.sleep(poll)


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


@dataclass
class TaskReport:
    task: int
    unit: str                  # frames "1-50" or the prompt
    state: str                 # the scheduler's, else "unknown"
    done: bool                 # judged by the files: every frame written / the avatar saved
    detail: str
    attempts: list[dict] = field(default_factory=list)

    @property
    def gpus(self) -> str | None:
        return self.attempts[-1].get("cuda_visible_devices") if self.attempts else None


def _attempts(job_dir: Path, task: int) -> list[dict]:
    path = job_dir / "tasks" / f"{task}.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def report(job_dir: str | Path) -> list[TaskReport]:
    """Per task: what it does, the scheduler's state, whether its output is all there, attempts."""
    job_dir = Path(job_dir).absolute()
    try:
        info = json.loads((job_dir / "job.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FarmError(f"{job_dir} is not a farm job folder (job.json: {exc})") from None
    job_id = info.get("job_id")
    states = scheduler_states(job_id) if job_id and shutil.which("scontrol") else {}
    out = []
    for t in info["tasks"]:
        i = int(t["task"])
        attempts = _attempts(job_dir, i)
        s = states.get(i)
        state = s.state if s else "unknown"
        if info["kind"] == "render":
            done, detail = _render_outcome(job_dir, i, t["frames"])
            unit = t["frames"]
        else:
            done, detail = _train_outcome(Path(t["run"]))
            unit = t["prompt"]
        if s and s.exit_code and s.exit_code != "0:0":
            detail += f"; exit {s.exit_code}"
        out.append(TaskReport(i, unit, state, done, detail, attempts))
    return out


def _render_outcome(job_dir: Path, task: int, frames: str) -> tuple[bool, str]:
    path = job_dir / "tasks" / f"{task}.result.json"
    want = len(parse_frames(frames))
    if not path.exists():
        return False, f"0/{want} frames (no result yet)"
    try:
        r = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False, "unreadable result"
    present = [p for p in r.get("written", []) + r.get("skipped", []) if Path(p).exists()]
    detail = f"{len(present)}/{want} frames ({len(r.get('written', []))} rendered, {len(r.get('skipped', []))} " \
             f"already there)"
    if r.get("error"):
        detail += f"; error: {r['error']}"
    return len(present) == want and not r.get("error"), detail


def _train_outcome(run: Path) -> tuple[bool, str]:
    if (run / "avatar" / "avatar.json").exists():
        return True, f"avatar {run / 'avatar'}"
    if (run / "checkpoints" / "last.pt").exists():
        return False, f"stopped with a checkpoint in {run} (submit again to resume)"
    return False, f"no checkpoint yet in {run}"


def format_report(reports: list[TaskReport]) -> str:
    lines = []
    for r in reports:
        tries = len(r.attempts)
        where = ", ".join(filter(None, [r.attempts[-1].get("host") if r.attempts else None,
                                        f"GPU {r.gpus}" if r.gpus else None,
                                        f"{tries} attempts" if tries > 1 else None]))
        mark = "done" if r.done else "NOT DONE"
        unit = r.unit if len(r.unit) <= 40 else r.unit[:37] + "..."
        lines.append(f"task {r.task:>3}  {mark:<8}  {r.state:<10}  {unit:<40}  {r.detail}" + (f"  [{where}]" if where else ""))
    done = sum(r.done for r in reports)
    lines.append(f"{done}/{len(reports)} tasks done" + ("" if done == len(reports) else
                 "; submit the same command again to finish the rest (finished frames and avatars are kept, "
                 "trainings resume from their checkpoints)"))
    return "\n".join(lines)
