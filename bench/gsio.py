"""Seconds to write and read a 3DGS scene in every format backend.gsio knows, and file sizes.

    python bench/gsio.py [--gaussians 300000] [--repeats 3] [--out bench/results/gsio_cpu.txt]

A synthetic capture-like scene (positions in a 10 m box, SH degree 3) is written and read back
in each format (median over the repeats, read including validation). numpy only; the machine's
load average is printed, as other sessions may share the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.gsio import Splats, read_gaussians, write_gaussians  # noqa: E402

from bench.report import cpu_name  # noqa: E402

NAMES = {"ply": "scene.ply", "compressed-ply": "scene.compressed.ply", "splat": "scene.splat",
         "spz": "scene.spz", "glb": "scene.glb"}


def scene(n: int) -> Splats:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(n, 4))
    return Splats(means=rng.uniform(-5, 5, (n, 3)), quats=q / np.linalg.norm(q, axis=1, keepdims=True),
                  scales=np.exp(rng.uniform(-6, -2, (n, 3))), opacities=rng.uniform(0.02, 0.99, n),
                  colors=rng.uniform(-0.1, 1.1, (n, 3)), sh=rng.normal(0, 0.1, (n, 15, 3)).clip(-1, 1), up="y")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    s = scene(args.gaussians)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, name in NAMES.items():
            path = Path(tmp) / name
            w, r = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                write_gaussians(path, s, fmt)
                t1 = time.perf_counter()
                back = read_gaussians(path)
                r.append(time.perf_counter() - t1)
                w.append(t1 - t0)
            rows.append((fmt, statistics.median(w), statistics.median(r), path.stat().st_size, back.sh_degree))
    load = os.getloadavg()
    text = [f"cpu: {cpu_name()} ({os.cpu_count()} logical cores), load average {load[0]:.1f}",
            f"{args.gaussians:,} Gaussians, SH degree 3 in (splat keeps none), median of {args.repeats}", "",
            f"{'format':16} {'write s':>8} {'read s':>8} {'MB':>8} {'bytes/G':>8} {'SH out':>6}"]
    for fmt, w, r, size, deg in rows:
        text.append(f"{fmt:16} {w:8.2f} {r:8.2f} {size / 1e6:8.1f} {size / args.gaussians:8.1f} {deg:6d}")
    out = "\n".join(text)
    print(out)
    if args.out:
        from backend.files import write_text_atomic

        write_text_atomic(args.out, out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
