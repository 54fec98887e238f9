"""One avatar over several processes: `torchrun --nproc_per_node=2 -m backend train` (gloo, CPU,
tiny diffusion models) trains the avatar one process trains: the same loss at every iteration
(to 1e-4 relative) and the same Gaussian count after every densification, through a SIGTERM
(a checkpoint) and a resume; rank 0 alone writes the avatar and prints its path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from .conftest import ROOT
from .farm_shot import tiny_train_args

STEPS = 12
INITIAL = 800   # tiny_train_args' --num-gaussians


def _env() -> dict[str, str]:
    # torchrun gives each rank one thread; the one-process run gets the same, for a fair load
    return dict(os.environ, OMP_NUM_THREADS="1")


def _args(models: Path, tmp_path: Path) -> list[str]:
    config = tmp_path / "densify.json"   # densify every 4 iterations, so the run changes its Gaussian set
    config.write_text(json.dumps({"progress_every": 0, "densify": {"start": 0.0, "stop": 1.0, "every": 4,
                                                                   "grow_grad2d": 1e-7}}))
    args = tiny_train_args(models, steps=STEPS)
    args[args.index("--views") + 1] = "2"
    return args + ["--config", str(config), "--checkpoint-every", "4", "--prompt", "a chef dressed in white"]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "backend", "train", *args]


@pytest.mark.slow
def test_two_ranks_train_the_avatar_of_one_process_through_sigterm_and_resume(tmp_path, farm_tiny_models):
    args = _args(farm_tiny_models, tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    reference = subprocess.Popen([sys.executable, "-m", "backend", "train", "--out", str(one), *args], cwd=ROOT,
                                 env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # two ranks, stopped by SIGTERM (to torchrun, as Slurm sends it) once the first checkpoint is written
    ranks = subprocess.Popen(_torchrun("--out", str(two), *args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (two / "checkpoints" / "last.pt").exists():
        assert ranks.poll() is None, ranks.communicate()[1]
        assert time.monotonic() < deadline, "the two ranks wrote no checkpoint in 300 s"
        time.sleep(0.1)
    ranks.send_signal(signal.SIGTERM)
    out, err = ranks.communicate(timeout=120)
    assert ranks.returncode != 0 and not (two / "avatar").exists(), err
    assert err.count("SIGTERM: saving a checkpoint") == 2 and err.count("continue with:") == 1, err

    resumed = subprocess.run(_torchrun("--out", str(two), "--resume", *args), cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split() == [str(two / "avatar")], "rank 0 alone reports the avatar"
    assert resumed.stderr.count("avatar written to") == 1
    assert reference.wait(timeout=300) == 0, reference.communicate()[1]

    want, got = (json.loads((d / "train.json").read_text()) for d in (one, two))
    assert got["iterations"] == want["iterations"] == STEPS
    want_steps = [(h["step"], h["gaussians"]) for h in want["history"]]
    assert [(h["step"], h["gaussians"]) for h in got["history"]] == want_steps
    assert want_steps[-1][1] > INITIAL, "densification changed the Gaussian set during the run"
    for a, b in zip(want["history"], got["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), f"iteration {a['step']}"
    meta = json.loads((two / "avatar" / "avatar.json").read_text())
    assert meta["provenance"]["iterations"] == STEPS and meta["gaussians"]["total"] == want["gaussians"]
    # Adam (eps 1e-15) turns float rounding in near-zero gradients into up to one step of the rate
    a, b = (load_file(str(d / "avatar" / "gaussians.safetensors")) for d in (one, two))
    assert sorted(a) == sorted(b)
    for name in a:
        if a[name].dtype.kind == "f":
            assert np.allclose(a[name], b[name], atol=1e-2), name
        else:
            assert (a[name] == b[name]).all(), name


def test_views_not_shared_evenly_by_the_ranks_is_one_clear_error(monkeypatch):
    from backend.train.distributed import join
    from backend.train.errors import TrainingError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainingError, match=r"--views 3 cannot be shared by 2 ranks.*multiple of 2"):
        with join(3, "cpu"):
            pass
    monkeypatch.setenv("RANK", "1")   # the other ranks exit quietly: the error is printed once
    with pytest.raises(SystemExit):
        with join(3, "cpu"):
            pass


@pytest.mark.gpu
def test_two_gpu_ranks_over_nccl_train_the_avatar_of_one_gpu(tmp_path, farm_tiny_models):
    """The same on two GPUs (NCCL, gsplat): GPU kernels are not bit-reproducible (atomics in
    the rasterizer's backward), so the losses are compared to 1e-2."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    args = [a if a != "cpu" else "cuda" for a in _args(farm_tiny_models, tmp_path)]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "backend", "train", "--out", str(one), *args], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    ranks = subprocess.run(_torchrun("--out", str(two), *args), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ranks.returncode == 0, ranks.stderr
    assert ranks.stdout.split() == [str(two / "avatar")]
    want, got = (json.loads((d / "train.json").read_text()) for d in (one, two))
    assert got["iterations"] == want["iterations"] == STEPS and got["device"] == "cuda:0"
    for a, b in zip(want["history"], got["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2), f"iteration {a['step']}"
    assert got["gaussians"] == want["gaussians"] > INITIAL
