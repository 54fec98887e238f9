"""What each recipe's representation and schedule can hold: a photometric fit of a clothed target.

    python bench/capacity.py --size small --out bench/results/capacity_cpu.txt    # CPU (2 shared cores: ~1 h)
    python bench/capacity.py --smoke                                               # seconds: checks the script
    # GPU, full size: the same command until it exits 0 (3: out of time, continued by the next call)
    python bench/capacity.py --size full --max-minutes 8 --out bench/results/capacity_gpu_<card>.txt

Quality cannot be measured without diffusion weights, so this measures what SDS could at best
get out of each recipe: the target is known (bench/clothed_target.py: the open template with a
flared skirt and long hair, made of Gaussians skinned to the hips and head), and each recipe is
trained on it by its own trainer, stage by stage, with `backend.train.photometric`'s L1 against
the target's render of the very same batch (pose, cameras at the stage's size, backgrounds) in
place of SDS. The fast recipe thus starts from Gaussians on the skin and densifies; the paper
recipe starts from the body-shaped pretrained NeRF, trains it at 64 -> 128 -> 256 -> 512 px,
converts it to Gaussians and runs its canonical, canonical-R and random-pose stages.

Measured after every stage (and at the start), on sets neither recipe trains on:
* held-out views: the paper's canonical pose (A-pose, arms 45 deg), cameras drawn half from each
  recipe's camera distribution with a seed no training batch uses, random solid backgrounds;
* held-out poses: frames of real motion (DreamWaltz-G's own AIST++ demo in ../shared/data;
  without it the project's built-in dance, which the fast recipe's pose library contains),
  the same mix of cameras;
and reported as the mean PSNR per image, the PSNR on the avatar's pixels (either silhouette),
the share of the pixels only the skirt (or only the hair) covers in the target where the fit's
alpha exceeds 0.5 ("recovered"), and the share of the fit's silhouette outside the target's
("spill": a fog that covered everything would recover all and spill much). The NeRF stages are
measured on the held-out views only (the field lives in the canonical pose).

`--size` sets the render size, the target's density, each recipe's Gaussian count and the
fraction of each recipe's planned iterations: "full" is every recipe number as published (the
paper's 35,000 iterations, its 400^3 conversion; the fast recipe's 3000 x 4 views and 100k
Gaussians) at 512 px; "small" is a CPU-sized scale model of both (the same fraction of each
schedule, NeRF stages at 1/8 ... 1 of the final size as in the paper, at least 16 px);
`--fraction` overrides the share of the schedules. Each recipe's run and results live in
`--work`/<size>/<recipe>/; with `--max-minutes` a run stops in time with a checkpoint (exit
status 3) and the same command continues it exactly (the trainer's resume; a checkpoint is also
kept at every stage's end, so a call killed past its limit loses one stage at most), so a
full-size run can span several calls of a time-limited machine; recipes already done are not run again. The
table shows every recipe done there with this size's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench.report import cpu_name, device_name, sync  # noqa: E402

from backend.avatar import pose_with_transforms  # noqa: E402
from backend.body import BodyModel  # noqa: E402
from backend.files import write_text_atomic  # noqa: E402
from backend.render import Camera, rasterize  # noqa: E402
from backend.train import TrainConfig, Trainer  # noqa: E402
from backend.train.batches import background_color, pose_body  # noqa: E402
from backend.train.cameras import CameraSampler  # noqa: E402
from backend.train.checkpoint import checkpoint_path  # noqa: E402
from backend.train.photometric import PhotometricGuidance  # noqa: E402
from backend.train.poses import PoseSampler  # noqa: E402
from backend.train.skeleton import SkeletonRenderer  # noqa: E402
from clothed_target import ClothedTarget, build_target  # noqa: E402

RECIPES = ("fast", "dreamwaltz-g")
MOTION = ROOT.parent / "shared" / "data" / "motions" / "smplx265_npy" / "Yukun-Huang__DreamWaltz-G__aist.npy"
EVAL_SEED = 0xE7A1   # the held-out cameras' and backgrounds' stream (training batches use step_rng(seed, step))
ALPHA = 0.5


@dataclasses.dataclass(frozen=True)
class Size:
    resolution: int
    density: float                 # target Gaussians per m^2 of surface
    fraction: float                # of each recipe's planned iterations
    fast_gaussians: int            # the fast recipe's initial Gaussians
    views: int                     # held-out views
    poses: int                     # held-out poses (one camera each)
    nerf: dict[str, Any]           # NeRFConfig overrides (the paper's defaults at full size)
    min_nerf_px: int = 16


SIZES = {
    "full": Size(512, 40_000.0, 1.0, 100_000, 24, 24, {}),
    "small": Size(32, 4_000.0, 0.02, 3_000, 12, 12,
                  dict(levels=10, log2_table=15, grid_size=48, max_steps=256, pretrain_steps=300,
                       pretrain_resolution=48, pretrain_points=4096, pretrain_gaussians=8000, pretrain_voxels=96,
                       convert_resolution=64, skin_smooth_iters=200, bound_gaussians=600, prior_points=800,
                       prior_pool=2, update_every=8)),
    "toy": Size(24, 600.0, 0.0005, 400, 2, 2,
                dict(levels=4, log2_table=10, grid_size=16, max_steps=64, pretrain_steps=8, pretrain_resolution=16,
                     pretrain_points=512, pretrain_gaussians=800, pretrain_voxels=24, convert_resolution=20,
                     skin_smooth_iters=5, bound_gaussians=60, prior_points=100, prior_pool=1, update_every=4),
                min_nerf_px=16),
}


# ----------------------------------------------------------------------------------------------
# held-out sets
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalView:
    camera: Camera
    background: torch.Tensor       # (3,)
    transforms: torch.Tensor
    rotations: torch.Tensor
    rgb: torch.Tensor              # (H, W, 3) the target
    alpha: torch.Tensor            # (H, W, 1)
    only: dict[str, torch.Tensor]  # part -> (H, W) bool: pixels only that part covers


@dataclasses.dataclass
class EvalSet:
    name: str
    views: list[EvalView]
    source: str


def recipe_config(recipe: str, size: Size, device: str, **extra: Any) -> TrainConfig:
    """Each recipe's own config at `size`: its schedule scaled by `size.fraction` (at least one
    iteration per stage), the NeRF stages at the paper's share of the final size."""
    base = TrainConfig(prompt="capacity benchmark", recipe=recipe)
    stage_steps = {s.name: max(1, int(round(s.steps * size.fraction))) for s in base.stages() if s.steps}
    kw: dict[str, Any] = dict(prompt="capacity benchmark", recipe=recipe, resolution=size.resolution,
                              stage_steps=stage_steps, device=device, checkpoint_every=0, preview_every=0,
                              log_every=0, workers=0 if device == "cpu" else -1)
    kw["num_gaussians"] = size.fast_gaussians   # dreamwaltz-g: only its unused template stage's
    if recipe == "fast":   # as many densification rounds as in the whole run
        kw["densify"] = {"every": max(1, int(round(base.densify.every * size.fraction))),
                         "max_free": int(base.densify.max_free * size.fast_gaussians / base.initial_gaussians)}
    else:
        kw["nerf"] = dict(size.nerf)
        kw["stage_resolutions"] = {s.name: max(size.min_nerf_px, s.resolution * size.resolution // 512)
                                   for s in base.stages() if s.kind == "nerf"}
    kw.update(extra)
    return TrainConfig(**kw)


def eval_poses(body: BodyModel, count: int, canonical: dict[str, np.ndarray],
               motion: Path = MOTION) -> tuple[list[dict[str, np.ndarray]], str]:
    """`count` frames of real motion, evenly spaced, without global rotation or translation
    (the body's pose only; hands as in the canonical pose)."""
    if motion.exists():
        from backend.motion import load_motion

        body_pose = np.asarray(load_motion(motion, body_model=body).body_pose, np.float64).reshape(-1, 63)
        source = f"{motion.name}: {count} of its {len(body_pose)} frames, evenly spaced"
    else:
        from backend.dance import dance

        body_pose = np.asarray(dance().body_pose, np.float64).reshape(-1, 63)
        source = (f"the built-in dance ({motion} is absent): {count} frames; NOT held out for the fast recipe, "
                  "whose pose library it is")
    frames = np.linspace(0, len(body_pose) - 1, count + 2)[1:-1].round().astype(int)
    out = []
    for f in frames:
        params = {k: v.copy() for k, v in canonical.items()}
        params["body_pose"] = body_pose[f].reshape(1, 63).astype(np.float32)
        out.append(params)
    return out, source


def build_eval_sets(body: BodyModel, target: ClothedTarget, size: Size, device: torch.device,
                    motion: Path = MOTION) -> list[EvalSet]:
    configs = [TrainConfig(prompt="x", recipe=r) for r in RECIPES]
    samplers = [CameraSampler(c.cameras, size.resolution, size.resolution) for c in configs]
    skeleton = SkeletonRenderer(body, configs[1].skeleton)
    canonical = PoseSampler(configs[1].poses).canonical()
    rng = np.random.default_rng(EVAL_SEED)
    without = {part: target.without(part) for part in ("skirt", "hair")}
    poses, source = eval_poses(body, size.poses, canonical, motion)
    sets = []
    for name, pose_list, what in (("views", [canonical] * size.views, "the canonical pose (apose-45), held-out "
                                   "cameras"), ("poses", poses, source)):
        views = []
        for i, params in enumerate(pose_list):
            posed = pose_body(body, target.avatar.betas, params)
            keypoints = skeleton.keypoints(posed["vertices"], posed["joints"])
            view = samplers[i % 2].sample(rng, posed["vertices"], posed["joints"], posed["transforms"], keypoints)
            bg = torch.as_tensor(background_color("random", rng), dtype=torch.float32, device=device)
            full = render_avatar(target.avatar, posed, view.camera, bg)
            only = {}
            for part, avatar in without.items():
                rest = render_avatar(avatar, posed, view.camera, bg)
                only[part] = ((full.alpha > ALPHA) & (rest.alpha <= ALPHA))[..., 0]
            views.append(EvalView(view.camera, bg, posed["transforms"], posed["rotations"], full.rgb, full.alpha, only))
        sets.append(EvalSet(name, views, what))
    return sets


@torch.no_grad()
def render_avatar(avatar, posed: dict[str, Any], camera: Camera, background: torch.Tensor):
    gs = pose_with_transforms(avatar, posed["transforms"], None, posed["rotations"])
    return rasterize(gs, camera, background=background)


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def psnr(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def score(renders: list[tuple[torch.Tensor, torch.Tensor]], views: list[EvalView]) -> dict[str, float]:
    """Metrics of (rgb (H, W, 3), alpha (H, W, 1)) renders against the held-out views."""
    per_view, masked_err, masked_n = [], 0.0, 0.0
    hit = {p: 0.0 for p in views[0].only}
    total = {p: 0.0 for p in views[0].only}
    spill, fit_px = 0.0, 0.0
    for (rgb, alpha), v in zip(renders, views):
        err = (rgb.float() - v.rgb.float()) ** 2
        per_view.append(psnr(float(err.mean())))
        mask = ((alpha > 0.02) | (v.alpha > 0.02)).float()
        masked_err += float((err * mask).sum())
        masked_n += 3 * float(mask.sum())
        fit = (alpha > ALPHA)[..., 0]
        for part, only in v.only.items():
            hit[part] += float((fit & only).sum())
            total[part] += float(only.sum())
        spill += float((fit & (v.alpha[..., 0] <= ALPHA)).sum())
        fit_px += float(fit.sum())
    out = {"psnr": float(np.mean(per_view)), "psnr_avatar": psnr(masked_err / max(masked_n, 1.0)),
           "spill": spill / max(fit_px, 1.0)}
    for part in hit:
        out[part] = hit[part] / total[part] if total[part] else float("nan")
    return out


@torch.no_grad()
def evaluate(trainer: Trainer, sets: list[EvalSet]) -> dict[str, dict[str, float]]:
    """The trainer's current representation on every held-out set (the NeRF: views only)."""
    out = {}
    for s in sets:
        renders = []
        if trainer.phase == "nerf":
            if s.name != "views":
                continue
            stage = trainer.nerf_stage().stage
            for v in s.views:
                r = stage.render([v.camera], backgrounds=v.background[None])
                renders.append((r.rgb[0], r.alpha[0]))
        else:
            avatar = trainer.avatar()
            dev = trainer.device
            for v in s.views:
                gs = pose_with_transforms(avatar, v.transforms.to(dev), None, v.rotations.to(dev))
                r = rasterize(gs, v.camera, backend=trainer.config.rasterizer, background=v.background.to(dev))
                renders.append((r.rgb, r.alpha))
        out[s.name] = score([(rgb.to(v.rgb.device), alpha.to(v.rgb.device)) for (rgb, alpha), v in
                             zip(renders, s.views)], s.views)
    return out


# ----------------------------------------------------------------------------------------------
# one recipe
# ----------------------------------------------------------------------------------------------


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def run_recipe(recipe: str, size: Size, target: ClothedTarget, sets: list[EvalSet], device: str, folder: Path,
               deadline: float | None, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Train `recipe` on the target photometrically, stage by stage, with metrics after each;
    in `folder` its results (and, when `deadline` passes first, a checkpoint: None is returned
    and the next call continues exactly where this one stopped)."""
    config = recipe_config(recipe, size, device)
    record = folder / "results.json"
    saved = json.loads(record.read_text()) if record.exists() else None
    if saved is not None and not _same(saved["config"], config.to_dict()):
        log(f"{recipe}: {folder} holds a run with other settings; starting again")
        saved = None
        checkpoint_path(folder).unlink(missing_ok=True)
    if saved is not None and saved.get("done"):
        log(f"{recipe}: done before ({record})")
        return saved
    trainer = Trainer(config, folder)
    dev = trainer.device
    PhotometricGuidance(target.avatar.to(dev), config.rasterizer).attach(trainer)
    result = {"recipe": recipe, "views_per_iteration": config.views, "rows": [], "partial": 0.0,
              "device": device_name(dev), "config": config.to_dict(), "done": False}

    def keep() -> None:
        write_text_atomic(record, json.dumps(result, indent=1, default=str))

    current = "start"
    try:
        if saved is not None and trainer.resume():
            result.update(rows=saved["rows"], partial=saved["partial"])
            log(f"{recipe}: continuing at iteration {trainer.step_index} of {trainer.schedule.planned_total}")
        else:
            t0 = time.perf_counter()
            if trainer.phase == "nerf":
                trainer.nerf_stage()   # the body-shaped pretrained field (fitted now unless cached)
            sync(dev)
            result["rows"] = [{"stage": "start", "iterations": 0, "seconds": time.perf_counter() - t0,
                               "gaussians": None if trainer.phase == "nerf" else trainer.num_gaussians,
                               "resolution": None, "metrics": evaluate(trainer, sets)}]
        schedule = trainer.schedule
        first = trainer.step_index   # every call makes progress, however short its time
        for i, name in enumerate(list(schedule.names)):
            end = schedule.ends[i]
            if schedule.lengths[i] == 0 or trainer.step_index >= end:
                continue
            spec = trainer.stages[name]
            current = name
            log(f"{recipe}: stage {name} ({spec.kind}, {schedule.lengths[i]} iterations at {spec.resolution} px)")
            sync(dev)
            t0 = time.perf_counter() - result["partial"]
            while trainer.step_index < end:
                if deadline is not None and time.perf_counter() > deadline and trainer.step_index > first:
                    sync(dev)
                    result["partial"] = time.perf_counter() - t0
                    trainer.save_checkpoint()
                    keep()
                    log(f"{recipe}: out of time at iteration {trainer.step_index}; checkpoint in {folder}")
                    return None
                trainer.train_step()
                trainer.step_index += 1
            sync(dev)
            seconds = time.perf_counter() - t0
            metrics = evaluate(trainer, sets)
            result["partial"] = 0.0
            result["rows"].append({"stage": name, "iterations": schedule.lengths[i], "seconds": seconds,
                                   "load": load_average(),
                                   "resolution": spec.resolution, "metrics": metrics,
                                   "gaussians": None if trainer.phase == "nerf" else trainer.num_gaussians})
            if deadline is not None:   # a call killed past its time loses one stage at most
                trainer.save_checkpoint()
            keep()
            log(f"  {seconds:.1f} s; " + "; ".join(f"{k}: psnr {m['psnr']:.2f}, skirt {m['skirt']:.2f}, "
                                                   f"hair {m['hair']:.2f}" for k, m in metrics.items()))
        if trainer.phase == "nerf":   # a plan of NeRF stages only still ends in Gaussians
            trainer.convert()
            result["rows"].append({"stage": "converted", "iterations": 0, "seconds": 0.0, "resolution": None,
                                   "gaussians": trainer.num_gaussians, "metrics": evaluate(trainer, sets)})
    except Exception as exc:  # noqa: BLE001 - a recipe that fails is a result: the table says where and why
        result["error"] = (f"in stage {current} at iteration {trainer.step_index}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
        log(f"{recipe} FAILED {result['error']}\n" + traceback.format_exc())
    finally:
        trainer.close()
    result["done"] = True
    keep()
    checkpoint_path(folder).unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------


def load_average() -> float | None:
    """The machine's 1-minute load (a shared CPU runs the benchmark several times slower)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"


def _db(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f} dB"


METRICS = (("psnr", "PSNR", _db), ("psnr_avatar", "PSNR on the avatar's pixels", _db),
           ("skirt", "skirt silhouette recovered", _pct), ("hair", "hair silhouette recovered", _pct),
           ("spill", "spill (fit outside the target)", _pct))


def table(results: dict[str, dict[str, Any]], target_info: dict[str, Any], size_name: str, size: Size) -> str:
    recipes = [r for r in RECIPES if r in results]
    devices = sorted({results[r]["device"] for r in recipes})
    loads = {r: [x["load"] for x in results[r]["rows"] if x.get("load") is not None] for r in recipes}
    shared = "; ".join(f"{r} {np.mean(v):.1f}" for r, v in loads.items() if v)
    lines = [f"# bench/capacity.py --size {size_name}: photometric fit of a clothed target by each recipe's own stages",
             f"# device: {', '.join(devices)}; torch {torch.__version__}"
             + (f"; load average at the stages' ends: {shared}" if shared else ""),
             f"# host: {cpu_name()}, {os.cpu_count()} cores (shared by other work: seconds are wall time)",
             f"# size: {size.resolution} px, {size.fraction:g} of each recipe's planned iterations; target "
             f"{target_info['gaussians']} Gaussians ({', '.join(f'{k} {v}' for k, v in target_info['parts'].items())})",
             f"# held-out views: {target_info['sets']['views']}; {size.views} images",
             f"# held-out poses: {target_info['sets']['poses']}; {size.poses} images",
             "# skirt / hair: share of the pixels only that part covers in the target (alpha > 0.5) covered by the fit",
             ""]
    head = ["metric"] + [f"{r} (what a user gets)" for r in recipes] + ["target alone"]
    body = []
    for set_name, label in (("views", "held-out views"), ("poses", "held-out poses")):
        for key, name, fmt in METRICS:
            row = [f"{label}: {name}"]
            for r in recipes:
                row.append("FAILED" if results[r].get("error") else
                           fmt(results[r]["rows"][-1]["metrics"].get(set_name, {}).get(key)))
            row.append(target_info["alone"][set_name].get(key, "-"))
            body.append(row)
    body.append(["Gaussians at the end"] + [str(results[r]["rows"][-1]["gaussians"]) if results[r]["rows"] else "-"
                                            for r in recipes]
                + [str(target_info["gaussians"])])
    body.append(["iterations x views"] + [f"{sum(x['iterations'] for x in results[r]['rows'])} x "
                                          f"{results[r]['views_per_iteration']}" for r in recipes] + ["-"])
    body.append(["training seconds (start: NeRF pretraining)"] + [
        f"{sum(x['seconds'] for x in results[r]['rows']):.0f}" for r in recipes] + ["-"])
    lines += _grid(head, body)
    lines += [f"{r} FAILED {results[r]['error']}" for r in recipes if results[r].get("error")]
    lines += ["", "## stage by stage (metrics at the end of each stage; NeRF stages: the field, views only)", ""]
    head = ["recipe", "stage", "px", "iters", "s", "Gaussians", "views PSNR", "views skirt", "views hair",
            "views spill", "poses PSNR", "poses skirt", "poses hair"]
    body = []
    for r in recipes:
        for x in results[r]["rows"]:
            v, p = x["metrics"].get("views", {}), x["metrics"].get("poses", {})
            body.append([r, x["stage"], str(x["resolution"] or "-"), str(x["iterations"]), f"{x['seconds']:.0f}",
                         str(x["gaussians"] or "-"), _db(v.get("psnr")), _pct(v.get("skirt")), _pct(v.get("hair")),
                         _pct(v.get("spill")), _db(p.get("psnr")), _pct(p.get("skirt")), _pct(p.get("hair"))])
    lines += _grid(head, body)
    return "\n".join(lines) + "\n"


def _grid(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"  # noqa: E731
    return [fmt(head), "|" + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"] \
        + [fmt(r) for r in body]


def target_summary(target: ClothedTarget, sets: list[EvalSet]) -> dict[str, Any]:
    alone: dict[str, dict[str, str]] = {}
    for s in sets:
        sil = sum(float((v.alpha > ALPHA).sum()) for v in s.views)
        alone[s.name] = {"psnr": "(reference)", "psnr_avatar": "(reference)", "spill": "0 %"}
        for part in ("skirt", "hair"):
            px = sum(float(v.only[part].sum()) for v in s.views)
            alone[s.name][part] = f"100 % = {px / max(sil, 1):.1%} of its silhouette"
    counts = target.counts()
    return {"gaussians": target.avatar.num_gaussians, "parts": counts,
            "sets": {s.name: s.source for s in sets}, "alone": alone}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=tuple(SIZES), default="small")
    ap.add_argument("--smoke", action="store_true",
                    help="--size toy in a fresh temporary folder (unless --work is given): checks the script")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated: fast, dreamwaltz-g")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default=None,
                    help="folder of each recipe's run and results, per size (default .cache/capacity)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop (with a checkpoint) after this long; the same command continues")
    ap.add_argument("--fraction", type=float, default=None,
                    help="of each recipe's planned iterations (default: the size's)")
    ap.add_argument("--out", default=None, help="write the table here too")
    ap.add_argument("--motion", default=str(MOTION),
                    help="the held-out poses' motion (default: DreamWaltz-G's AIST++ demo in ../shared/data)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared machine more threads spin-wait each other)")
    args = ap.parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        ap.error(f"--fraction must lie in (0, 1]; got {args.fraction}")
    if args.smoke:
        args.size = "toy"
        if args.work is None:
            with tempfile.TemporaryDirectory(prefix="capacity-smoke-") as tmp:
                args.work = tmp
                return run(args, recipes)
    return run(args, recipes)


def run(args: argparse.Namespace, recipes: list[str]) -> int:
    size = SIZES[args.size]
    if args.fraction is not None:
        size = dataclasses.replace(size, fraction=args.fraction)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    body = BodyModel.load(None, device)
    t0 = time.perf_counter()
    target = build_target(body, density=size.density)
    sets = build_eval_sets(body, target, size, torch.device(device), Path(args.motion))
    log(f"target of {target.avatar.num_gaussians} Gaussians and its held-out renders in {time.perf_counter() - t0:.1f} s")
    work = Path(args.work or ROOT / ".cache" / "capacity") / args.size
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
    results: dict[str, dict[str, Any]] = {}
    for r in RECIPES:
        record = work / r / "results.json"
        if r not in recipes and record.exists():
            saved = json.loads(record.read_text())
            if saved.get("done") and _same(saved["config"], recipe_config(r, size, device).to_dict()):
                results[r] = saved
    unfinished = []
    for r in recipes:
        got = run_recipe(r, size, target, sets, device, work / r, deadline, log)
        if got is None:
            unfinished.append(r)
            break
        results[r] = got
    if unfinished:
        log(f"stopped after {args.max_minutes} minutes: run the same command again to continue "
            f"({', '.join(unfinished)} from its checkpoint in {work})")
        return 3
    text = table(results, target_summary(target, sets), args.size, size)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
