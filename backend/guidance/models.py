"""Loading Stable Diffusion 1.5 and the OpenPose ControlNet v1.1 with diffusers.

A model is named by a local folder (the diffusers layout: `model_index.json`, `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`; a ControlNet folder holds `config.json` and its
weights) or by a Hugging Face id, which is looked up in the local Hugging Face cache only
(`local_files_only=True`) unless downloads are allowed. Nothing is fetched behind the user's
back; when weights are missing the error says what to download and where to put it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SD_ENV, CONTROLNET_ENV = "DREAMWALTZ_SD_MODEL", "DREAMWALTZ_CONTROLNET"
# runwayml/stable-diffusion-v1-5 was taken down; these hold the same weights.
SD_HUB_IDS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5",
              "benjamin-paine/stable-diffusion-v1-5")
CONTROLNET_HUB_IDS = ("lllyasviel/control_v11p_sd15_openpose",)
SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class GuidanceModelError(RuntimeError):
    """Diffusion weights that are missing or unusable; the message says what to do."""


def download_help(which: str) -> str:
    if which == "sd":
        return ("Stable Diffusion 1.5 (about 2.7 GB in fp16) is needed. Download it once, e.g.\n"
                "  huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 model_index.json "
                "'unet/*' 'vae/*' 'text_encoder/*' 'tokenizer/*' 'scheduler/*' --exclude '*.bin' '*.ckpt' "
                "'*non_ema*' --local-dir ~/models/stable-diffusion-v1-5\n"
                "(the same weights as runwayml/stable-diffusion-v1-5, which was taken down; any mirror "
                "in the diffusers layout works), then pass --sd-model ~/models/stable-diffusion-v1-5 "
                f"or set {SD_ENV}. A hub id is looked up in the local Hugging Face cache only, unless "
                "downloads are allowed (--allow-download).")
    return ("The OpenPose ControlNet v1.1 (about 1.4 GB, 0.7 GB in fp16) is needed. Download it once, e.g.\n"
            "  huggingface-cli download lllyasviel/control_v11p_sd15_openpose config.json "
            "diffusion_pytorch_model.fp16.safetensors --local-dir ~/models/control_v11p_sd15_openpose\n"
            "then pass --controlnet ~/models/control_v11p_sd15_openpose "
            f"or set {CONTROLNET_ENV}. A hub id is looked up in the local Hugging Face cache only, unless "
            "downloads are allowed (--allow-download).")


@dataclasses.dataclass
class GuidanceModels:
    """The frozen diffusion models SDS needs, on one device in one dtype."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    controlnet: Any
    alphas_cumprod: torch.Tensor      # (T,) float32 on device
    dtype: torch.dtype
    device: torch.device
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    channels_last: bool = False       # UNet + ControlNet channels-last (set by speed.accelerate)
    vae_channels_last: bool = False   # VAE encoder channels-last (set by speed.accelerate)
    compiled: bool = False
    tf32: bool = False                # matrix products of the models on tensor cores (speed.accelerate)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """The resolution the UNet was trained at (512 for SD 1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (bf16 where asked), fp32 on the CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    if name in (None, "auto"):
        return default_dtype(device)
    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise GuidanceModelError(f"unknown precision {name!r}; choose auto, fp16, bf16 or fp32")
    dtype = table[name]
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        raise GuidanceModelError("fp16 diffusion is for CUDA; use fp32 (or bf16) on the CPU")
    return dtype


def resolve_source(value: str | os.PathLike | None, which: str) -> list[str]:
    """Candidates to try, in order: the given folder or id; else the environment variable;
    else the known hub ids (from the local cache)."""
    env = SD_ENV if which == "sd" else CONTROLNET_ENV
    ids = SD_HUB_IDS if which == "sd" else CONTROLNET_HUB_IDS
    if value:
        return [str(value)]
    if os.environ.get(env):
        return [os.environ[env]]
    return list(ids)


@contextlib.contextmanager
def _quiet():
    """diffusers/transformers print progress bars and hints on stdout, which may be the protocol."""
    with contextlib.redirect_stdout(sys.stderr):
        from diffusers.utils import logging as dlog

        level = dlog.get_verbosity()
        dlog.set_verbosity_error()
        try:
            yield
        finally:
            dlog.set_verbosity(level)


def _is_local(name: str) -> bool:
    p = Path(name).expanduser()
    return p.exists() or os.path.isabs(name) or name.startswith((".", "~"))


