"""Milliseconds per training iteration of ONE avatar trained view-parallel on 1, 2, 4, 8 ranks.

    python bench/train_ranks.py --ranks 1,2,4,8 --views 8 --out bench/results/train_ranks_<card>.txt   # GPUs
    python bench/train_ranks.py --smoke --ranks 1,2 --views 2                                          # CPU check

For each rank count N the script starts `torchrun --standalone --nproc_per_node=N` on itself;
every rank runs the project's trainer (`backend.train.Trainer` with its `distributed.join`
rank: NCCL on GPUs, gloo on the CPU) with SD 1.5 + ControlNet built from their configs with
random weights (bench/train.py's models, nothing downloaded), the random-pose stage, --views
views per iteration shared by the ranks (views / N each), 512x512 renders of --gaussians
template Gaussians. Each rank builds its models, warms up (CUDA graph capture), then the ranks
meet at a barrier and run --iters iterations back to back; rank 0's wall time for them, up to
a last barrier, is the row's ms/iter. Speed-up and efficiency are against the 1-rank row (the
one-process path: at one rank the trainer takes no collective at all).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench.report import emit  # noqa: E402

import train as bench_train  # noqa: E402  (bench/train.py: models, run_steps, device names)

from backend.guidance import SDSConfig, prepare_models  # noqa: E402
from backend.render import available_backends  # noqa: E402
from backend.train import PhaseTimer, TrainConfig, Trainer  # noqa: E402
from backend.train.distributed import join  # noqa: E402
from backend.train.trainer import resolve_device  # noqa: E402


def worker(args: argparse.Namespace) -> int:
    """One rank (under torchrun): measure, rank 0 writes the result to --json."""
    device = "cpu" if args.smoke else "cuda"
    with join(args.views, device) as par, tempfile.TemporaryDirectory() as tmp:
        dev = par.place(resolve_device(device))
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        master = bench_train.build_master("tiny" if args.smoke else "sd15", str(dev), Path(tmp))
        dtype = torch.float32 if args.smoke else torch.float16
        models = prepare_models(master, str(dev), dtype, {"sd_model": "random", "controlnet": "random"})
        config = TrainConfig(prompt="a chef dressed in white", steps=1_000_000, views=args.views,
                             resolution=args.resolution, num_gaussians=args.gaussians, template_fraction=0.0,
                             canonical_fraction=0.0, device=device, rasterizer=args.rasterizer, sds=SDSConfig(),
                             checkpoint_every=0, preview_every=0, log_every=0, workers=-1)
        trainer = Trainer(config, None, models=models, timer=PhaseTimer(enabled=False), parallel=par)
        rasterizer = args.rasterizer if args.rasterizer != "auto" else \
            ("gsplat" if dev.type == "cuda" and "gsplat" in available_backends() else "torch")
        trainer.ensure_guidance()
        bench_train.run_steps(trainer, args.warmup, str(dev.type))
        par.barrier()
        t0 = time.perf_counter()
        bench_train.run_steps(trainer, args.iters, str(dev.type))
        par.barrier()
        ms = (time.perf_counter() - t0) * 1000 / args.iters
        par.check_lockstep(trainer.learnable_tensors(), trainer.step_index)   # the ranks stayed in lockstep
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        if par.is_main:
            Path(args.json).write_text(json.dumps({
                "ranks": par.world, "ms": ms, "gaussians": trainer.num_gaussians, "peak_gib": peak,
                "device": bench_train.device_name(dev.type), "rasterizer": rasterizer}))
        trainer.close()
    return 0


def launch(n: int, args: argparse.Namespace, out: Path) -> dict | str:
    """Run the worker at `n` ranks; its result, or why there is none."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(Path(__file__).resolve()), "--worker", "--json", str(out), "--views", str(args.views),
           "--iters", str(args.iters), "--warmup", str(args.warmup), "--gaussians", str(args.gaussians),
           "--resolution", str(args.resolution), "--rasterizer", args.rasterizer] + (["--smoke"] if args.smoke else [])
    print(f"{n} rank(s): {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"failed ({proc.returncode}): {' | '.join(tail)[:300]}"
    return json.loads(out.read_text())


def table(results: dict[int, dict | str], args: argparse.Namespace) -> str:
    done = {n: r for n, r in results.items() if isinstance(r, dict)}
    first = next(iter(done.values()), {})
    base = done.get(1, {}).get("ms")
    lines = [f"# one avatar, view-parallel SDS: ms per training iteration by number of ranks "
             f"({'smoke: tiny models, CPU, gloo' if args.smoke else 'SD 1.5 + ControlNet sizes, random weights, NCCL'})",
             f"device: {first.get('device', '?')} per rank; torch {torch.__version__}"
             + (f", CUDA {torch.version.cuda}" if torch.version.cuda and not args.smoke else "")
             + f"; python {platform.python_version()}",
             f"{args.views} views per iteration, render {args.resolution}x{args.resolution} "
             f"({first.get('rasterizer', args.rasterizer)}), {args.gaussians} initial Gaussians, random-pose stage, "
             f"{args.iters} iterations after {args.warmup} warm-up",
             "",
             f"{'ranks':>5} {'views/rank':>10} {'ms/iter':>9} {'views/s':>8} {'speed-up':>8} {'efficiency':>10} "
             f"{'peak GiB':>8}  note"]
    for n, r in results.items():
        if isinstance(r, str):
            lines.append(f"{n:>5} {args.views // n:>10} {'-':>9} {'-':>8} {'-':>8} {'-':>10} {'-':>8}  {r}")
            continue
        speed = base / r["ms"] if base else float("nan")
        lines.append(f"{n:>5} {args.views // n:>10} {r['ms']:9.1f} {args.views * 1000 / r['ms']:8.1f} {speed:8.2f} "
                     f"{speed / n:10.2f} {r['peak_gib']:8.2f}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2,4,8", help="rank counts to measure (GPUs: at most the GPUs here)")
    parser.add_argument("--views", type=int, default=8, help="views per iteration (a multiple of every rank count)")
    parser.add_argument("--smoke", action="store_true", help="tiny models at 64 px on the CPU, gloo (checks the script)")
    parser.add_argument("--iters", type=int, default=None, help="measured iterations (default 20; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="default 4 (smoke 1)")
    parser.add_argument("--gaussians", type=int, default=None, help="initial Gaussians (default 100000; smoke 2000)")
    parser.add_argument("--resolution", type=int, default=None, help="render size (default 512; smoke 64)")
    parser.add_argument("--rasterizer", default="auto", choices=("auto", "torch", "gsplat"))
    parser.add_argument("--timeout", type=float, default=540, help="seconds per rank count")
    parser.add_argument("--out", default=None, help="write the table here too")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.iters = args.iters or (3 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 4)
    args.gaussians = args.gaussians or (2000 if args.smoke else 100_000)
    args.resolution = args.resolution or (64 if args.smoke else 512)
    if args.worker:
        return worker(args)
    ranks = [int(n) for n in args.ranks.split(",")]
    bad = [n for n in ranks if n < 1 or args.views % n]
    if bad:
        parser.error(f"--views {args.views} is not shared evenly by {bad} ranks")
    gpus = torch.cuda.device_count() if not args.smoke else len(os.sched_getaffinity(0))
    results: dict[int, dict | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in ranks:
            if not args.smoke and n > gpus:
                results[n] = f"skipped: {gpus} GPU(s) here"
                continue
            results[n] = launch(n, args, Path(tmp) / f"{n}.json")
    text = table(results, args)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
