"""Milliseconds per training iteration of avatar creation (skeleton-guided SDS), split by phase.

    python bench/train.py --out bench/results/train_<card>.txt            # full table (GPU)
    python bench/train.py --quick --out bench/results/train_<card>_quick.txt
    python bench/train.py --smoke --out /tmp/train_smoke.txt               # tiny models, CPU check
    python bench/train.py --only taesd-4-fp16-c --profile [--trace DIR]     # where the time goes
    python bench/train.py --recipes --out bench/results/train_recipes_<card>.txt   # both recipes

The diffusion models are Stable Diffusion 1.5's UNet, VAE and CLIP text encoder and the
OpenPose ControlNet v1.1 built from their configs with random weights: the same shapes and
FLOPs as the real ones, nothing downloaded. Each row runs the project's own trainer
(`backend.train.Trainer`): random-pose stage, 512x512 renders of a template avatar of
--gaussians Gaussians, the OpenPose skeleton of each view, SDS with classifier-free guidance,
backward through the VAE encoder, the renderer and the posing, Adam and the densification
bookkeeping. Phases are timed with a GPU synchronisation at each boundary (so they add up to
more than the real time); "ms/iter" is the time of 2 x --iters iterations run back to back, as
a training run runs them (the CPU launches the next work while the GPU finishes the last),
divided by their number.

Beside our configurations the table measures a DreamWaltz-G-equivalent one in our code (fp32
diffusion, one view per step, guidance scale 50, without our speed-ups), so the speed-up is a
ratio from one run, and "plain": ours without CUDA graphs and batch workers. Row ids for
--only: 4-fp16, 1-fp16, 4-bf16, 1-bf16, taesd-4-fp16 (the tiny encoder), plain-4-fp16,
dwg-1-fp32, and the same with -c for torch.compile (4-fp16-c, taesd-4-fp16-c, 4-bf16-c, ...).
Each compiled row compiles for 1.5-3 minutes first; a device call of 10 minutes fits about four.

--recipes measures the recipes instead: for each of --recipe fast and --recipe dreamwaltz-g (at
the precisions and compile settings of --recipe-rows), every stage of its schedule in turn
(warm-up, then --iters iterations back to back), and the wall time of the whole recipe
extrapolated from each stage's speed x its planned iterations, plus the NeRF -> Gaussians
conversion once (dreamwaltz-g). Row ids for --recipe-rows: fast-fp16, dwg-fp32, dwg-fp16,
dwg-fp16-taesd (the tiny encoder in place of SD's VAE encoder), and with -c compiled
(fast-fp16-c, dwg-fp32-c, dwg-fp16-c, dwg-fp16-taesd-c). With --phases each stage is also split
by phase (a second pass with a GPU synchronisation at each boundary), to see where it spends.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import device_name, emit, sync  # noqa: E402

from backend.guidance import SDSConfig, prepare_models  # noqa: E402
from backend.guidance.configs import build_random_models, build_tiny_encoder, byte_tokenizer  # noqa: E402
from backend.render import available_backends  # noqa: E402
from backend.train import PhaseTimer, TrainConfig, Trainer  # noqa: E402
from backend.train.trainer import PHASES  # noqa: E402

PHASE_COLUMNS = (("batch", ("sample",)), ("render", ("render",)),
                 ("encode", ("encode",)), ("unet+cn", ("unet",)), ("backward", ("backward",)),
                 ("optim", ("optim", "refine")))
DEFAULT_RECIPE_ITERATIONS = 3000


@dataclasses.dataclass
class Row:
    name: str
    views: int
    dtype: str
    compiled: bool = False
    guidance_scale: float = 50.0
    encoder: str = "vae"
    speedups: bool = True      # CUDA graphs and the batch workers
    note: str = ""

    @property
    def id(self) -> str:
        base = {"ours": "", "ours+taesd": "taesd-", "dreamwaltz-g": "dwg-", "plain": "plain-"}[self.name]
        return f"{base}{self.views}-{self.dtype}" + ("-c" if self.compiled else "")


def configurations(quick: bool, smoke: bool) -> list[Row]:
    """In order of importance (a time limit skips the last ones)."""
    dwg = Row("dreamwaltz-g", 1, "fp32", speedups=False, note="fp32, 1 view, cfg 50, no speed-ups")
    plain = Row("plain", 2 if smoke else 4, "fp32" if smoke else "fp16", speedups=False, note="ours without CUDA graphs and batch workers")
    if smoke:
        return [Row("ours", 2, "fp32"), Row("ours", 1, "fp32"), Row("ours", 2, "bf16"),
                Row("ours+taesd", 2, "fp32", encoder="tiny", note="tiny encoder"), dwg, plain]
    rows = [Row("ours", 4, "fp16"), Row("ours+taesd", 4, "fp16", encoder="tiny", note="tiny encoder (TAESD)"),
            dwg, plain, Row("ours", 1, "fp16"), Row("ours", 4, "fp16", compiled=True)]
    if quick:
        return rows
    return rows + [Row("ours", 4, "bf16"), Row("ours", 1, "bf16"),
                   Row("ours+taesd", 4, "fp16", encoder="tiny", compiled=True, note="tiny encoder (TAESD)"),
                   Row("ours", 1, "fp16", compiled=True), Row("ours", 4, "bf16", compiled=True),
                   Row("ours", 1, "bf16", compiled=True)]


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}






def build_master(size: str, device: str, tmp: Path) -> dict:
    t0 = time.perf_counter()
    parts = build_random_models(size, seed=0, device=device)
    parts["tokenizer"] = byte_tokenizer(tmp / "tokenizer")
    print(f"built random-weight {size} models on {device} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return parts


def tiny_encoder(device: str, dtype: torch.dtype, smoke: bool):
    enc = build_tiny_encoder("tiny" if smoke else "sd15")
    enc.decoder = None
    return enc.requires_grad_(False).to(device=device, dtype=dtype)


def run_steps(trainer: Trainer, n: int, device: str) -> float:
    """Milliseconds per iteration of `n` iterations run back to back, as a training run runs them
    (the CPU queues one iteration's launches while the GPU still works on the last one)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        trainer.train_step()
        trainer.step_index += 1
    sync(device)
    return (time.perf_counter() - t0) * 1000 / max(n, 1)


def measure(row: Row, master: dict, args: argparse.Namespace, device: str) -> dict:
    dtype = DTYPES[row.dtype]
    parts = {k: (copy.deepcopy(v) if k in ("unet", "vae", "text_encoder", "controlnet") else v)
             for k, v in master.items()}
    models = prepare_models(parts, device, dtype, {"sd_model": "random", "controlnet": "random"})
    sds_cfg = SDSConfig(guidance_scale=row.guidance_scale, encoder=row.encoder)
    config = TrainConfig(prompt="a chef dressed in white", steps=1_000_000, views=row.views,
                         resolution=args.resolution, num_gaussians=args.gaussians, template_fraction=0.0,
                         canonical_fraction=0.0, device=device, rasterizer=args.rasterizer, sds=sds_cfg,
                         checkpoint_every=0, preview_every=0, log_every=0, compile=row.compiled,
                         cuda_graphs=row.speedups, workers=-1 if row.speedups else 0,
                         attention=args.attention if row.speedups else "auto")
    timer = PhaseTimer(enabled=False, sync=True)
    enc = tiny_encoder(device, dtype, args.smoke) if row.encoder == "tiny" else None
    trainer = Trainer(config, None, models=models, timer=timer, tiny_encoder=enc)
    trainer.ensure_guidance()
    compile_s = 0.0
    if row.compiled:
        torch._dynamo.reset()
        compile_s = run_steps(trainer, 2, device) * 2 / 1000
    run_steps(trainer, args.warmup, device)
    # phases, with syncs
    timer.enabled = True
    timer.reset()
    run_steps(trainer, args.iters, device)
    phases = {col: sum(timer.totals.get(k, 0.0) for k in keys) / args.iters * 1000 for col, keys in PHASE_COLUMNS}
    timer.enabled = False
    ms = run_steps(trainer, 2 * args.iters, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    result = {"row": row, "phases": phases, "ms": ms, "compile_s": compile_s,
              "gaussians": trainer.num_gaussians, "peak_gib": peak}
    if args.profile:
        result["profile"] = profile_steps(trainer, row, args.iters, device, args.trace)
    trainer.close()
    del trainer, models, parts, enc
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap(busy: list[tuple[float, float]], a: float, b: float) -> float:
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in busy)


def profile_steps(trainer: Trainer, row: Row, iters: int, device: str, trace: str | None = None) -> str:
    """Where an iteration's time goes, from torch.profiler's timeline: per phase the CPU time,
    and on the GPU the phase's span, the kernels' busy time inside it and the idle rest (idle
    GPU inside a span means the CPU, launching or waiting on a host sync, held the GPU up);
    then the kernels that take the most GPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    timer = trainer.timer
    timer.enabled, timer.sync, timer.annotate = True, False, True
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = run_steps(trainer, iters, device)
    timer.enabled = timer.annotate = False
    if trace:
        Path(trace).mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(Path(trace) / f"{row.id}.json.gz"))
    events = prof.events()
    on_gpu = [e for e in events if e.device_type == DeviceType.CUDA]
    kernels = [e for e in on_gpu if not e.name.startswith("phase:")]
    busy = _union([(e.time_range.start, e.time_range.end) for e in kernels])
    busy_ms = sum(b - a for a, b in busy) / 1000 / iters
    lines = [f"profile of {row.name} {row.views} views {row.dtype} {'compiled' if row.compiled else 'eager'} "
             f"({iters} iterations, torch.profiler, which slows the CPU side): wall {wall:.1f} ms/iter, "
             f"GPU busy {busy_ms:.1f} ms/iter ({100 * busy_ms / wall:.0f} %)",
             f"  {'phase':<10} {'cpu ms':>8} {'gpu span':>9} {'gpu busy':>9} {'gpu idle':>9}"]
    names = [name for name in PHASES if any(e.name == f"phase:{name}" for e in events)]
    for name in names:
        cpu = sum(e.time_range.elapsed_us() for e in events
                  if e.name == f"phase:{name}" and e.device_type == DeviceType.CPU) / 1000 / iters
        spans = [(e.time_range.start, e.time_range.end) for e in on_gpu if e.name == f"phase:{name}"]
        span = sum(b - a for a, b in spans) / 1000 / iters
        inside = sum(_overlap(busy, a, b) for a, b in spans) / 1000 / iters
        lines.append(f"  {name:<10} {cpu:>8.2f} {span:>9.2f} {inside:>9.2f} {span - inside:>9.2f}")
    totals: dict[str, list[float]] = {}
    for e in kernels:
        entry = totals.setdefault(e.name, [0.0, 0])
        entry[0] += e.time_range.elapsed_us()
        entry[1] += 1
    lines.append(f"  {'kernel (top 20 by GPU time)':<90} {'ms/iter':>8} {'calls':>6}")
    for name, (us, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:20]:
        lines.append(f"  {name[:90]:<90} {us / 1000 / iters:>8.2f} {count // iters:>6}")
    return "\n".join(lines)


def table(results: list[dict], skipped: list[Row], args: argparse.Namespace, device: str, header: list[str]) -> str:
    cols = [c for c, _ in PHASE_COLUMNS]
    head = (f"{'configuration':<14} {'views':>5} {'dtype':>5} {'mode':>8} "
            + " ".join(f"{c:>9}" for c in cols) + f" {'sum':>8} {'ms/iter':>8} {'ms/view':>8} {'peak GiB':>8}  note")
    lines = header + ["", head, "-" * len(head)]
    for r in results:
        row = r["row"]
        mode = "compiled" if row.compiled else "eager"
        total = sum(r["phases"].values())
        lines.append(f"{row.name:<14} {row.views:>5} {row.dtype:>5} {mode:>8} "
                     + " ".join(f"{r['phases'][c]:>9.1f}" for c in cols)
                     + f" {total:>8.1f} {r['ms']:>8.1f} {r['ms'] / row.views:>8.1f} {r['peak_gib']:>8.1f}  "
                     + (row.note + (f"; compile {r['compile_s']:.0f} s" if row.compiled else "")).strip("; "))
    for row in skipped:
        lines.append(f"{row.name:<14} {row.views:>5} {row.dtype:>5} {'compiled' if row.compiled else 'eager':>8}  "
                     f"skipped: time limit (run it with --only {row.id})")
    ok = [r for r in results if r["ms"] == r["ms"]]  # not NaN (failed rows)
    find = {r["row"].id: r for r in ok}
    dwg = find.get("dwg-1-fp32")
    ours = [r for r in ok if r["row"].name in ("ours", "ours+taesd")]
    if dwg and ours:
        best = min(ours, key=lambda r: r["ms"] / r["row"].views)
        row = best["row"]
        lines += ["", f"speed-up per rendered view vs the DreamWaltz-G-equivalent configuration: "
                      f"{dwg['ms'] / (best['ms'] / row.views):.1f}x ({row.name}, {row.views} views, {row.dtype}, "
                      f"{'compiled' if row.compiled else 'eager'}: {best['ms'] / row.views:.1f} ms/view; "
                      f"DreamWaltz-G-equivalent: {dwg['ms']:.1f} ms/view)"]
    if "plain-4-fp16" in find and "4-fp16" in find:
        lines.append(f"speed-ups (CUDA graphs, batch workers): "
                     f"{find['plain-4-fp16']['ms']:.1f} -> {find['4-fp16']['ms']:.1f} ms per 4-view iteration")
    for key, what in (("4-fp16", "the default (fp16, eager)"), ("4-fp16-c", "with --compile"),
                      ("taesd-4-fp16", "with the tiny encoder"), ("taesd-4-fp16-c", "with the tiny encoder and --compile")):
        if key in find:
            minutes = DEFAULT_RECIPE_ITERATIONS * find[key]["ms"] / 60000
            lines.append(f"default recipe ({DEFAULT_RECIPE_ITERATIONS} iterations x 4 views), {what}: "
                         f"{find[key]['ms']:.1f} ms/iteration, {minutes:.1f} min of iterations")
    lines.append("(plus model loading, previews, checkpoints and export; --compile adds its compile time once)")
    lines += ["\n" + r["profile"] for r in results if "profile" in r]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class RecipeRow:
    recipe: str
    dtype: str
    compiled: bool = False
    encoder: str = "vae"       # "tiny": TAESD in place of SD's VAE encoder (sds.encoder)

    @property
    def id(self) -> str:
        return (f"{'dwg' if self.recipe == 'dreamwaltz-g' else self.recipe}-{self.dtype}"
                + ("-taesd" if self.encoder == "tiny" else "") + ("-c" if self.compiled else ""))

    @property
    def label(self) -> str:
        return self.dtype + ("+taesd" if self.encoder == "tiny" else "")


RECIPE_ROWS = {r.id: r for r in (RecipeRow("fast", "fp16"), RecipeRow("dreamwaltz-g", "fp32"),
                                 RecipeRow("dreamwaltz-g", "fp16"), RecipeRow("dreamwaltz-g", "fp16", encoder="tiny"),
                                 RecipeRow("fast", "fp16", True), RecipeRow("dreamwaltz-g", "fp32", True),
                                 RecipeRow("dreamwaltz-g", "fp16", True),
                                 RecipeRow("dreamwaltz-g", "fp16", True, encoder="tiny"))}
SMOKE_NERF = dict(levels=6, log2_table=12, grid_size=32, max_steps=64, pretrain_steps=20, pretrain_resolution=24,
                  pretrain_points=2048, pretrain_gaussians=2000, pretrain_voxels=32, pretrain_views=1,
                  convert_resolution=48, skin_smooth_iters=10, bound_gaussians=300, prior_points=200, prior_pool=2)
SMOKE_RECIPE_STEPS = 2   # iterations of each stage actually run with --smoke (enough to reach every stage)


def recipe_config(row: RecipeRow, args: argparse.Namespace, device: str) -> TrainConfig:
    """The recipe as a user runs it (its defaults), on this device; with --smoke, tiny renders.
    Without the NeRF package dreamwaltz-g is measured without its NeRF stages (init = template)."""
    from backend.train.nerf_stage import nerf_available

    extra: dict = {}
    if row.recipe == "dreamwaltz-g" and not nerf_available():
        extra["init"] = "template"
    if args.smoke and row.recipe == "dreamwaltz-g":
        names = [s.name for s in TrainConfig(prompt="x", recipe=row.recipe, **extra).stages()]
        extra.update(nerf=SMOKE_NERF, stage_resolutions={n: args.resolution for n in names})
    if row.encoder == "tiny":
        extra["sds"] = {"encoder": "tiny"}   # (the latent is then its mean: TrainConfig)
    return TrainConfig(prompt="a chef dressed in white", recipe=row.recipe, device=device, dtype=row.dtype,
                       rasterizer=args.rasterizer, compile=row.compiled, checkpoint_every=0, preview_every=0,
                       log_every=0, num_gaussians=args.gaussians, resolution=args.resolution, **extra)


def measure_recipe(row: RecipeRow, master: dict, args: argparse.Namespace, device: str) -> dict:
    """ms per iteration of each stage of a recipe, and the recipe's wall time extrapolated."""
    config = recipe_config(row, args, device)
    dtype = DTYPES[config.diffusion_dtype]
    parts = {k: (copy.deepcopy(v) if k in ("unet", "vae", "text_encoder", "controlnet") else v)
             for k, v in master.items()}
    models = prepare_models(parts, device, dtype, {"sd_model": "random", "controlnet": "random"})
    enc = tiny_encoder(device, dtype, args.smoke) if row.encoder == "tiny" else None
    timer = PhaseTimer(enabled=False, sync=True)
    trainer = Trainer(config, None, models=models, timer=timer, tiny_encoder=enc)
    trainer.ensure_guidance()
    stages, convert_s, compile_s = [], 0.0, 0.0
    schedule = trainer.schedule
    for i, (name, planned) in enumerate(zip(list(schedule.names), list(schedule.lengths))):
        if planned == 0:
            continue
        spec = trainer.stages[name]
        trainer.step_index = schedule.start_of(i)
        if spec.kind == "gaussians" and trainer.phase == "nerf":
            sync(device)
            t0 = time.perf_counter()
            trainer.convert()
            sync(device)
            convert_s = time.perf_counter() - t0
        warm = min(args.warmup, max(0, planned - 1))
        t0 = time.perf_counter()
        run_steps(trainer, warm, device)
        if row.compiled and not compile_s:
            compile_s = time.perf_counter() - t0
        n = max(1, min(args.iters, planned - warm))
        ms = run_steps(trainer, n, device)
        stages.append({"name": name, "kind": spec.kind, "resolution": spec.resolution, "planned": planned,
                       "ms": ms, "minutes": planned * ms / 60000,
                       "phases": stage_phases(trainer, n, device) if args.phases else None})
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    result = {"row": row, "config": config, "stages": stages, "convert_s": convert_s, "compile_s": compile_s,
              "gaussians": trainer.num_gaussians, "peak_gib": peak,
              "minutes": sum(st["minutes"] for st in stages) + convert_s / 60}
    trainer.close()
    del trainer, models, parts
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def stage_phases(trainer: Trainer, n: int, device: str) -> dict[str, float]:
    """ms per phase of `n` more iterations, the GPU synchronised at each phase boundary."""
    timer = trainer.timer
    timer.enabled = True
    timer.reset()
    run_steps(trainer, n, device)
    timer.enabled = False
    return {col: sum(timer.totals.get(k, 0.0) for k in keys) / n * 1000 for col, keys in PHASE_COLUMNS}


def phase_table(results: list[dict]) -> list[str]:
    """Each stage's time by phase (from --phases)."""
    cols = [c for c, _ in PHASE_COLUMNS]
    head = f"{'recipe':<13} {'dtype':>10} {'mode':>8} {'stage':<12} " + " ".join(f"{c:>9}" for c in cols) + f" {'sum':>8}"
    lines = ["", "where each stage's time goes (ms per iteration, GPU-synchronised at each phase boundary, so the "
             "sum exceeds ms/iter; batch = poses, cameras, skeleton images and SDS inputs, render = posing with the "
             "hybrid fields (3DGS) or occupancy refresh + ray marching (NeRF), encode = VAE or tiny encoder, unet+cn = ControlNet "
             "+ UNet with CFG, backward = the sigma-prior (NeRF) and backward through encoder, renderer, fields and "
             "posing, optim = Adam):", head,
             "-" * len(head)]
    for r in results:
        row = r["row"]
        for st in r.get("stages", []):
            if st.get("phases"):
                ph = st["phases"]
                lines.append(f"{row.recipe:<13} {row.label:>10} {'compiled' if row.compiled else 'eager':>8} "
                             f"{st['name']:<12} " + " ".join(f"{ph[c]:>9.1f}" for c in cols)
                             + f" {sum(ph.values()):>8.1f}")
    return lines if len(lines) > 4 else []


def recipe_table(results: list[dict], header: list[str]) -> str:
    targets = {"fast": 5.0, "dreamwaltz-g": 20.0}
    lines = header + ["", f"{'recipe':<13} {'dtype':>10} {'mode':>8} {'stage':<12} {'kind':<9} {'px':>4} "
                          f"{'iters':>6} {'ms/iter':>8} {'minutes':>8}", "-" * 87]
    for r in results:
        row = r["row"]
        mode = "compiled" if row.compiled else "eager"
        if "error" in r:
            lines.append(f"{row.recipe:<13} {row.label:>10} {mode:>8}  FAILED: {r['error']}")
            continue
        for st in r["stages"]:
            lines.append(f"{row.recipe:<13} {row.label:>10} {mode:>8} {st['name']:<12} {st['kind']:<9} "
                         f"{st['resolution']:>4} {st['planned']:>6} {st['ms']:>8.1f} {st['minutes']:>8.2f}")
        note = []
        if r["convert_s"]:
            note.append(f"NeRF -> Gaussians {r['convert_s']:.1f} s")
        if row.recipe == "dreamwaltz-g" and r["config"].init == "template":
            note.append("NeRF stages not in this build: measured without them (init = template)")
        if row.compiled:
            note.append(f"compile {r['compile_s']:.0f} s (once, not in the total)")
        lines.append(f"{row.recipe:<13} {row.label:>10} {mode:>8} {'WHOLE RECIPE':<12} {'':<9} {'':>4} "
                     f"{sum(st['planned'] for st in r['stages']):>6} {'':>8} {r['minutes']:>8.2f}  "
                     f"target <= {targets[row.recipe]:.0f} min; {r['gaussians']} Gaussians at the end"
                     + ("; " + "; ".join(note) if note else ""))
    lines.append("(minutes: planned iterations x measured ms/iter, + the conversion; model loading, previews, "
                 "checkpoints and export not included)")
    lines += phase_table(results)
    return "\n".join(lines) + "\n"


def run_recipes(args: argparse.Namespace, device: str, master: dict, header: list[str]) -> str:
    ids = args.recipe_rows.split(",") if args.recipe_rows else (
        ["fast-fp16", "dwg-fp32"] if args.smoke else ["fast-fp16", "dwg-fp32", "dwg-fp16"])
    unknown = [i for i in ids if i not in RECIPE_ROWS]
    if unknown:
        raise SystemExit(f"unknown --recipe-rows {', '.join(unknown)}; choose from {', '.join(RECIPE_ROWS)}")
    results = []
    for rid in ids:
        row = RECIPE_ROWS[rid]
        if args.smoke:
            row = dataclasses.replace(row, dtype="fp32")
        print(f"recipe {row.recipe} {row.dtype} {'compiled' if row.compiled else 'eager'} ...", file=sys.stderr,
              flush=True)
        try:
            results.append(measure_recipe(row, master, args, device))
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the table
            print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            results.append({"row": row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
    return recipe_table(results, header)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the table here too")
    parser.add_argument("--quick", action="store_true", help="fp16 only: eager 1 and 4 views, compiled 4 views, "
                                                             "and the DreamWaltz-G-equivalent row")
    parser.add_argument("--smoke", action="store_true", help="tiny models at 64 px on the CPU (checks the script)")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    parser.add_argument("--iters", type=int, default=None, help="measured iterations per row (default 10; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="default 3 (smoke 1)")
    parser.add_argument("--gaussians", type=int, default=None, help="initial Gaussians (default 100000; smoke 2000)")
    parser.add_argument("--resolution", type=int, default=None, help="render size (default 512; smoke 64)")
    parser.add_argument("--rasterizer", default="auto", choices=("auto", "torch", "gsplat"))
    parser.add_argument("--max-minutes", type=float, default=8.0,
                        help="skip the remaining rows once this much time has passed (default 8)")
    parser.add_argument("--attention", default="auto",
                        help="attention kernel for our rows: auto (torch's choice), cudnn, flash, efficient")
    parser.add_argument("--profile", action="store_true",
                        help="after each row, profile its iterations (GPU time per phase, top kernels)")
    parser.add_argument("--trace", default=None, help="with --profile: write each row's timeline (Chrome trace) here")
    parser.add_argument("--only", default=None,
                        help="comma-separated row ids to run, e.g. 4-fp16,taesd-4-fp16-c,dwg-1-fp32,plain-4-fp16")
    parser.add_argument("--recipes", action="store_true",
                        help="measure each stage of both recipes and extrapolate their wall time (see above)")
    parser.add_argument("--phases", action="store_true",
                        help="with --recipes: also split each stage by phase (GPU-synchronised)")
    parser.add_argument("--recipe-rows", default=None,
                        help=f"with --recipes: comma-separated ids ({', '.join(RECIPE_ROWS)}; "
                             "default fast-fp16,dwg-fp32,dwg-fp16)")
    args = parser.parse_args()
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    args.smoke = args.smoke or device == "cpu"
    args.iters = args.iters or (2 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.smoke else 4)  # 3: CUDA graph capture
    args.gaussians = args.gaussians or (2000 if args.smoke else 100_000)
    args.resolution = args.resolution or (64 if args.smoke else 512)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = configurations(args.quick, args.smoke)
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in configurations(False, args.smoke) if r.id in keep]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        master = build_master("tiny" if args.smoke else "sd15", device, Path(tmp))
        rasterizer = args.rasterizer
        if rasterizer == "auto":
            rasterizer = "gsplat" if device == "cuda" and "gsplat" in available_backends() else "torch"
        header = [f"# avatar creation: ms per training iteration ({'smoke: tiny models' if args.smoke else 'SD 1.5 + ControlNet sizes, random weights'})",
                  f"device: {device_name(device)}; torch {torch.__version__}"
                  + (f", CUDA {torch.version.cuda}" if device == "cuda" else "")
                  + f"; python {platform.python_version()}",
                  f"render {args.resolution}x{args.resolution} ({rasterizer}), {args.gaussians} initial Gaussians, "
                  f"random-pose stage, guidance scale 50, {args.iters} measured iterations after {args.warmup} warm-up"
                  + ("" if args.attention == "auto" else f", {args.attention} attention first"),
                  "phases (ms, GPU-synchronised at each boundary): batch = pose, cameras and OpenPose images (made "
                  "ahead by worker processes, except in the rows without speed-ups) and their upload, render = "
                  "posing + rasterisation, encode = VAE (or tiny) encoder, unet+cn = ControlNet + "
                  "UNet with CFG, backward = through encoder, renderer and posing, optim = Adam + densification stats"]
        if args.recipes:
            header[0] = header[0].replace("ms per training iteration", "the two recipes, stage by stage")
            header[2] = (f"render {args.resolution}x{args.resolution} ({rasterizer}) in the 3DGS stages, "
                         f"{args.gaussians} initial Gaussians where the recipe starts from the template, "
                         f"{args.iters} measured iterations per stage after {args.warmup} warm-up")
            text = run_recipes(args, device, master, header[:3])
            text += f"\ntotal benchmark time {(time.perf_counter() - start) / 60:.1f} min\n"
            emit(text, args.out)
            return 0
        results, skipped = [], []
        for row in rows:
            elapsed = (time.perf_counter() - start) / 60
            if elapsed > args.max_minutes:
                skipped.append(row)
                continue
            label = f"{row.name} {row.views} view(s) {row.dtype} {'compiled' if row.compiled else 'eager'}"
            print(f"[{elapsed:4.1f} min] {label} ...", file=sys.stderr, flush=True)
            try:
                results.append(measure(row, master, args, device))
            except Exception as exc:  # noqa: BLE001 - one failing row must not lose the table
                print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                row.note = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                results.append({"row": row, "phases": {c: float("nan") for c, _ in PHASE_COLUMNS},
                                "ms": float("nan"), "compile_s": 0.0, "gaussians": 0, "peak_gib": float("nan")})
            if device == "cuda":
                torch.cuda.empty_cache()
        text = table(results, skipped, args, device, header)
        text += f"\ntotal benchmark time {(time.perf_counter() - start) / 60:.1f} min\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
