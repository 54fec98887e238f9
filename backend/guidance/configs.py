"""Model configurations: Stable Diffusion 1.5 + OpenPose ControlNet v1.1 at full size (for the
benchmark: same shapes and FLOPs as the real weights, random values) and at tiny widths (for the
tests and `python -m backend dev tiny-models`), plus an offline byte-level CLIP tokenizer.

Nothing here downloads anything. `write_model_folders` saves models in the diffusers folder
layout (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`, and a
separate ControlNet folder), so that they load through exactly the code path real weights take.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

SD15_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD15_TEXT: dict[str, Any] = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# ControlNet v1.1 (lllyasviel/control_v11p_sd15_openpose) = the UNet's encoder half + this.
SD15_CONTROLNET_COND_CHANNELS = (16, 32, 96, 256)

SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

TINY_UNET: dict[str, Any] = dict(
    SD15_UNET,
    attention_head_dim=2,
    block_out_channels=[32, 64],
    cross_attention_dim=32,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    sample_size=8,
)
TINY_VAE: dict[str, Any] = dict(SD15_VAE, block_out_channels=[16, 16, 32, 32], layers_per_block=1,
                                norm_num_groups=8, sample_size=64)
TINY_TEXT: dict[str, Any] = dict(SD15_TEXT, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                 num_hidden_layers=2, projection_dim=32)
TINY_CONTROLNET_COND_CHANNELS = (8, 8, 16, 16)

SIZES = {
    "sd15": (SD15_UNET, SD15_VAE, SD15_TEXT, SD15_CONTROLNET_COND_CHANNELS),
    "tiny": (TINY_UNET, TINY_VAE, TINY_TEXT, TINY_CONTROLNET_COND_CHANNELS),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_byte_tokenizer(folder: str | os.PathLike) -> Path:
    """A CLIP tokenizer (vocab.json + merges.txt) whose vocabulary is the 256 byte symbols, with
    and without CLIP's end-of-word mark, and no merges: every character is one token. Same
    format, special tokens and 77-token length as SD 1.5's tokenizer, built offline."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return folder


def byte_tokenizer(tmp_folder: str | os.PathLike):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(write_byte_tokenizer(tmp_folder)))


def build_random_models(size: str = "tiny", seed: int = 0, device: str = "cpu", tokenizer_dir=None) -> dict[str, Any]:
    """Random-weight models of the SD 1.5 + ControlNet architecture at `size` ("tiny" or "sd15").

    Returns {"unet", "vae", "text_encoder", "controlnet", "scheduler", "tokenizer"(if
    tokenizer_dir)}, in float32 on `device`."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg, cond_channels = SIZES[size]
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg, bos_token_id=512, eos_token_id=513, pad_token_id=513))
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cond_channels,
                                               load_weights_from_unet=True)
    # a fresh ControlNet's zero convolutions make its residuals exactly zero; random weights
    # there make the skeleton reach the UNet, as trained weights do
    with torch.no_grad():
        zero_convs = list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block,
                                                                controlnet.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.weight.normal_(0, 0.05)
    sched_cfg = {k: v for k, v in SD15_SCHEDULER.items() if not k.startswith("_")}
    out = {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text.eval(), "controlnet": controlnet.eval(),
           "scheduler": PNDMScheduler(**sched_cfg)}
    if tokenizer_dir is not None:
        out["tokenizer"] = byte_tokenizer(tokenizer_dir)
    return out


MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def build_tiny_encoder(size: str = "tiny", seed: int = 0) -> Any:
    """A random-weight TAESD (`AutoencoderTiny`): the real architecture for "sd15", 16 channels
    wide for "tiny"."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    if size == "sd15":
        return AutoencoderTiny().eval()
    return AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16),
                           decoder_block_out_channels=(16, 16, 16, 16)).eval()


def write_model_folders(out: str | os.PathLike, size: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """Write `out/stable-diffusion` (diffusers layout), `out/controlnet` and `out/taesd` (a tiny
    encoder for `--tiny-encoder`); returns the first two. Each folder is built beside its target
    and renamed into place (written whole or not at all)."""
    import diffusers

    from ..files import atomic_folder

    out = Path(out)
    sd_dir, cn_dir = out / "stable-diffusion", out / "controlnet"
    with atomic_folder(sd_dir) as sd_tmp, atomic_folder(cn_dir) as cn_tmp, atomic_folder(out / "taesd") as te_tmp:
        models = build_random_models(size, seed, tokenizer_dir=sd_tmp / "tokenizer")
        models["unet"].save_pretrained(str(sd_tmp / "unet"))
        models["vae"].save_pretrained(str(sd_tmp / "vae"))
        models["text_encoder"].save_pretrained(str(sd_tmp / "text_encoder"))
        models["scheduler"].save_pretrained(str(sd_tmp / "scheduler"))
        index = dict(MODEL_INDEX, _diffusers_version=diffusers.__version__)
        (sd_tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        (sd_tmp / "README.txt").write_text(
            f"Random-weight Stable Diffusion 1.5 architecture at '{size}' size, made by "
            "`python -m backend dev tiny-models` for tests. It generates noise, not images.\n")
        models["controlnet"].save_pretrained(str(cn_tmp))
        build_tiny_encoder(size, seed).save_pretrained(str(te_tmp))
    return sd_dir, cn_dir
