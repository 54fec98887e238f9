"""Milliseconds and achieved TFLOP/s of the diffusion parts of one 4-view SDS iteration, per
memory layout and execution mode: ControlNet + UNet with classifier-free guidance (batch 8 at
64x64 latents), the VAE encoder forward + backward (4 x 512x512) and the tiny (TAESD) encoder.

    python bench/guidance_parts.py --out bench/results/guidance_parts_<card>.txt [--compile]

SD 1.5-sized models with random weights (same shapes and FLOPs as the real ones). This is how
the trainer's defaults were chosen (which parts get channels-last, CUDA graphs, compile).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import emit  # noqa: E402

from backend.guidance import prepare_models  # noqa: E402
from backend.guidance.configs import build_random_models, build_tiny_encoder  # noqa: E402
from backend.guidance.speed import NoisePredictor, attention_kernels  # noqa: E402

VIEWS = 4


def time_ms(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def flops(fn: Callable[[], object]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also torch.compile'd rows (minutes)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"))
    parser.add_argument("--layouts", default="NCHW,channels-last", help="comma-separated: NCHW, channels-last")
    parser.add_argument("--attention", default="auto",
                        help="comma-separated attention kernels for ControlNet+UNet: auto (torch's choice), "
                             "cudnn, flash, efficient, math")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)  # as guidance.speed.accelerate sets it
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    dev = torch.device("cuda")
    parts = dict(build_random_models("sd15", seed=0, device="cpu"), tokenizer=None)
    master = prepare_models(parts, dev, dtype)
    taesd = build_tiny_encoder("sd15")
    taesd.decoder = None
    taesd = taesd.requires_grad_(False).eval().to(dev, dtype)
    g = torch.Generator(dev).manual_seed(0)
    b = 2 * VIEWS
    lat = torch.randn(b, 4, 64, 64, device=dev, generator=g).to(dtype)
    t = torch.randint(20, 980, (b,), device=dev, generator=g)
    emb = torch.randn(b, 77, 768, device=dev, generator=g).to(dtype)
    ctrl = torch.rand(b, 3, 512, 512, device=dev, generator=g).to(dtype)
    img = torch.rand(VIEWS, 3, 512, 512, device=dev, generator=g).to(dtype)

    def encoder_step(encoder, channels_last: bool) -> Callable[[], object]:
        def run() -> object:
            x = img.detach().requires_grad_(True)
            y = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            encoder(y).float().square().mean().backward()
            return x.grad
        return run

    rows: list[tuple[str, str, float, float]] = []

    def add(part: str, variant: str, fn: Callable[[], object], work: float) -> None:
        ms = time_ms(fn, args.iters)
        rows.append((part, variant, ms, work / ms / 1e9))
        print(f"{part:<26} {variant:<46} {ms:8.2f} ms {work / ms / 1e9:7.0f} TFLOP/s", file=sys.stderr, flush=True)

    with torch.no_grad():
        unet_flops = flops(lambda: NoisePredictor(master, graphs=False)(lat, t, emb, ctrl))
    vae_flops = flops(encoder_step(master.vae.encoder, False))
    tae_flops = flops(encoder_step(taesd.encoder, False))
    layouts = args.layouts.split(",")
    kernels = args.attention.split(",")

    def label(layout: str, mode: str, attention: str) -> str:
        return f"{layout}, {mode}" + ("" if attention == "auto" else f", {attention} attn")

    for layout in layouts:
        m = copy.deepcopy(master)
        if layout == "channels-last":
            m.unet.to(memory_format=torch.channels_last)
            m.controlnet.to(memory_format=torch.channels_last)
            m.vae.encoder.to(memory_format=torch.channels_last)
            m.channels_last = True
        for attention in kernels:
            for graphs in (False, True):
                pred = NoisePredictor(m, graphs=graphs, attention=attention)
                add("ControlNet+UNet, batch 8", label(layout, "CUDA graph" if graphs else "eager", attention),
                    lambda: pred(lat, t, emb, ctrl), unet_flops)
        add("VAE encoder fwd+bwd, 4", f"{layout}, eager", encoder_step(m.vae.encoder, layout != "NCHW"), vae_flops)
        with attention_kernels("math"):
            add("VAE encoder fwd+bwd, 4", f"{layout}, eager, math attn", encoder_step(m.vae.encoder, layout != "NCHW"),
                vae_flops)
        tae = copy.deepcopy(taesd)
        if layout != "NCHW":
            tae.encoder.to(memory_format=torch.channels_last)
        add("TAESD encoder fwd+bwd, 4", f"{layout}, eager", encoder_step(tae.encoder, layout != "NCHW"), tae_flops)
        del m
    if args.compile:
        for layout in layouts:
            m = copy.deepcopy(master)
            cl = layout == "channels-last"
            if cl:
                for mod in (m.unet, m.controlnet, m.vae.encoder):
                    mod.to(memory_format=torch.channels_last)
                m.channels_last = True
            t0 = time.perf_counter()
            enc = torch.compile(m.vae.encoder, dynamic=False)
            encoder_step(enc, cl)()
            add("VAE encoder fwd+bwd, 4", f"{layout}, compiled ({time.perf_counter() - t0:.0f} s)",
                encoder_step(enc, cl), vae_flops)
            unet, controlnet = m.unet, m.controlnet
            for attention in kernels:
                torch._dynamo.reset()
                m.unet = torch.compile(unet, dynamic=False)
                m.controlnet = torch.compile(controlnet, dynamic=False)
                pred = NoisePredictor(m, graphs=True, attention=attention)
                t0 = time.perf_counter()
                pred(lat, t, emb, ctrl)
                mode = f"compiled+graph ({time.perf_counter() - t0:.0f} s)"
                add("ControlNet+UNet, batch 8", label(layout, mode, attention), lambda: pred(lat, t, emb, ctrl),
                    unet_flops)
            del m
    lines = [f"# diffusion parts of one {VIEWS}-view SDS iteration ({args.dtype}, random SD 1.5-sized weights)",
             f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}",
             f"work: ControlNet+UNet {unet_flops / 1e12:.2f} TFLOP, VAE encoder fwd+bwd {vae_flops / 1e12:.2f} TFLOP, "
             f"TAESD encoder fwd+bwd {tae_flops / 1e12:.2f} TFLOP (torch.utils.flop_counter)", "",
             f"{'part':<26} {'variant':<46} {'ms':>8} {'TFLOP/s':>8}", "-" * 92]
    lines += [f"{p:<26} {v:<46} {ms:>8.2f} {tf:>8.0f}" for p, v, ms, tf in rows]
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
