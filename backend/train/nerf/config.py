"""Stage I settings: the field, its occupancy grid and ray marching, the body pretraining, the
sigma-prior and the conversion to Gaussians. One flat dataclass, so that it nests in
`TrainConfig` (and its JSON) like the other sections. Defaults are the paper's numbers
(../shared/METHOD.md; DreamWaltz-G's torch-ngp based NeRF) where it has one."""

from __future__ import annotations

import dataclasses
import math

BACKENDS = ("auto", "torch", "tcnn", "fused")


@dataclasses.dataclass
class NeRFConfig:
    # field: hash grid + one MLP whose outputs are raw density and colour (the original's
    # "shared MLP": 3 layers of 64, 4 outputs)
    levels: int = 16
    features: int = 2
    log2_table: int = 19
    base_resolution: int = 16
    finest_per_bound: float = 2048.0      # finest resolution = this x bound (half the cube's side, m)
    interpolation: str = "smoothstep"     # the original's grid encoder interpolates with smoothstep
    hidden: int = 64
    layers: int = 3
    backend: str = "auto"                 # auto: tiny-cuda-nn's encoding on CUDA when importable, else the
                                          # fused kernel (fields/fused_hashgrid.py) | torch | tcnn | fused
    padding: float = 0.25                 # metres of room around the canonical body (hair, skirts, hats)
    # occupancy grid and ray marching (torch-ngp's numbers)
    grid_size: int = 128
    density_thresh: float = 10.0
    update_every: int = 16
    decay: float = 0.95
    max_steps: int = 1024                 # step = 2 sqrt(3) bound / max_steps along the ray
    t_thresh: float = 1e-4                # rays stop when their transmittance falls below this
    background: float = 0.5               # grey
    chunk: int = 1 << 22                  # ray samples looked up per chunk (memory bound)
    # sigma-prior on the hand (and, with expression control, face) surfaces
    prior_points: int = 5000
    prior_peak: float = 15.0
    prior_noise: float = 0.05             # metres: points jittered along the normal by U(-1/2, 1/2) x this
    prior_thickness: float = 0.005        # jittered points farther than this from the surface are empty
    prior_weight: float = 1.0
    prior_pool: int = 10                  # candidate sets drawn once (the canonical body does not move)
    # body pretraining (no diffusion)
    pretrain_steps: int = 1500
    pretrain_views: int = 2
    pretrain_resolution: int = 128
    pretrain_points: int = 1 << 15        # 3D occupancy and colour samples per step
    pretrain_gaussians: int = 60_000      # template avatar rendered for the photometric targets
    pretrain_photometric_from: float = 1 / 3  # share of the steps fitting occupancy and colour only, first
    pretrain_voxels: int = 256            # occupancy targets: the body voxelised on this grid (longest axis)
    pretrain_lr: float = 1e-2             # MLP while pretraining (ours: a direct fit converges faster)
    lr: float = 1e-3                      # MLP in the SDS stages; the grid gets grid_lr_scale x either
    grid_lr_scale: float = 10.0
    # conversion to Gaussians
    convert_resolution: int = 400         # grid points along the longest side of the occupied box
    convert_threshold: float | None = None  # None: min(mean occupancy density, density_thresh)
    convert_scale: float = 0.4            # Gaussian std / grid spacing (1/sqrt(2 pi): layers sum to one slab)
    prune_face: float = 0.01              # free points this close to face mesh-bound parts go (m)
    prune_hands: float = 0.10
    skin_smooth_k: int = 30
    skin_smooth_iters: int = 5000
    skin_offset: float = 0.01             # points farther than this off the surface get smoothed weights
    bound_gaussians: int = 20_000         # mesh-bound Gaussians (hands, face with expression control)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"nerf backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.interpolation not in ("linear", "smoothstep"):
            raise ValueError(f"nerf interpolation must be linear or smoothstep; got {self.interpolation!r}")
        for name in ("levels", "features", "hidden", "layers", "grid_size", "max_steps", "pretrain_views",
                     "pretrain_resolution", "convert_resolution", "update_every", "skin_smooth_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"nerf.{name} must be >= 1; got {getattr(self, name)!r}")
        if self.layers < 2:
            raise ValueError("nerf.layers must be >= 2 (input and output layers)")

    def step_size(self, bound: float) -> float:
        """Metres between samples along a ray."""
        return 2.0 * math.sqrt(3.0) * bound / self.max_steps
