"""The two training recipes: their stage plans and the defaults they give every setting.

* `fast` (the default): ours. A template stage (only with the hash-grid colour field), then
  SDS with 4 views per iteration, half in canonical poses and half in random poses, on Gaussians
  placed on the template's surface and densified, 3000 iterations (the preset's).
* `dreamwaltz-g`: the published recipe (Yukun-Huang/DreamWaltz-G's training scripts and
  configs; ../shared/METHOD.md), one view per iteration: NeRF 10k iterations at 64 -> 128 ->
  256 px (a third each) and 5k at 512 px in the canonical pose, conversion of the field to
  Gaussians, then 3DGS 5k canonical, 5k canonical-R and 5k random-pose iterations with a fixed
  Gaussian count, uniform SDS weighting, timesteps U[0.02, 0.98], a VAE posterior sample, the
  original's negative and view prompts, 1-2 m cameras and a gray background.

A recipe is one name in `TrainConfig.recipe`; the settings a user does not give take the
recipe's defaults (`recipe_defaults`), and the stage plan (`stage_plan`) follows from the
config. Stage lengths can be set by name (`TrainConfig.stage_steps`), e.g. a few iterations
each for tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..guidance.sds import DWG_NEGATIVE, DWG_TEMPLATES
from ..protocol import TRAIN_RECIPES

STAGE_KINDS = ("template", "nerf", "gaussians")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a recipe: its name (shown in progress), what it trains (`kind`: the
    template fit of the Gaussians, SDS into the NeRF, SDS into the Gaussians), its planned
    iterations, the pose mode of its batches (poses.PoseSampler) and its render size."""

    name: str
    kind: str
    steps: int
    poses: str
    resolution: int