def _check_folder(path: Path, which: str) -> None:
    if not path.is_dir():
        raise GuidanceModelError(f"{'Stable Diffusion' if which == 'sd' else 'ControlNet'} folder {path} "
                                 f"does not exist.\n{download_help(which)}")
    if which == "sd":
        missing = [c for c in SD_COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise GuidanceModelError(f"{path} is not a Stable Diffusion folder in the diffusers layout: "
                                     f"{', '.join(m + '/' for m in missing)} missing.\n{download_help('sd')}")
    elif not (path / "config.json").exists():
        raise GuidanceModelError(f"{path} is not a ControlNet folder (config.json is missing).\n"
                                 f"{download_help('controlnet')}")


def _from_pretrained(cls: Any, name: str, local_only: bool, dtype: torch.dtype, **kw: Any) -> Any:
    """Load trying the plain weights, then the fp16 variant (mirrors often hold only that)."""
    errors = []
    for variant in (None, "fp16"):
        try:
            # diffusers casts while loading; transformers' keyword changed names, so cast later
            extra = {"torch_dtype": dtype} if dtype is not None and cls.__module__.startswith("diffusers") else {}
            if variant:
                extra["variant"] = variant
            return cls.from_pretrained(name, local_files_only=local_only, **extra, **kw)
        except (OSError, ValueError, EnvironmentError) as exc:  # missing file / variant
            errors.append(exc)
    raise errors[0]


def _load_sd(name: str, local_only: bool, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if _is_local(name):
        path = Path(name).expanduser()
        _check_folder(path, "sd")
        name = str(path)
    return {
        "unet": _from_pretrained(UNet2DConditionModel, name, local_only, dtype, subfolder="unet"),
        "vae": _from_pretrained(AutoencoderKL, name, local_only, dtype, subfolder="vae"),
        "text_encoder": _from_pretrained(CLIPTextModel, name, local_only, dtype, subfolder="text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(name, subfolder="tokenizer", local_files_only=local_only),
        "scheduler": DDPMScheduler.from_pretrained(name, subfolder="scheduler", local_files_only=local_only),
    }


def _load_controlnet(name: str, local_only: bool, dtype: torch.dtype) -> Any:
    from diffusers import ControlNetModel

    if _is_local(name):
        path = Path(name).expanduser()
        _check_folder(path, "controlnet")
        name = str(path)
    return _from_pretrained(ControlNetModel, name, local_only, dtype)


def _try(which: str, candidates: list[str], loader: Any, local_only: bool, dtype: torch.dtype) -> tuple[Any, str]:
    failures = []
    for name in candidates:
        try:
            with _quiet():
                return loader(name, local_only, dtype), name
        except GuidanceModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported with the candidates
            failures.append(f"  {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    where = "in the local Hugging Face cache" if local_only else "locally or on the hub"
    raise GuidanceModelError(f"could not load the {'Stable Diffusion 1.5' if which == 'sd' else 'OpenPose ControlNet'} "
                             f"weights {where}; tried:\n" + "\n".join(failures) + "\n" + download_help(which))


def prepare_models(parts: dict[str, Any], device: torch.device | str, dtype: torch.dtype,
                   sources: dict[str, str] | None = None) -> GuidanceModels:
    """Freeze, cast and move loaded (or freshly built) models; keep only what SDS uses."""
    from diffusers import DDPMScheduler

    device = torch.device(device)
    mods = {}
    for key in ("unet", "vae", "text_encoder", "controlnet"):
        m = parts[key]
        m.requires_grad_(False)
        m.eval()
        mods[key] = m.to(device=device, dtype=dtype)
    vae = mods["vae"]
    if hasattr(vae, "decoder"):
        vae.decoder = None  # SDS only encodes; frees ~100 MB
        vae.post_quant_conv = None
    scheduler = parts["scheduler"]
    if not isinstance(scheduler, DDPMScheduler):
        scheduler = DDPMScheduler.from_config(scheduler.config)
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    return GuidanceModels(unet=mods["unet"], vae=vae, text_encoder=mods["text_encoder"],
                          tokenizer=parts["tokenizer"], controlnet=mods["controlnet"], alphas_cumprod=alphas,
                          dtype=dtype, device=device, sources=dict(sources or {}))


def load_tiny_encoder(name: str | os.PathLike, device: torch.device | str, dtype: torch.dtype,
                      allow_download: bool = False) -> Any:
    """A TAESD-style `AutoencoderTiny` (e.g. madebyollin/taesd) for the cheaper encoder path."""
    from diffusers import AutoencoderTiny

    name = str(name)
    if _is_local(name):
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise GuidanceModelError(f"{path} is not an AutoencoderTiny folder (config.json is missing); "
                                     "download one with: huggingface-cli download madebyollin/taesd "
                                     "--local-dir ~/models/taesd")
        name = str(path)
    try:
        with _quiet():
            enc = AutoencoderTiny.from_pretrained(name, local_files_only=not allow_download, torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise GuidanceModelError(f"could not load the tiny encoder {name} ({type(exc).__name__}); download it with: "
                                 "huggingface-cli download madebyollin/taesd --local-dir ~/models/taesd") from exc
    enc.requires_grad_(False)
    enc.decoder = None
    return enc.eval().to(device)


def load_guidance_models(sd_model: str | os.PathLike | None = None, controlnet: str | os.PathLike | None = None,
                         device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None,
                         allow_download: bool = False) -> GuidanceModels:
    """SD 1.5 + OpenPose ControlNet from folders or hub ids (see the module docstring)."""
    if not isinstance(dtype, torch.dtype):
        dtype = parse_dtype(dtype, device)
    local_only = not allow_download
    sd_parts, sd_name = _try("sd", resolve_source(sd_model, "sd"), _load_sd, local_only, dtype)
    cn, cn_name = _try("controlnet", resolve_source(controlnet, "controlnet"), _load_controlnet, local_only, dtype)
    unet_ch = list(sd_parts["unet"].config.block_out_channels)
    cn_ch = list(cn.config.block_out_channels)
    if unet_ch != cn_ch or sd_parts["unet"].config.cross_attention_dim != cn.config.cross_attention_dim:
        raise GuidanceModelError(f"the ControlNet {cn_name} (channels {cn_ch}) does not match the UNet of "
                                 f"{sd_name} (channels {unet_ch}): use an SD 1.5 ControlNet with SD 1.5")
    log.info("guidance models: %s + %s (%s on %s)", sd_name, cn_name, dtype, device)
    return prepare_models(dict(sd_parts, controlnet=cn), device, dtype,
                          {"sd_model": str(sd_name), "controlnet": str(cn_name)})
