"""Diffusion guidance: model folders, loading errors, and the SDS gradient (tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch

from backend.guidance import (GuidanceModelError, SDSConfig, SDSGuidance, load_guidance_models, view_label)
from backend.guidance.configs import SD15_CONTROLNET_COND_CHANNELS, SD15_TEXT, SD15_UNET, SD15_VAE


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from backend.cli.dev_cmd import main

    out = tmp_path_factory.mktemp("tiny-models")
    assert main(["tiny-models", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def models(tiny_dir):
    return load_guidance_models(tiny_dir / "stable-diffusion", tiny_dir / "controlnet", "cpu")


def test_tiny_models_are_a_diffusers_sd15_controlnet_layout(tiny_dir):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd = tiny_dir / "stable-diffusion"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (sd / part).is_dir()
    index = json.loads((sd / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    cn = ControlNetModel.from_pretrained(str(tiny_dir / "controlnet"))
    pipe = StableDiffusionControlNetPipeline.from_pretrained(str(sd), controlnet=cn, safety_checker=None)
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer("a chef, front view").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id


def test_loaded_models_are_frozen_and_sized(models):
    assert models.image_size == 64 and models.vae_scale == 8
    assert models.num_train_timesteps == 1000
    for m in (models.unet, models.vae, models.controlnet, models.text_encoder):
        assert not any(p.requires_grad for p in m.parameters())
    assert models.sources["sd_model"].endswith("stable-diffusion")


def test_sd15_configs_have_the_real_parameter_counts():
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        counts = {
            "unet": unet,
            "vae": AutoencoderKL(**SD15_VAE),
            "text": CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
            "controlnet": ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=SD15_CONTROLNET_COND_CHANNELS),
        }
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in counts.items()}
    assert n == {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480, "controlnet": 361_279_120}


def test_missing_weights_say_what_to_download(tmp_path, monkeypatch, tiny_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GuidanceModelError) as err:
        load_guidance_models(tmp_path / "nowhere", tiny_dir / "controlnet")
    text = str(err.value)
    assert "nowhere" in text and "stable-diffusion-v1-5" in text and "--sd-model" in text
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(GuidanceModelError, match="vae/"):
        load_guidance_models(tmp_path / "half", tiny_dir / "controlnet")
    with pytest.raises(GuidanceModelError) as err:
        load_guidance_models(tiny_dir / "stable-diffusion", tmp_path / "no-controlnet")
    assert "lllyasviel/control_v11p_sd15_openpose" in str(err.value) and "--controlnet" in str(err.value)
    # a hub id that is not in the (empty) cache is not downloaded
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("DREAMWALTZ_SD_MODEL", raising=False)
    with pytest.raises(GuidanceModelError) as err:
        load_guidance_models("someone/not-cached-model", tiny_dir / "controlnet")
    assert "local Hugging Face cache" in str(err.value) and "--allow-download" in str(err.value)


def test_sds_gradient_is_the_weighted_cfg_residual(models):
    sds = SDSGuidance(models, "a chef dressed in white", SDSConfig(guidance_scale=7.5))
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    sds.encode = lambda images, posterior_noise=None: latents  # inject a leaf to read dloss/dlatents
    images = torch.rand(2, 3, 64, 64)
    control = torch.rand(2, 3, 64, 64)
    loss, info = sds(images, control, [("body", "front"), ("face", "back")], 0.0, torch.Generator().manual_seed(3))
    loss.backward()
    # d(0.5 |z - sg(z - g)|^2 / B)/dz = g / B
    assert torch.allclose(latents.grad * 2, info["grad"], atol=1e-5)
    # and g = w(t) (eps_hat - eps) with eps_hat the CFG prediction
    gen = torch.Generator().manual_seed(3)
    lo, hi = sds.t_range(0.0)
    t = torch.randint(lo, hi + 1, (2,), generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    assert torch.equal(t, info["t"])
    a = models.alphas_cumprod[t].view(2, 1, 1, 1)
    noisy = a.sqrt() * latents.detach() + (1 - a).sqrt() * noise
    cond = torch.stack([sds.embedding("body", "front"), sds.embedding("face", "back")])
    with torch.no_grad():
        def eps(emb):
            down, mid = models.controlnet(noisy, t, encoder_hidden_states=emb, controlnet_cond=control,
                                          return_dict=False)
            return models.unet(noisy, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid).sample
        e_c, e_u = eps(cond), eps(sds.uncond[None].expand(2, -1, -1))
    want = (1 - a) * (e_u + 7.5 * (e_c - e_u) - noise)
    assert torch.allclose(info["grad"], want, atol=1e-4)


def test_sds_gradient_reaches_the_pixels_and_depends_on_the_skeleton(models):
    sds = SDSGuidance(models, "a chef")
    images = torch.rand(1, 3, 32, 32, requires_grad=True)   # resized to the model's 64 px
    control = torch.zeros(1, 3, 64, 64)
    loss, info = sds(images, control, [("body", "side")], 0.5, torch.Generator().manual_seed(0))
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()
    control2 = control.clone()
    control2[:, 0, 20:40, 20:40] = 1.0
    _, info2 = sds(images, control2, [("body", "side")], 0.5, torch.Generator().manual_seed(0))
    assert not torch.allclose(info["grad"], info2["grad"])


def test_timestep_range_anneals():
    class M:
        num_train_timesteps = 1000
    sds = SDSGuidance.__new__(SDSGuidance)
    sds.models, sds.config = M(), SDSConfig(t_range_start=(0.02, 0.98), t_range_end=(0.02, 0.5))
    assert sds.t_range(0.0) == (20, 979) and sds.t_range(1.0) == (20, 500)
    highs = [sds.t_range(p)[1] for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert highs == sorted(highs, reverse=True)
    sds.config = SDSConfig(t_schedule="constant")
    assert sds.t_range(0.0) == sds.t_range(1.0)
    linear = SDSGuidance.t_range(type("S", (), {"models": M(), "config": SDSConfig()})(), 0.25)[1]
    sds.config = SDSConfig(t_schedule="sqrt")
    assert sds.t_range(0.25)[1] < linear  # sqrt anneals faster early on
    assert sds.t_range(1.0) == (20, 500)
    with pytest.raises(ValueError):
        SDSConfig(t_range_start=(0.5, 0.2))


def test_view_dependent_prompts(models):
    assert view_label(0, 0) == "front" and view_label(30, 10) == "front"
    assert view_label(90, 0) == "side" and view_label(-100, 0) == "side"
    assert view_label(180, 0) == "back" and view_label(-150, 20) == "back"
    assert view_label(0, 70) == "overhead"
    sds = SDSGuidance(models, "a chef")
    assert sds.prompt_text("body", "back") == "a chef, full body, back view"
    assert "face" in sds.prompt_text("face", "front") and "front view" in sds.prompt_text("face", "front")
    assert not torch.equal(sds.embedding("body", "front"), sds.embedding("body", "back"))
    plain = SDSGuidance(models, "a chef", SDSConfig(view_prompts=False, negative_prompt="ugly"))
    assert plain.prompt_text("body", "back") == "a chef, full body"
    assert not torch.equal(plain.uncond, sds.uncond)


def test_weighting(models):
    t = torch.tensor([10, 500, 990])
    a = models.alphas_cumprod[t]
    sds = SDSGuidance(models, "x")
    assert torch.allclose(sds.weight(t), 1 - a)
    sds.config = SDSConfig(weighting="uniform")
    assert torch.equal(sds.weight(t), torch.ones(3))
    sds.config = SDSConfig(weighting="alpha_sigma")
    assert torch.allclose(sds.weight(t), a.sqrt() * (1 - a))


@pytest.mark.gpu
def test_cuda_graph_replay_and_channels_last_predict_the_eager_noise(tiny_dir):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from backend.guidance.speed import NoisePredictor, accelerate

    models = load_guidance_models(tiny_dir / "stable-diffusion", tiny_dir / "controlnet", "cuda", "fp32")
    eager, graphed = NoisePredictor(models, graphs=False), NoisePredictor(models, graphs=True)
    gen = torch.Generator("cuda").manual_seed(0)

    def inputs():
        return (torch.randn(4, 4, 8, 8, device="cuda", generator=gen),
                torch.randint(0, 1000, (4,), device="cuda", generator=gen),
                torch.randn(4, 77, models.unet.config.cross_attention_dim, device="cuda", generator=gen),
                torch.rand(4, 3, 64, 64, device="cuda", generator=gen))

    batches = [inputs() for _ in range(5)]
    want = [eager(*b).clone() for b in batches]
    got = [graphed(*b).clone() for b in batches]   # 2 plain calls, a capture, 2 replays
    assert graphed._captured, "the noise prediction was not captured as a CUDA graph"
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4), float((g - w).abs().max())
    accelerate(models, channels_last=True)
    fast = NoisePredictor(models, graphs=True)
    for b, w in zip(batches, want):
        out = fast(*b)
        assert torch.allclose(out, w, atol=5e-3, rtol=5e-3), float((out - w).abs().max())  # cuDNN's TF32


@pytest.mark.gpu
def test_graph_capture_survives_another_thread_pinning_memory(tiny_dir):
    """The training run's batch receiver pins host memory while the noise prediction is captured."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    import threading

    from backend.guidance.speed import NoisePredictor

    models = load_guidance_models(tiny_dir / "stable-diffusion", tiny_dir / "controlnet", "cuda", "fp16")
    predictor = NoisePredictor(models, graphs=True)
    stop = threading.Event()

    def pin_forever():
        while not stop.is_set():
            torch.empty(1 << 20, dtype=torch.uint8).pin_memory()

    thread = threading.Thread(target=pin_forever, daemon=True)
    thread.start()
    try:
        args = (torch.randn(2, 4, 8, 8, device="cuda", dtype=torch.float16), torch.tensor([10, 500], device="cuda"),
                torch.randn(2, 77, models.unet.config.cross_attention_dim, device="cuda", dtype=torch.float16),
                torch.rand(2, 3, 64, 64, device="cuda", dtype=torch.float16))
        for _ in range(6):
            predictor(*args)
    finally:
        stop.set()
        thread.join()
    assert predictor.graphs and predictor._captured


