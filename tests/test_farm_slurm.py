"""The farm on a real Slurm cluster of one node with two dummy GPUs (scripts/slurm_up.sh).

Skipped where no cluster answers (a developer's machine); CI starts one and sets
DREAMWALTZ_REQUIRE_SLURM=1, which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.farm.units import run_name

from .conftest import ROOT, run_backend
from .farm_shot import FRAMES, assert_equals_reference, tiny_train_args


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm is not installed (scripts/slurm_up.sh installs and starts a single-node cluster)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"no Slurm node is up (sinfo: {(proc.stdout + proc.stderr).strip() or 'nothing'}); run scripts/slurm_up.sh"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    problem = _cluster_problem()
    if problem and os.environ.get("DREAMWALTZ_REQUIRE_SLURM"):
        pytest.fail(f"DREAMWALTZ_REQUIRE_SLURM is set but {problem}")
    if problem:
        pytest.skip(problem)


def _records(job_dir: Path, task: int) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "tasks" / f"{task}.jsonl").read_text().splitlines()]


def test_an_array_render_equals_one_process_and_a_retry_renders_only_missing_frames(tmp_path, farm_shot):
    out = tmp_path / "frames"
    job_dir = tmp_path / "job"
    cmd = ("farm", "slurm", "render", str(farm_shot.blend), "--frames", f"1-{FRAMES}", "--chunk", "4",
           "--out", str(out / "####.png"), "--blender", sys.executable, "--job-dir", str(job_dir),
           "--cpus-per-task", "1", "--wait", "--wait-timeout", "500")
    proc = run_backend(*cmd, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"task +0 +done +COMPLETED +1-4 ", proc.stdout) and "2/2 tasks done" in proc.stdout
    assert_equals_reference(farm_shot, out, range(1, FRAMES + 1))
    gpus = {_records(job_dir, t)[0]["cuda_visible_devices"] for t in (0, 1)}
    assert gpus == {"0", "1"}, "each array task has its own GPU"

    (out / "0006.png").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    proc = run_backend(*cmd, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_equals_reference(farm_shot, out, range(1, FRAMES + 1))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in kept} == kept, \
        "frames already written are not rendered again"
    second = json.loads((job_dir / "tasks" / "1.result.json").read_text())
    assert [Path(p).name for p in second["written"]] == ["0006.png"] and len(second["skipped"]) == 3
    assert json.loads((job_dir / "tasks" / "0.result.json").read_text())["written"] == []


def test_a_training_array_gives_two_avatars_and_a_requeued_task_resumes_from_its_checkpoint(tmp_path, farm_tiny_models):
    from safetensors.numpy import load_file

    prompts = ["a chef dressed in white", "a knight in armour"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    runs = tmp_path / "runs"
    train_args = tiny_train_args(farm_tiny_models, steps=10) + ["--checkpoint-every", "2", "-v"]
    proc = run_backend("farm", "slurm", "train", str(tmp_path / "prompts.txt"), "--runs", str(runs),
                       "--cpus-per-task", "1", "--submit", "--", *train_args, check=True)
    job_id = proc.stdout.strip()
    job_dir = runs / "farm"
    second = runs / run_name(1, prompts[1])

    # the uninterrupted run of the second prompt, to compare with (started while Slurm works)
    reference = subprocess.Popen([sys.executable, "-m", "backend", "train", "--prompt", prompts[1], "--out",
                                  str(tmp_path / "reference"), *train_args], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (second / "checkpoints" / "last.pt").exists():
        assert time.monotonic() < deadline, "the second training wrote no checkpoint in 300 s"
        time.sleep(0.2)
    requeue = subprocess.run(["scontrol", "requeue", f"{job_id}_1"], capture_output=True, text=True, timeout=30)
    assert requeue.returncode == 0, requeue.stderr

    proc = run_backend("farm", "slurm", "status", str(job_dir), "--wait", "--wait-timeout", "500", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 tasks done" in proc.stdout
    assert reference.wait(timeout=300) == 0

    first_attempts, second_attempts = _records(job_dir, 0), _records(job_dir, 1)
    assert len(first_attempts) == 1 and [a["attempt"] for a in second_attempts] == [0, 1]
    assert {first_attempts[0]["cuda_visible_devices"], second_attempts[0]["cuda_visible_devices"]} == {"0", "1"}
    log = (job_dir / "logs" / "task-1.log").read_text()
    assert "SIGTERM: saving a checkpoint" in log
    resumed = re.search(r"resumed .* at iteration (\d+) of 10", log)
    assert resumed and 0 < int(resumed.group(1)) < 10, "the requeued task continued from its checkpoint"
    for i, prompt in enumerate(prompts):
        meta = json.loads((runs / run_name(i, prompt) / "avatar" / "avatar.json").read_text())
        assert meta["prompt"] == prompt and meta["provenance"]["iterations"] == 10
    got = load_file(str(second / "avatar" / "gaussians.safetensors"))
    want = load_file(str(tmp_path / "reference" / "avatar" / "gaussians.safetensors"))
    assert sorted(got) == sorted(want) and all((got[k] == want[k]).all() for k in want), \
        "the requeued training ends with the avatar of an uninterrupted run"
