"""Stage I (the NeRF) speed: milliseconds per iteration at 64, 128, 256 and 512 px.

    python bench/nerf.py [--views 1] [--out bench/results/nerf_gpu_<card>.txt]
    python bench/nerf.py --smoke          # tiny field on the CPU: checks the script

One iteration is what the trainer does in Stage I minus the diffusion model: the occupancy
grid's refresh (every 16th), a render of the field through `--views` training cameras with
jittered samples, a stand-in image loss, the sigma-prior on the hands, backward and Adam. The
field starts from the pretrained body (fitted first if it is not cached: its time is reported
too). Times are medians of back-to-back iterations after warm-up, synchronised on CUDA; every
row starts from the pretrained field, once with the pure-PyTorch hash encoding and once with
the fused kernel (fields/fused_hashgrid.py) where it builds; the encoding alone is timed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import device_name, sync  # noqa: E402

from backend.body import BodyModel  # noqa: E402
from backend.fields.fused_hashgrid import fused_available  # noqa: E402
from backend.train.cameras import CameraConfig, CameraSampler  # noqa: E402
from backend.train.nerf import NeRFConfig, NeRFStage  # noqa: E402
from backend.train.nerf.stage import step_generator  # noqa: E402
from backend.train.poses import PoseConfig, PoseSampler  # noqa: E402

SMOKE = dict(levels=6, log2_table=12, grid_size=32, max_steps=160, pretrain_steps=20, pretrain_resolution=24,
             pretrain_points=1024, pretrain_gaussians=3000, pretrain_voxels=48, prior_points=300, prior_pool=1)






def iteration_ms(stage: NeRFStage, start: dict, cams: list, size: int, kernel: str,
                 device: torch.device) -> tuple[float, float]:
    """(median, fastest) ms of one iteration per camera set, the first 3 not counted, from the
    pretrained field `start` (the stand-in loss empties the field as it trains: every row starts
    where training does, so rows compare)."""
    stage.load_state_dict(start)
    opt = torch.optim.Adam(stage.param_groups(), betas=(0.9, 0.99), eps=1e-15,
                           **({"fused": True} if device.type == "cuda" else {}))
    stage.field.encoding.kernel = kernel
    times = []
    for i, views in enumerate(cams):
        sync(device)
        t = time.perf_counter()
        stage.update_occupancy(i)
        out = stage.render(views, resolution=size, generator=step_generator(0, i, 1, device))
        loss = (out.rgb - 0.5).square().mean() + stage.prior_loss(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times), 1000 * min(times)


def encode_ms(stage: NeRFStage, n: int, kernels: list[str], device: torch.device) -> tuple[int, list[float]]:
    """ms of the field's hash encoding of `n` points, forward and backward, per kernel."""
    enc = stage.field.encoding
    x = torch.rand(n, 3, device=device, generator=torch.Generator(device).manual_seed(0)).requires_grad_()
    out = []
    for kernel in kernels:
        enc.kernel = kernel
        times = []
        for _ in range(8):
            sync(device)
            t = time.perf_counter()
            torch.autograd.grad(enc(x).square().sum(), [enc.embeddings, x])
            sync(device)
            times.append(time.perf_counter() - t)
        out.append(1000 * statistics.median(times[2:]))
    return n, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--sizes", default="64,128,256,512")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    config = NeRFConfig(**SMOKE) if args.smoke else NeRFConfig()
    sizes = [32] if args.smoke else [int(s) for s in args.sizes.split(",")]
    iters = 3 if args.smoke else args.iters
    body = BodyModel.load(None, device)
    canonical = PoseSampler(PoseConfig()).canonical()
    t0 = time.perf_counter()
    stage = NeRFStage.pretrained(config, body, None, canonical, device)
    sync(device)
    pretrain_s = time.perf_counter() - t0
    start = stage.state_dict()
    rng = np.random.default_rng(0)
    sampler = CameraSampler(CameraConfig(), 512, 512)
    c = stage.canonical
    kernels = ["torch"] + (["fused"] if hasattr(stage.field.encoding, "kernel")
                           and fused_available(device)[0] else [])
    rows = []
    for size in sizes:
        cams = [[sampler.sample(rng, c.vertices, c.joints, c.transforms, kind="body").camera
                 for _ in range(args.views)] for _ in range(iters + 3)]
        rows.append((size, [iteration_ms(stage, start, cams, size, kernel, device) for kernel in kernels]))
    encode_rows = [encode_ms(stage, n, kernels, device) for n in ((1 << 14,) if args.smoke else (1 << 18, 1 << 21))]
    lines = [f"# bench/nerf.py - Stage I ms per iteration ({args.views} view(s), render + sigma-prior + backward + "
             "Adam, occupancy refresh every 16th; no diffusion model)",
             f"# device: {device_name(device)}; torch {torch.__version__}; encoding backend: {stage.field.backend}; "
             f"hash-grid kernels: {', '.join(kernels)} (pure PyTorch; fields/fused_hashgrid.py)",
             f"# field: {config.levels} levels x {config.features}, 2^{config.log2_table} table, occupancy "
             f"{config.grid_size}^3, {config.max_steps} steps across the cube; pretraining "
             f"{'loaded from the cache' if 'cache' in stage.report and pretrain_s < 30 else 'run'} in {pretrain_s:.1f} s "
             f"(PSNR {stage.report.get('psnr') or float('nan'):.2f} dB on the body's pixels)",
             "", "| resolution | " + " | ".join(f"{k}: ms / iteration (median, fastest)" for k in kernels)
             + (" | speed-up |" if len(kernels) > 1 else " |"), "|---:|" + "---:|" * (len(kernels) + (len(kernels) > 1))]
    for size, got in rows:
        cells = " | ".join(f"{m:.1f} ({f:.1f})" for m, f in got)
        lines.append(f"| {size} | {cells} |" + (f" {got[0][0] / got[1][0]:.1f}x |" if len(got) > 1 else ""))
    lines += ["", "| hash encoding alone, forward + backward (table and points) | "
              + " | ".join(f"{k}: ms" for k in kernels) + " |", "|---|" + "---:|" * len(kernels)]
    lines += [f"| {n} points | " + " | ".join(f"{m:.2f}" for m in ms) + " |" for n, ms in encode_rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
