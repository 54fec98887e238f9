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