@pytest.mark.gpu
def test_every_attention_kernel_predicts_the_same_noise(tiny_dir):
    """`--attention` only changes speed: each kernel put first gives torch's default prediction."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from backend.guidance.speed import ATTENTION, NoisePredictor

    models = load_guidance_models(tiny_dir / "stable-diffusion", tiny_dir / "controlnet", "cuda", "fp16")
    gen = torch.Generator("cuda").manual_seed(1)
    args = (torch.randn(4, 4, 8, 8, device="cuda", generator=gen).half(),
            torch.randint(0, 1000, (4,), device="cuda", generator=gen),
            torch.randn(4, 77, models.unet.config.cross_attention_dim, device="cuda", generator=gen).half(),
            torch.rand(4, 3, 64, 64, device="cuda", generator=gen).half())
    want = NoisePredictor(models, graphs=False)(*args).float()
    for name in ATTENTION:
        got = NoisePredictor(models, graphs=True, attention=name)
        for _ in range(4):   # plain calls, capture, replay
            out = got(*args).float()
        assert torch.allclose(out, want, atol=2e-2, rtol=2e-2), (name, float((out - want).abs().max()))


@pytest.mark.gpu
def test_vae_encoder_math_attention_matches_the_fused_kernels(tiny_dir, monkeypatch):
    """SDS encodes through the VAE with plain-matmul attention (guidance.speed.VAE_ATTENTION):
    same latents and pixel gradients as with torch's fused attention kernel."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    import backend.guidance.sds as sds_module
    from backend.guidance.speed import accelerate

    models = accelerate(load_guidance_models(tiny_dir / "stable-diffusion", tiny_dir / "controlnet", "cuda", "fp16"))
    sds = SDSGuidance(models, "a person")
    images = torch.rand(2, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    results = []
    for kernel in ("math", "efficient"):
        monkeypatch.setattr(sds_module, "VAE_ATTENTION", kernel)
        x = images.clone().requires_grad_(True)
        latents = sds.encode(x)
        latents.float().square().sum().backward()
        results.append((latents.detach().float(), x.grad))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, atol=2e-2, rtol=2e-2), float((l1 - l2).abs().max())
    assert torch.nn.functional.cosine_similarity(g1.flatten(), g2.flatten(), dim=0) > 0.99
