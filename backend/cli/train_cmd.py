"""`python -m backend train`: create an avatar from a text prompt (skeleton-guided SDS).

    python -m backend train --prompt "a chef dressed in white" --out runs/chef
    python -m backend train --out runs/chef --resume          # after Ctrl-C, a crash or a reboot
    python -m backend train --recipe dreamwaltz-g --prompt "a chef dressed in white" --out runs/chef-dwg

--recipe fast (the default) is ours; --recipe dreamwaltz-g is the published recipe (a NeRF
stage, then three 3DGS stages, one view per iteration; see docs/training.md).

Ctrl-C (SIGINT) or SIGTERM saves a checkpoint and exits with status 130; --resume continues
exactly where the run stopped. The finished avatar is `<out>/avatar` (its path is printed on
stdout). Weights: --sd-model / --controlnet name local folders or Hugging Face ids (looked up in
the local cache only unless --allow-download); see docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..protocol import TRAIN_RECIPES
from .common import CommandError, Progress, add_body_model, add_device, parse_betas, run


def _config(args: argparse.Namespace) -> Any:
    from ..train import TrainConfig, parse_duration
    from ..train.trainer import resume_config

    out = Path(args.out)
    overrides: dict[str, Any] = {}
    if args.config:
        try:
            overrides.update(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"cannot read --config {args.config}: {exc}") from exc
    flat = {"prompt": args.prompt, "seed": args.seed, "recipe": args.recipe, "preset": args.preset, "steps": args.steps,
            "views": args.views, "resolution": args.resolution, "num_gaussians": args.num_gaussians,
            "appearance": args.appearance, "body_model": args.body_model, "betas": parse_betas(args.betas),
            "sd_model": args.sd_model, "controlnet": args.controlnet, "device": args.device, "dtype": args.dtype,
            "rasterizer": args.rasterizer, "checkpoint_every": args.checkpoint_every,
            "preview_every": args.preview_every, "tiny_encoder": args.tiny_encoder, "workers": args.workers}
    overrides.update({k: v for k, v in flat.items() if v is not None})
    if args.expression:
        overrides["expression"] = True
    if args.allow_download:
        overrides["allow_download"] = True
    if args.compile:
        overrides["compile"] = True
    if args.time_budget is not None:
        overrides["time_budget"] = parse_duration(args.time_budget)
    sds = dict(overrides.pop("sds", {}) or {})
    if args.negative_prompt is not None:
        sds["negative_prompt"] = args.negative_prompt
    if args.guidance_scale is not None:
        sds["guidance_scale"] = args.guidance_scale
    if args.tiny_encoder is not None:
        sds["encoder"] = "tiny"
    poses = dict(overrides.pop("poses", {}) or {})
    if args.pose_library is not None:
        poses["library"] = None if args.pose_library == "none" else args.pose_library
    if args.resume and (out / "config.json").exists():
        return resume_config(out, dict(overrides, sds=dict(overrides.get("sds") or {}, **sds),
                                       poses=dict(overrides.get("poses") or {}, **poses)))
    if not args.prompt and "prompt" not in overrides:
        raise CommandError("--prompt is needed (or --resume with an --out folder that holds a run)")
    if sds:
        overrides["sds"] = sds
    if poses:
        overrides["poses"] = poses
    return TrainConfig.from_dict(overrides)


class _Cancel:
    """SIGINT/SIGTERM ask the run to stop at the next iteration (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Cancel":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint and stopping (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __call__(self) -> bool:
        return self.requested


def _main(args: argparse.Namespace) -> int:
    from ..guidance import GuidanceModelError
    from ..train import CheckpointError, TrainingCancelled, TrainingError, run_training
    from ..train.distributed import join, world_size

    rank = f"rank {os.environ.get('RANK', '0')} " if world_size() > 1 else ""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {rank}%(name)s: %(message)s")
    try:
        config = _config(args)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from exc
    out = Path(args.out)
    state: dict[str, Any] = {"bar": None, "stage": None}

    def progress(stage: str, step: int, total: int, loss: float | None = None, preview: str | None = None,
                 recipe: str = "", stage_index: int = 0, stages: list[str] | None = None, **extra: Any) -> None:
        bar = state["bar"]
        if bar is None or bar.total != total:
            bar = state["bar"] = Progress(total, "train")
        if stage != state["stage"]:
            state["stage"] = stage
        where = f"{recipe} {stage} {stage_index + 1}/{len(stages or [stage])}".strip()
        bar.label = f"{where:<28}" + (f" loss {loss:9.4g}" if loss is not None else "")
        if step > 0:
            bar.update(step)

    t0 = time.perf_counter()
    with _Cancel() as cancel:
        try:
            with join(config.views, config.device) as parallel:   # torchrun: this rank's part of the run
                folder = run_training(config, out, progress_cb=progress if parallel.is_main else None,
                                      should_cancel=cancel, resume=args.resume, parallel=parallel)
        except TrainingCancelled as exc:
            if world_size() == 1 or os.environ.get("RANK", "0") == "0":
                print(f"\n{exc}\ncontinue with: python -m backend train --out {out} --resume", file=sys.stderr)
            return 130
        except (GuidanceModelError, TrainingError, CheckpointError) as exc:
            raise CommandError(str(exc)) from exc
    if not parallel.is_main:
        return 0
    print(f"avatar written to {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(folder)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=None, help="what the avatar should look like")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, previews, the avatar)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--sd-model", default=None, metavar="DIR|ID",
                        help="Stable Diffusion 1.5 folder or hub id (default: $DREAMWALTZ_SD_MODEL, then the cache)")
    parser.add_argument("--controlnet", default=None, metavar="DIR|ID",
                        help="OpenPose ControlNet v1.1 folder or hub id (default: $DREAMWALTZ_CONTROLNET, then the cache)")
    parser.add_argument("--allow-download", action="store_true", help="let diffusers fetch missing weights")
    parser.add_argument("--expression", action="store_true",
                        help="expression control: mesh-bound face, random expressions, face landmarks")
    parser.add_argument("--recipe", choices=TRAIN_RECIPES, default=None,
                        help="fast (ours, the default) or dreamwaltz-g (the published recipe, number by number)")
    parser.add_argument("--preset", choices=("draft", "default", "high"), default=None,
                        help="the fast recipe's length and Gaussian count")
    parser.add_argument("--steps", type=int, default=None, help="iterations (each renders --views images)")
    parser.add_argument("--time-budget", default=None, metavar="T", help="bound the run: 600, 90s, 10m, 1h30m")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--views", type=int, default=None, help="views per iteration (default 4)")
    parser.add_argument("--resolution", type=int, default=None, help="render size (default 512)")
    parser.add_argument("--num-gaussians", type=int, default=None)
    parser.add_argument("--appearance", choices=("colors", "hashgrid"), default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--pose-library", default=None, metavar="FILE|dance|none",
                        help="motion file mixed into the random poses (default: the built-in dance)")
    parser.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default=None,
                        help="diffusion precision (auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet, ControlNet and encoder "
                                                               "(about 1.5-3 min of compiling, then 15-30 %% faster)")
    parser.add_argument("--tiny-encoder", default=None, metavar="DIR|ID",
                        help="encode renders with a TAESD AutoencoderTiny (e.g. madebyollin/taesd) instead of the "
                             "SD VAE: about 2x faster iterations; its effect on quality is not yet measured")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes preparing poses, cameras and skeleton images ahead (default on a GPU: all "
                             "CPU cores but two, at most 16, 0.4 GB each; none on the CPU)")
    parser.add_argument("--rasterizer", choices=("auto", "torch", "gsplat"), default=None)
    parser.add_argument("--betas", default=None, help="body shape (comma-separated)")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--preview-every", type=int, default=None)
    parser.add_argument("--config", default=None, metavar="JSON", help="a JSON file of further TrainConfig settings")
    parser.add_argument("-v", "--verbose", action="store_true", help="log stages, densification and timing")
    add_body_model(parser)
    add_device(parser)
    parser.set_defaults(device=None)
    return run(_main, parser, argv)
