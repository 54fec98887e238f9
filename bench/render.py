"""Milliseconds per posed frame (skinning + rasterization): gsplat beside the torch reference.

    python bench/render.py [--device cuda|cpu] [--out bench/results/render_<device>.txt]

Each row poses a template avatar on a frame of the built-in dance (linear blend skinning of the
free Gaussians, surface posing of the mesh-bound ones) and rasterizes it from a camera that
frames the body. Times are medians over repeated runs after warm-up, synchronised on CUDA.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.avatar import init_template_avatar, pose_with_params  # noqa: E402
from backend.body import BodyModel  # noqa: E402
from backend.dance import dance  # noqa: E402
from backend.render import available_backends, rasterize  # noqa: E402
from backend.sequence import clip_cameras, frame_params  # noqa: E402


def _timed(fn, device: str, repeats: int) -> float:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def bench(device: str, sizes: list[int], resolutions: list[tuple[int, int]], backends: list[str],
          repeats: int) -> list[dict]:
    body = BodyModel.load(device=device)
    motion = dance(seconds=1.0, num_expression=body.num_expression)
    params = frame_params(motion, 10)
    rows = []
    for n in sizes:
        avatar = init_template_avatar(body, n, seed=0)
        with torch.no_grad():
            skin_ms = _timed(lambda: pose_with_params(avatar, **params), device, repeats)
            posed = pose_with_params(avatar, **params)
        for w, h in resolutions:
            cam = clip_cameras(avatar, motion.trim(10, 11), w, h)[0]
            for backend in backends:
                with torch.no_grad():
                    raster_ms = _timed(lambda: rasterize(posed, cam, backend=backend), device, repeats)
                    total_ms = _timed(lambda: rasterize(pose_with_params(avatar, **params), cam, backend=backend),
                                      device, repeats)
                rows.append(dict(n=n, res=f"{w}x{h}", backend=backend, skin=skin_ms, raster=raster_ms, total=total_ms))
                print(f"  {n:>7} {w}x{h} {backend:<7} skin {skin_ms:7.2f} raster {raster_ms:8.2f} total {total_ms:8.2f}",
                      file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], device: str) -> str:
    lines = [f"# bench/render.py — ms per posed frame (skinning + rasterization), median",
             f"# device: {device_name(device)}; torch {torch.__version__}",
             "", "| Gaussians | resolution | rasterizer | skinning ms | rasterize ms | total ms |",
             "|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['res']} | {r['backend']} | {r['skin']:.2f} | {r['raster']:.2f} | {r['total']:.2f} |")
    by = {(r["n"], r["res"], r["backend"]): r["total"] for r in rows}
    speedups = [(n, res, by[(n, res, "torch")] / by[(n, res, "gsplat")]) for (n, res, b) in by
                if b == "gsplat" and (n, res, "torch") in by]
    if speedups:
        lines += ["", "gsplat speed-up over the torch reference: "
                  + ", ".join(f"{n:,} @ {res}: {s:.0f}x" for n, res, s in speedups)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.device == "cuda":
        sizes, res = [100_000, 300_000], [(512, 512), (1920, 1080)]
        backends = [b for b in ("gsplat", "torch") if b in available_backends()]
        repeats = args.repeats or 20
    else:
        sizes, res, backends, repeats = [20_000, 100_000], [(512, 512), (1920, 1080)], ["torch"], args.repeats or 3
    rows = bench(args.device, sizes, res, backends, repeats)
    text = table(rows, args.device)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from backend.files import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
