"""One training configuration: recipe, stages, sampling, guidance, appearance, densification, job settings.

`recipe` picks the stage plan and the defaults of every setting the user leaves out
(recipes.py): "fast" (ours, the default) or "dreamwaltz-g" (the published recipe). The fast
recipe's stages (fractions of the run's iterations):

1. template   - Gaussians fitted to the body template: they are placed on the template's
                surface analytically, then (with the hash-grid appearance, whose field starts
                random) fitted photometrically to the template avatar under the training
                cameras and poses; no diffusion;
2. canonical  - SDS in the canonical (A-)pose and canonical-R spreads of it;
3. posed      - SDS in random plausible poses (joint-limit sampling + a motion library),
                so that the avatar holds up under animation; with expression control also
                random expressions and jaw poses.

A preset fixes the fast run's length and Gaussian count; any field can be overridden, and
`stage_steps` sets any stage's length by name. A config's fields are concrete once built (the
recipe's defaults filled in), so config.json says every number a run used.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from ..guidance.sds import SDSConfig
from ..guidance.speed import ATTENTION
from .appearance import HashGridConfig
from .cameras import CameraConfig
from .config_check import check_settings
from .hybrid import HybridConfig
from .nerf.config import NeRFConfig
from .poses import PoseConfig
from .recipes import Stage, check_recipe, recipe_defaults, stage_plan
from .skeleton import SkeletonConfig
from .strategy import DensifyConfig

PRESETS: dict[str, dict[str, Any]] = {
    "draft": {"steps": 1200, "num_gaussians": 60_000},
    "default": {"steps": 3000, "num_gaussians": 100_000},
    "high": {"steps": 6000, "num_gaussians": 150_000},
}

# settings that may change when a run is resumed (where and how it runs, not what it computes)
RUNTIME_FIELDS = ("sd_model", "controlnet", "tiny_encoder", "allow_download", "device", "dtype", "rasterizer", "compile",
                  "cuda_graphs", "channels_last", "attention", "workers", "checkpoint_every", "preview_every", "time_budget", "log_every", "progress_every")


@dataclasses.dataclass
class LearningRates:
    means: float = 2e-4            # free Gaussian centres (metres), decays to means * means_final
    means_final: float = 0.1
    decay: str = "run"             # the centres' exponential decay runs over the "run" or restarts each "stage"
    decay_length: float = 1.0      # ... and reaches means_final after this many times that length
    camera_scale: bool = False     # centres' and log-scales' rates x distance x tan(fov / 2) of the view
    offsets: float = 1e-4          # mesh-bound offsets
    quats: float = 1e-3
    log_scales: float = 5e-3
    opacity: float = 5e-2
    colors: float = 1e-2           # colour logits
    hashgrid: float = 1e-2
    mlp: float = 1e-3

    def __post_init__(self) -> None:
        if self.decay not in ("run", "stage"):
            raise ValueError(f"lr.decay must be run or stage; got {self.decay!r}")
        if self.decay_length <= 0:
            raise ValueError(f"lr.decay_length must be > 0; got {self.decay_length}")


@dataclasses.dataclass
class TrainConfig:
    prompt: str = ""
    seed: int = 0
    recipe: str = "fast"                  # fast | dreamwaltz-g (recipes.py): the stages and every default
    preset: str = "default"               # the fast recipe's length and Gaussian count
    steps: int | None = None              # iterations in all (each renders `views` images); None: preset / recipe
    stage_steps: dict[str, int] | None = None   # iterations of named stages (the others: from steps)
    stage_resolutions: dict[str, int] | None = None   # render size of named stages (the others: the recipe's)
    template_fraction: float | None = None   # fast: None: 0.03 with the hash grid, 0 with colours
    canonical_fraction: float = 0.5       # fast: of the SDS iterations; the rest use random poses
    views: int | None = None              # views per iteration; None: the recipe's (fast 4, dreamwaltz-g 1)
    resolution: int = 512                 # render size; SDS resizes to the model's size if needed
    num_gaussians: int | None = None      # at initialisation; None: preset
    bound_fraction: float = 0.25          # share of mesh-bound Gaussians (hands, and face with expression)
    expression: bool = False              # mesh-bound face + random expressions (+ face landmarks: fast)
    appearance: str = "colors"            # colors | hashgrid
    background: str | None = None         # random | white | black | grey; None: the recipe's
    init: str | None = None               # first Gaussians: "nerf" (after the NeRF stages) | "template"
                                          # (on the template's surface); None: the recipe's
    body_model: str | None = None
    betas: list[float] | None = None
    # nested settings: None or a dict of some of them: the recipe's defaults (updated by the dict)
    sds: SDSConfig | None = None
    cameras: CameraConfig | None = None
    poses: PoseConfig | None = None
    densify: DensifyConfig | None = None
    skeleton: SkeletonConfig | None = None   # fast: body + hands, face landmarks with expression
    hashgrid: HashGridConfig = dataclasses.field(default_factory=HashGridConfig)
    nerf: NeRFConfig = dataclasses.field(default_factory=NeRFConfig)
    lr: LearningRates | None = None
    hybrid: HybridConfig | None = None    # dreamwaltz-g with its NeRF stages: the hybrid avatar (train/hybrid.py)
    # runtime
    sd_model: str | None = None
    controlnet: str | None = None
    tiny_encoder: str | None = None       # AutoencoderTiny (TAESD) folder or id, for sds.encoder = "tiny"
    allow_download: bool = False
    device: str = "auto"
    dtype: str = "auto"                   # diffusion precision: auto (fp16 on CUDA) | fp16 | bf16 | fp32
    rasterizer: str = "auto"
    compile: bool = False                 # torch.compile the diffusion models (minutes of compiling first)
    cuda_graphs: bool = True              # replay ControlNet + UNet as CUDA graphs (CUDA only)
    channels_last: bool = False           # all SD models channels-last (CUDA; slower eager; compile puts
                                          # UNet + ControlNet channels-last anyway, see guidance.speed)
    attention: str = "auto"               # attention kernel put first: auto | cudnn | flash | efficient | math
    workers: int = -1                     # processes making batches ahead; -1: half the cores on CUDA, 0 on CPU
    checkpoint_every: int = 250
    preview_every: int = 100
    time_budget: float | None = None      # seconds of training, over all sessions of the run
    log_every: int = 50
    progress_every: float = 0.5           # seconds between progress reports

    def __post_init__(self) -> None:
        check_settings(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        self.recipe = check_recipe(self.recipe)
        defaults = recipe_defaults(self.recipe)
        for name in ("views", "background", "init"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        for name, cls in _NESTED.items():
            value = getattr(self, name)
            if name in defaults and (value is None or isinstance(value, dict)):
                base = dict(defaults[name])
                if name == "skeleton" and self.recipe == "fast":
                    base.setdefault("face", self.expression)
                if name == "sds" and (value or {}).get("encoder") == "tiny" and "latent" not in (value or {}):
                    base["latent"] = "mean"   # the tiny encoder has no posterior to sample (the recipe's default)
                setattr(self, name, _build(cls, dict(base, **(value or {}))))
            elif isinstance(value, dict):
                setattr(self, name, _build(cls, value))
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose {', '.join(PRESETS)}")
        if self.appearance not in ("colors", "hashgrid"):
            raise ValueError(f"appearance must be colors or hashgrid; got {self.appearance!r}")
        if self.init not in ("nerf", "template"):
            raise ValueError(f"init must be nerf or template; got {self.init!r}")
        if self.init == "nerf" and self.recipe == "fast":
            raise ValueError("init = nerf needs the NeRF stages of --recipe dreamwaltz-g")
        if self.background not in ("random", "white", "black", "grey"):
            raise ValueError(f"background must be random, white, black or grey; got {self.background!r}")
        if self.attention != "auto" and self.attention not in ATTENTION:
            raise ValueError(f"attention must be auto or one of {', '.join(ATTENTION)}; got {self.attention!r}")
        if self.views < 1:
            raise ValueError("views must be >= 1")
        if self.resolution < 16:
            raise ValueError("resolution must be >= 16")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.template_fraction is not None and not 0 <= self.template_fraction <= 1 \
                or not 0 <= self.canonical_fraction <= 1:
            raise ValueError("template_fraction and canonical_fraction must lie in [0, 1]")
        if self.stage_steps is not None:
            self.stage_steps = dict(self.stage_steps)
        if self.stage_resolutions is not None:
            self.stage_resolutions = dict(self.stage_resolutions)
        self.stages()  # checks stage_steps
        self._check_hybrid()

    def _check_hybrid(self) -> None:
        """The hybrid avatar: on by default after the NeRF stages, and only there."""
        h = self.hybrid
        if h.enabled is None:
            h.enabled = self.init == "nerf"
        if h.enabled:
            if self.init != "nerf":
                raise ValueError("hybrid.enabled needs the NeRF stages (init = nerf with --recipe dreamwaltz-g): "
                                 "the free Gaussians' colour and opacity come from the NeRF's field")
            if self.densify.enabled:
                raise ValueError("hybrid.enabled keeps the Gaussian count fixed, as the original: set densify.enabled "
                                 "= false (the free Gaussians have no opacity of their own to prune by)")
            if self.appearance != "colors":
                raise ValueError("hybrid.enabled takes colour from the NeRF's field; appearance must stay colors")

    @property
    def base_steps(self) -> int:
        """The fast recipe's length before stage_steps: --steps or the preset's."""
        return int(self.steps if self.steps is not None else PRESETS[self.preset]["steps"])

    def stages(self) -> list[Stage]:
        """The recipe's stages with their planned lengths."""
        return stage_plan(self)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages())

    @property
    def diffusion_dtype(self) -> str:
        """`dtype`, with "auto" resolved by recipe: the paper's 3DGS stages run the diffusion
        models in fp32; ours in fp16 on CUDA ("auto" left for models.parse_dtype)."""
        if self.dtype == "auto" and self.recipe == "dreamwaltz-g":
            return "fp32"
        return self.dtype

    @property
    def template_share(self) -> float:
        """The template stage fits what the analytic initialisation cannot set: the hash-grid
        field starts random and learns the template's colours there. Per-Gaussian colours start
        equal to the template, so the stage has nothing to do and is skipped unless asked for."""
        if self.template_fraction is not None:
            return float(self.template_fraction)
        return 0.03 if self.appearance == "hashgrid" else 0.0

    @property
    def initial_gaussians(self) -> int:
        return int(self.num_gaussians if self.num_gaussians is not None else PRESETS[self.preset]["num_gaussians"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _build(cls, data)

    def same_run_as(self, other: "TrainConfig") -> list[str]:
        """Names of the settings (not runtime ones) in which two configs differ (the recipe
        alone when that differs: every default follows from it)."""
        if self.recipe != other.recipe:
            return ["recipe"]
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in RUNTIME_FIELDS and json.dumps(a[k], sort_keys=True)
                      != json.dumps(b.get(k), sort_keys=True))


def _build(cls: type, data: dict[str, Any]) -> Any:
    check_settings(cls, data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    return cls(**data)  # TrainConfig builds its nested dicts itself, over the recipe's defaults


_NESTED = {"sds": SDSConfig, "cameras": CameraConfig, "poses": PoseConfig, "densify": DensifyConfig,
           "skeleton": SkeletonConfig, "hashgrid": HashGridConfig, "nerf": NeRFConfig, "lr": LearningRates,
           "hybrid": HybridConfig}


def parse_duration(text: str | float | int | None) -> float | None:
    """'90', '90s', '10m', '1.5h', '1h30m' -> seconds; None/'' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", s):
            value = float(s)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
            if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", s):
                raise ValueError(f"cannot read the duration {text!r}; write e.g. 600, 90s, 10m, 1.5h or 1h30m")
            value = sum(float(n) * {"h": 3600.0, "m": 60.0, "s": 1.0}[u] for n, u in parts)
    if value <= 0:
        raise ValueError(f"a duration must be positive; got {text!r}")
    return value
