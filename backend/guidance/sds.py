"""Score distillation sampling with Stable Diffusion 1.5 + an OpenPose ControlNet.

For rendered images x (B views) and their skeleton images c: encode z = E(x) with the VAE
encoder (with gradients), draw t in the scheduled range and noise eps, and ask the frozen UNet +
ControlNet for the noise in z_t = sqrt(a_t) z + sqrt(1 - a_t) eps under classifier-free guidance:

    eps_hat = eps_uncond + s (eps_cond - eps_uncond),   grad = w(t) (eps_hat - eps)

The gradient is injected with the usual trick, loss = 0.5 ||z - sg(z - grad)||^2 / B, whose
derivative with respect to z is exactly `grad` / B (`reduction="mean"`, ours) or `grad` itself
(`reduction="sum"`, DreamWaltz-G's direct injection); it flows back through the encoder to the
pixels and on to the Gaussians (or the NeRF). The "unconditional" branch uses the negative
prompt's embedding. z is the VAE posterior's mean (`latent="mean"`, ours) or a sample of it
(`latent="sample"`, DreamWaltz-G), the sample's noise drawn with the step's generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .models import GuidanceModels
from .speed import VAE_ATTENTION, NoisePredictor, attention_kernels, tf32_matmuls

VIEWS = ("front", "side", "back", "overhead")
DWG_VIEWS = ("front", "left side", "back", "right side")
KINDS = ("body", "face", "hands")
LABEL_SCHEMES = ("ours", "dreamwaltz-g")

DEFAULT_NEGATIVE = ("blurry, low quality, low resolution, deformed, bad anatomy, extra limbs, "
                    "missing limbs, cropped, shadow, watermark, text")

# DreamWaltz-G's GuideConfig.negative_text, word for word (repetitions included)
DWG_NEGATIVE = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry, "
    "bad hands, missing fingers, error, cropped, normal quality, fewer digit, owres, extra digit, worst quality, "
    "jpeg artifacts, lowres, bad feet, disfigured, missing arms, long neck, ugly, bad proportions, multiple "
    "breasts, fused fingers, extra legs, poorly drawn hands, cloned face, malformed hands, mutated hands and "
    "fingers, missing limb, malformed mutated, unclear eyes, fused hand, disappearing thigh, disappearing calf, "
    "bad body, on hand with less than 5 fingers, crown, stacked torses, stacked hands, totem pole")

DEFAULT_TEMPLATES = {
    "body": "{prompt}, full body, {view} view",
    "face": "a close-up of the face of {prompt}, {view} view",
    "hands": "a close-up of the hands of {prompt}",
}
# DreamWaltz-G's view-augmented text ("dreamwaltz-g" mode); its body-part prompts are unused
DWG_TEMPLATES = {"body": "{view} view of {prompt}", "face": "{view} view of {prompt}",
                 "hands": "{view} view of {prompt}"}


@dataclasses.dataclass
class SDSConfig:
    guidance_scale: float = 50.0
    controlnet_scale: float = 1.0
    negative_prompt: str = DEFAULT_NEGATIVE
    view_prompts: bool = True                      # append front/side/back/overhead
    t_range_start: tuple[float, float] = (0.02, 0.98)   # fractions of the training timesteps
    t_range_end: tuple[float, float] = (0.02, 0.50)     # annealed towards this by the end
    t_schedule: str = "linear"                     # "constant" | "linear" | "sqrt"
    weighting: str = "sds"                         # "sds" (1 - a_t) | "uniform" | "alpha_sigma" (sqrt(a_t) (1 - a_t))
    grad_clip: float | None = None                 # clip |grad| elementwise (latent space)
    reduction: str = "mean"                        # "mean": loss / B (ours) | "sum": grad injected as is
    latent: str = "mean"                           # "mean" | "sample" of the VAE posterior
    encoder: str = "vae"                           # "vae" | "tiny" (TAESD-style encoder, if loaded)
    templates: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TEMPLATES))

    def __post_init__(self) -> None:
        self.t_range_start = tuple(float(v) for v in self.t_range_start)
        self.t_range_end = tuple(float(v) for v in self.t_range_end)
        for name, (lo, hi) in (("t_range_start", self.t_range_start), ("t_range_end", self.t_range_end)):
            if not (0.0 <= lo <= hi <= 1.0):
                raise ValueError(f"{name} must satisfy 0 <= lo <= hi <= 1; got {(lo, hi)}")
        if self.t_schedule not in ("constant", "linear", "sqrt"):
            raise ValueError(f"t_schedule must be constant, linear or sqrt; got {self.t_schedule!r}")
        if self.weighting not in ("sds", "uniform", "alpha_sigma"):
            raise ValueError(f"weighting must be sds, uniform or alpha_sigma; got {self.weighting!r}")
        if self.guidance_scale < 0:
            raise ValueError("guidance_scale must be >= 0")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"sds.reduction must be mean or sum; got {self.reduction!r}")
        if self.latent not in ("mean", "sample"):
            raise ValueError(f"sds.latent must be mean or sample; got {self.latent!r}")
        if self.latent == "sample" and self.encoder == "tiny":
            raise ValueError('sds.latent = "sample" needs the SD VAE (sds.encoder = "vae"): the tiny encoder '
                             "has no posterior to sample")


def view_label(azimuth_deg: float, elevation_deg: float, scheme: str = "ours") -> str:
    """The view word of a camera from its azimuth (0 = in front of the body, the direction it
    faces; +90 = on the body's left) and elevation (positive = above).

    "ours": front / side / back (90-degree sectors around front and back) / overhead (above 60
    degrees). "dreamwaltz-g": front / left side / back / right side in 90-degree sectors
    centred on 0, 90, 180, 270 (the original's angle_front = 90) and overhead above 60 degrees
    of elevation (its angle_overhead; its cameras never go that high)."""
    if scheme == "dreamwaltz-g":
        if elevation_deg > 60.0:
            return "overhead"
        a = azimuth_deg % 360.0
        return DWG_VIEWS[int(((a + 45.0) % 360.0) // 90.0)]
    if scheme != "ours":
        raise ValueError(f"view label scheme must be one of {', '.join(LABEL_SCHEMES)}; got {scheme!r}")
    if elevation_deg > 60.0:
        return "overhead"
    a = abs((azimuth_deg + 180.0) % 360.0 - 180.0)
    if a <= 45.0:
        return "front"
    if a >= 135.0:
        return "back"
    return "side"


def _null_timer(name: str):
    return contextlib.nullcontext()


class SDSGuidance:
    """SDS loss for a batch of rendered views (see the module docstring)."""

    def __init__(self, models: GuidanceModels, prompt: str, config: SDSConfig | None = None,
                 tiny_encoder: Any = None, cuda_graphs: bool = True, attention: str = "auto") -> None:
        self.models = models
        self.config = config or SDSConfig()
        self.predictor = NoisePredictor(models, self.config.controlnet_scale, graphs=cuda_graphs, attention=attention)
        self.prompt = prompt
        self.tiny_encoder = tiny_encoder
        if self.config.encoder == "tiny" and tiny_encoder is None:
            raise ValueError("encoder='tiny' needs a tiny encoder model (AutoencoderTiny)")
        self._embeddings: dict[str, torch.Tensor] = {}
        self.uncond = self._encode_text(self.config.negative_prompt)

    # ---- prompts ---------------------------------------------------------------------------
    def prompt_text(self, kind: str, view: str) -> str:
        template = self.config.templates.get(kind, "{prompt}")
        if not self.config.view_prompts:
            for words in ("{view} view of ", ", {view} view", "{view} view"):
                template = template.replace(words, "")
        return template.format(prompt=self.prompt, view=view)

    @torch.no_grad()
    def _encode_text(self, text: str) -> torch.Tensor:
        tok = self.models.tokenizer
        ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.models.device)
        return self.models.text_encoder(ids)[0][0].to(self.models.dtype)

    def embedding(self, kind: str, view: str) -> torch.Tensor:
        text = self.prompt_text(kind, view)
        if text not in self._embeddings:
            self._embeddings[text] = self._encode_text(text)
        return self._embeddings[text]

    # ---- schedule ----------------------------------------------------------------------------
    def t_range(self, progress: float) -> tuple[int, int]:
        """Integer timestep range [lo, hi] at training progress in [0, 1]."""
        c = self.config
        p = min(max(float(progress), 0.0), 1.0)
        if c.t_schedule == "constant":
            f = 0.0
        elif c.t_schedule == "linear":
            f = p
        else:
            f = math.sqrt(p)
        lo = c.t_range_start[0] + f * (c.t_range_end[0] - c.t_range_start[0])
        hi = c.t_range_start[1] + f * (c.t_range_end[1] - c.t_range_start[1])
        T = self.models.num_train_timesteps
        lo_i = int(round(lo * (T - 1)))
        hi_i = max(lo_i, int(round(hi * (T - 1))))
        return lo_i, hi_i

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        a = self.models.alphas_cumprod[t]
        if self.config.weighting == "sds":
            return 1.0 - a
        if self.config.weighting == "alpha_sigma":
            return torch.sqrt(a) * (1.0 - a)  # less weight at the noisiest t
        return torch.ones_like(a)

    # ---- encoding ------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, posterior_noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> scaled latents (B,4,h,w), differentiable: the posterior's mean,
        or with `posterior_noise` (standard normal, the latents' shape) a sample of it."""
        m = self.models
        size = m.image_size
        x = images
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x * 2.0 - 1.0).to(m.dtype)
        if self.config.encoder == "tiny":
            enc = self.tiny_encoder
            if getattr(enc, "channels_last", False):
                x = x.contiguous(memory_format=torch.channels_last)
            return enc.encode(x).latents * float(enc.config.scaling_factor)
        if m.vae_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        vae = m.vae
        with attention_kernels(VAE_ATTENTION):
            h = vae.encoder(x)
        if getattr(vae, "quant_conv", None) is not None:
            h = vae.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        if posterior_noise is not None:  # diffusers' DiagonalGaussianDistribution.sample, noise given
            std = torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0))
            return (mean.float() + std * posterior_noise) * float(vae.config.scaling_factor)
        return mean * float(vae.config.scaling_factor)

    @torch.no_grad()
    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                      control: torch.Tensor) -> torch.Tensor:
        """CFG noise prediction with the ControlNet residuals."""
        s = self.config.guidance_scale
        b = noisy.shape[0]
        if s == 1.0:
            latent_in, t_in, emb, ctrl = noisy, t, cond, control
        else:
            latent_in = torch.cat([noisy, noisy])
            t_in = torch.cat([t, t])
            emb = torch.cat([cond, self.uncond[None].expand(b, -1, -1)])
            ctrl = torch.cat([control, control])
        eps = self.predictor(latent_in, t_in, emb, ctrl)
        if s == 1.0:
            return eps.float()
        eps_c, eps_u = eps.float().chunk(2)
        return eps_u + s * (eps_c - eps_u)

    # ---- the loss ------------------------------------------------------------------------------
    def prepare(self, control: torch.Tensor, prompts: list[tuple[str, str]], progress: float,
                generator: torch.Generator) -> "SDSInputs":
        """Everything of a step that does not depend on the rendered images: timesteps, noise,
        text embeddings, control images. Queued before the render, it costs no time after it
        (the rasterizer's host sync leaves the GPU waiting for whatever the CPU launches next)."""
        m = self.models
        b = control.shape[0]
        lo, hi = self.t_range(progress)
        size = m.image_size
        shape = (b, int(m.unet.config.in_channels), size // m.vae_scale, size // m.vae_scale)
        t = torch.randint(lo, hi + 1, (b,), generator=generator, device=generator.device).to(m.device)
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(m.device)
        posterior = None
        if self.config.latent == "sample":
            posterior = torch.randn(shape, generator=generator, device=generator.device,
                                    dtype=torch.float32).to(m.device)
        with torch.no_grad():
            cond = torch.stack([self.embedding(k, v) for k, v in prompts])
            ctrl = control
            if ctrl.shape[-2:] != (size, size):
                ctrl = F.interpolate(ctrl, size=(size, size), mode="nearest")
            a = m.alphas_cumprod[t].view(b, 1, 1, 1)
        return SDSInputs(t=t, noise=noise, cond=cond, control=ctrl.to(m.dtype), t_range=(lo, hi),
                         signal=a.sqrt(), sigma=(1 - a).sqrt(), weight=self.weight(t).view(b, 1, 1, 1),
                         posterior_noise=posterior, batch=b)

    def loss(self, images: torch.Tensor, inputs: "SDSInputs",
             timer: Callable[[str], Any] = _null_timer) -> tuple[torch.Tensor, dict[str, Any]]:
        """The SDS loss of rendered images (B,3,H,W) in [0,1] (requiring grad) for prepared inputs
        (or for a share of their views, `SDSInputs.views`: the share's part of the batch's loss)."""
        m = self.models
        with timer("encode"), tf32_matmuls(m.tf32):
            latents = self.encode(images, inputs.posterior_noise)
        with timer("unet"), tf32_matmuls(m.tf32):
            with torch.no_grad():
                noisy = (inputs.signal * latents.detach().float() + inputs.sigma * inputs.noise).to(m.dtype)
                eps_hat = self.predict_noise(noisy, inputs.t, inputs.cond, inputs.control)
                grad = inputs.weight * (eps_hat - inputs.noise)
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                if self.config.grad_clip:
                    grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
        target = (latents.float() - grad).detach()
        loss = 0.5 * F.mse_loss(latents.float(), target, reduction="sum")
        if self.config.reduction == "mean":
            loss = loss / (inputs.batch or images.shape[0])
        return loss, {"t": inputs.t, "t_range": inputs.t_range, "grad": grad}

    def __call__(self, images: torch.Tensor, control: torch.Tensor, prompts: list[tuple[str, str]],
                 progress: float, generator: torch.Generator,
                 timer: Callable[[str], Any] = _null_timer) -> tuple[torch.Tensor, dict[str, Any]]:
        """images (B,3,H,W) in [0,1] (requires grad); control (B,3,H,W) skeleton images in [0,1];
        prompts: (kind, view) per image. Returns (loss, info)."""
        return self.loss(images, self.prepare(control, prompts, progress, generator), timer)


@dataclasses.dataclass
class SDSInputs:
    """A step's image-independent SDS inputs (`SDSGuidance.prepare`)."""

    t: torch.Tensor
    noise: torch.Tensor
    cond: torch.Tensor
    control: torch.Tensor
    t_range: tuple[int, int]
    signal: torch.Tensor   # sqrt(alpha_bar_t), (B,1,1,1)
    sigma: torch.Tensor    # sqrt(1 - alpha_bar_t)
    weight: torch.Tensor   # w(t)
    posterior_noise: torch.Tensor | None = None   # latent = "sample": the posterior sample's noise
    batch: int = 0         # the views of the whole batch (the mean's divisor, also for a share of them)

    def views(self, share: slice) -> "SDSInputs":
        """These inputs for the views `share` of the batch (view-parallel training: each rank
        draws the whole batch's noise, as one process would, and scores its share)."""
        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[share]
        return dataclasses.replace(self, t=cut(self.t), noise=cut(self.noise), cond=cut(self.cond),
                                   control=cut(self.control), signal=cut(self.signal), sigma=cut(self.sigma),
                                   weight=cut(self.weight), posterior_noise=cut(self.posterior_noise))
