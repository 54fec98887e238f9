"""Seconds to load and resample a 10-minute 120 fps AMASS motion to 30 fps (target: < 1 s).

    python bench/motion.py [--repeats 5] [--out bench/results/motion_cpu.txt]

Writes a synthetic AMASS-sized SMPL-H .npz (72 000 frames × 156 poses, float64, Z-up, like
AMASS's own files) to a temporary folder, then times load_motion (read + Z-up → Y-up) and
Motion.resample to 30 fps (and, for comparison, to 24 and 25 fps, whose samples fall between
source frames and need slerp). Times are medians over the repeats; numpy only, one thread of
Python.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import cpu_name  # noqa: E402

from backend.motion import load_motion  # noqa: E402

FPS = 120.0
MINUTES = 10




def write_amass(path: Path, frames: int) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(frames) / FPS
    poses = rng.normal(0.0, 0.2, (frames, 156))
    poses[:, 0] = np.pi / 2                                  # standing in a Z-up world
    poses[:, 2] = 0.5 * t                                    # turning slowly
    trans = np.stack([np.sin(0.1 * t), np.cos(0.1 * t), np.full(frames, 0.9)], 1)
    np.savez(path, poses=poses, trans=trans, betas=np.zeros(16), gender=np.str_("female"),
             mocap_framerate=np.float64(FPS), dmpls=np.zeros((frames, 8)))


def median_time(fn, repeats: int):
    samples, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)

    frames = int(MINUTES * 60 * FPS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long_stageii.npz"
        write_amass(path, frames)
        size_mb = path.stat().st_size / 1e6
        load_s, motion = median_time(lambda: load_motion(path), args.repeats)
        rows.append(("load_motion (read + Z-up -> Y-up)", load_s, f"{motion.num_frames} frames @ {motion.fps:g}"))
        for target in (30.0, 24.0, 25.0):
            s, out = median_time(lambda: motion.resample(target), args.repeats)
            rows.append((f"resample 120 -> {target:g} fps", s, f"{out.num_frames} frames, {out.duration:.3f} s"))
        total_s, out = median_time(lambda: load_motion(path, fps=30.0), args.repeats)
        rows.append(("total: load_motion(path, fps=30)", total_s, f"{out.num_frames} frames"))
        s25, out = median_time(lambda: load_motion(path, fps=25.0), args.repeats)
        rows.append(("total: load_motion(path, fps=25) (slerp)", s25, f"{out.num_frames} frames"))

    lines = [f"motion benchmark: {MINUTES}-minute {FPS:g} fps AMASS SMPL-H npz ({frames} frames, {size_mb:.0f} MB), "
             f"median of {args.repeats}",
             f"CPU: {cpu_name()} | Python {platform.python_version()} | numpy {np.__version__}",
             "",
             f"{'step':<42} {'seconds':>8}  result",
             f"{'-' * 42} {'-' * 8}  {'-' * 28}"]
    lines += [f"{name:<42} {sec:>8.3f}  {res}" for name, sec, res in rows]
    verdict = "PASS" if total_s < 1.0 else "FAIL"
    lines += ["", f"target: total < 1 s -> {verdict} ({total_s:.3f} s)"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from backend.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return 0 if total_s < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
