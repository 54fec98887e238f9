"""The benchmarks themselves run (tiny models on the CPU), so GPU time is not lost to a broken
script: the training benchmark measures every phase of every configuration kind, the capacity
benchmark fits both recipes through every stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_training_benchmark_smoke_measures_every_phase(tmp_path):
    out = tmp_path / "train.txt"
    proc = subprocess.run([sys.executable, "bench/train.py", "--smoke", "--only", "2-fp32,taesd-2-fp32,plain-2-fp32",
                           "--iters", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("ours", "plain"))]
    assert [r.split()[0] for r in rows] == ["ours", "ours+taesd", "plain"], text
    for row in rows:
        assert "FAILED" not in row, row
        numbers = [float(v) for v in row.split()[4:13]]   # batch ... ms/view (peak GiB is nan on the CPU)
        assert all(v >= 0 for v in numbers) and numbers[-2] > 0, row
    assert "device:" in text and "random-pose stage" in text


def test_recipe_benchmark_smoke_measures_every_stage_of_both_recipes(tmp_path):
    out = tmp_path / "recipes.txt"
    proc = subprocess.run([sys.executable, "bench/train.py", "--smoke", "--recipes", "--iters", "1", "--warmup", "0",
                           "--resolution", "32", "--gaussians", "600", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = [line.split() for line in text.splitlines() if line.startswith(("fast ", "dreamwaltz-g "))]
    assert "FAILED" not in text, text
    stages = {(r[0], r[3]) for r in rows if r[3] != "WHOLE"}
    assert {("fast", "canonical"), ("fast", "posed"), ("dreamwaltz-g", "canonical"), ("dreamwaltz-g", "canonical-r"),
            ("dreamwaltz-g", "random-pose")} <= stages, text
    whole = {r[0]: float(r[6]) for r in rows if r[3] == "WHOLE"}
    assert set(whole) == {"fast", "dreamwaltz-g"} and all(v > 0 for v in whole.values()), text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _capacity(work: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/capacity.py", "--smoke", "--work", str(work), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _check_capacity_table(text: str) -> None:
    lines = text.splitlines()
    assert any(line.startswith("# device:") for line in lines), text
    head = next(line for line in lines if line.startswith("| metric"))
    assert _cells(head)[1:] == ["fast (what a user gets)", "dreamwaltz-g (what a user gets)", "target alone"], head
    metric_rows = {_cells(line)[0]: _cells(line)[1:] for line in lines if line.startswith("| held-out")}
    for kind in ("views", "poses"):
        for metric in ("PSNR", "skirt silhouette recovered", "hair silhouette recovered"):
            fast, paper, _ = metric_rows[f"held-out {kind}: {metric}"]
            for value in (fast, paper):
                number = float(value.split()[0])
                assert (0 < number < 100) if metric == "PSNR" else (0 <= number <= 100), (metric, value)
    stages = [(_cells(line)[0], _cells(line)[1]) for line in lines[lines.index(next(
        line for line in lines if line.startswith("| recipe"))) + 2:] if line.startswith("|")]
    assert [s for r, s in stages if r == "fast"] == ["start", "canonical", "posed"], stages
    assert [s for r, s in stages if r == "dreamwaltz-g"] == ["start", "nerf-64", "nerf-128", "nerf-256", "nerf-512",
                                                            "canonical", "canonical-r", "random-pose"], stages


def test_capacity_benchmark_smoke_stops_in_time_continues_and_prints_both_recipes(tmp_path):
    """bench/capacity.py --smoke: out of time, a run stops with a checkpoint (exit status 3, as a
    time-limited GPU call would) and the same command continues it; then both recipes have trained
    on the clothed target through every stage of their schedules and the table has a value of
    each metric for each."""
    work, out = tmp_path / "runs", tmp_path / "capacity.txt"
    first = _capacity(work, "--max-minutes", "0.0001")
    assert first.returncode == 3, first.stderr[-3000:]
    assert "fast: out of time at iteration 1" in first.stderr, first.stderr[-3000:]
    proc = _capacity(work, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fast: continuing at iteration 1 of 2" in proc.stderr, proc.stderr[-3000:]
    _check_capacity_table(out.read_text())
    assert sorted(p.name for p in (work / "toy").iterdir()) == ["dreamwaltz-g", "fast"]


@pytest.mark.gpu
def test_capacity_benchmark_smoke_on_cuda(tmp_path):
    """The same on the GPU (gsplat, batch workers), so that the full-size run's GPU time is not
    lost to a broken script."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "capacity.txt"
    proc = _capacity(tmp_path / "runs", "--device", "cuda", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_capacity_table(out.read_text())
    assert "CPU" not in next(line for line in out.read_text().splitlines() if line.startswith("# device:"))
