"""The benchmarks themselves run (tiny models on the CPU), so GPU time is not lost to a broken
script: every configuration kind of the training benchmark measures every phase, and the render
benchmark every part of its split."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_render_benchmark_smoke_measures_the_split(tmp_path):
    out = tmp_path / "render.txt"
    proc = subprocess.run([sys.executable, "bench/render.py", "--smoke", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 2,000")]
    assert len(rows) == 1, text
    numbers = [float(v) for v in rows[0].strip("|").split("|")[3:]]
    assert len(numbers) == 6 and all(v > 0 for v in numbers), rows[0]
    assert "deform MLP" in text and "device:" in text