# DreamWaltz-G's schedule (scripts/train_wo_expr.sh): "nerf,64>256,10k" splits its 10,000
# iterations into thirds at 64, 128 and 256 px (iterations 1-3333, 3334-6666, 6667-10000 of
# its DataLoaderManager), then "nerf,512,5k", "3dgs,cnl,5k", "3dgs,rcnl,5k", "3dgs,rand,5k".
DWG_STAGES: tuple[tuple[str, str, int, str, int | None], ...] = (
    ("nerf-64", "nerf", 3333, "apose", 64),
    ("nerf-128", "nerf", 3333, "apose", 128),
    ("nerf-256", "nerf", 3334, "apose", 256),
    ("nerf-512", "nerf", 5000, "apose", 512),
    ("canonical", "gaussians", 5000, "apose", None),
    ("canonical-r", "gaussians", 5000, "canonical-r", None),
    ("random-pose", "gaussians", 5000, "prior", None),
)
FAST_STAGES = ("template", "canonical", "posed")


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The settings a recipe gives, as TrainConfig keys (nested ones as dicts)."""
    check_recipe(recipe)
    if recipe == "fast":
        return {"views": 4, "background": "random", "init": "template", "sds": {"negative_prompt": DWG_NEGATIVE}, "cameras": {},
                "poses": {"hand_pca": 12}, "densify": {}, "lr": {}, "skeleton": {}}
    return {
        "views": 1,
        "background": "grey",
        "init": "nerf",
        "sds": {"guidance_scale": 50.0, "controlnet_scale": 1.0, "weighting": "uniform", "t_schedule": "constant",
                "t_range_start": (0.02, 0.98), "t_range_end": (0.02, 0.98), "latent": "sample",
                "reduction": "sum", "grad_clip": None, "negative_prompt": DWG_NEGATIVE,
                "templates": dict(DWG_TEMPLATES), "view_prompts": True},
        "cameras": {"mode": "orbit", "labels": "dreamwaltz-g", "p_face": 0.2, "p_hands": 0.0,
                    "fov_deg": (40.0, 70.0), "elevation_deg": (-30.0, 30.0), "radius_m": (1.0, 2.0),
                    "face_azimuth_deg": 90.0, "face_elevation_deg": (-15.0, 15.0), "face_radius_m": (0.5, 1.0),
                    "target_jitter": 0.0},
        "poses": {"canonical": "apose-45", "hands": "flat", "hand_pca": 12, "hand_pca_sigma": 1.0,
                  "expression_sigma": 1.0, "expression_clip": None, "jaw_open": (0.0, 0.0),
                  "canonical_r_shoulder_deg": (-45.0, 45.0), "canonical_r_hip_deg": (6.0, 45.0),
                  "canonical_r_prob": 0.5, "library": None},
        "skeleton": {"occlusion_rule": "gap", "face_gap": 0.02, "hand_gap": 0.2},
        "densify": {"enabled": False},
        "lr": {"means": 1.6e-4, "means_final": 1e-2, "decay": "stage", "decay_length": 2.0, "camera_scale": True,
               "log_scales": 2.5e-3, "quats": 1e-3, "opacity": 1e-2, "colors": 1.25e-2, "offsets": 1.6e-4,
               "hashgrid": 1e-2, "mlp": 1e-3},
    }


def check_recipe(recipe: Any) -> str:
    if recipe not in TRAIN_RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: the setting recipe must be one of {', '.join(TRAIN_RECIPES)}")
    return str(recipe)


def default_stage_steps(recipe: str) -> dict[str, int]:
    return {name: steps for name, _, steps, _, _ in DWG_STAGES} if recipe == "dreamwaltz-g" else {}


def stage_names(recipe: str, init: str = "nerf") -> tuple[str, ...]:
    if recipe != "dreamwaltz-g":
        return FAST_STAGES
    return tuple(s[0] for s in DWG_STAGES if init == "nerf" or s[1] != "nerf")


def _fast_lengths(total: int, template_share: float, canonical_fraction: float) -> dict[str, int]:
    template = int(round(total * template_share))
    if template_share > 0:
        template = max(1, template)
    template = min(template, total)
    canonical = int(round((total - template) * canonical_fraction))
    return {"template": template, "canonical": canonical, "posed": total - template - canonical}


def _scaled(lengths: dict[str, int], total: int) -> dict[str, int]:
    """`lengths` scaled to add up to `total` (largest remainders)."""
    whole = sum(lengths.values())
    exact = {k: v * total / whole for k, v in lengths.items()}
    out = {k: int(math.floor(v)) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: out[k] - exact[k])[:total - sum(out.values())]:
        out[k] += 1
    return out


def _by_stage(values: dict[str, int] | None, setting: str, names: tuple[str, ...], recipe: str,
              minimum: int) -> dict[str, int]:
    """A setting given per stage name, checked: known stages, whole numbers >= `minimum`."""
    given = dict(values or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"{setting} names {', '.join(unknown)}: the stages of --recipe {recipe} are "
                         f"{', '.join(names)}")
    bad = sorted(k for k, v in given.items() if not isinstance(v, int) or isinstance(v, bool) or v < minimum)
    if bad:
        raise ValueError(f"{setting} must be whole numbers >= {minimum}; got "
                         f"{', '.join(f'{k}={given[k]!r}' for k in bad)}")
    return given


def stage_plan(config: Any) -> list[Stage]:
    """The stages of a config's recipe with their planned lengths (before any time budget)."""
    recipe = check_recipe(config.recipe)
    names = stage_names(recipe, config.init)
    given = _by_stage(config.stage_steps, "stage_steps", names, recipe, 0)
    sizes = _by_stage(config.stage_resolutions, "stage_resolutions", names, recipe, 16)
    if recipe == "fast":
        lengths = _fast_lengths(config.base_steps, config.template_share, config.canonical_fraction)
        lengths.update(given)
        return [Stage("template", "template", lengths["template"], "canonical", sizes.get("template", config.resolution)),
                Stage("canonical", "gaussians", lengths["canonical"], "canonical", sizes.get("canonical", config.resolution)),
                Stage("posed", "gaussians", lengths["posed"], "random", sizes.get("posed", config.resolution))]
    lengths = {k: v for k, v in default_stage_steps(recipe).items() if k in names}
    if config.steps is not None:
        lengths = _scaled(lengths, int(config.steps))
    lengths.update(given)
    return [Stage(name, kind, lengths[name], poses, sizes.get(name, resolution or config.resolution))
            for name, kind, _, poses, resolution in DWG_STAGES if name in names]
