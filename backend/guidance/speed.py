"""Making the frozen diffusion models fast on CUDA, without changing what they compute.

* `NoisePredictor` runs ControlNet + UNet for a batch and, on CUDA, replays the pair as one CUDA
  graph per input shape: eager, the two launch about 2,000 kernels per call, and the CPU time
  of launching them rivals the GPU time at SD 1.5's batch sizes.
* `accelerate` chooses memory layouts (by measurement) and optionally compiles the models
  with torch.compile.

Both are off on the CPU, where neither helps.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .models import GuidanceModels

log = logging.getLogger(__name__)

WARMUP_CALLS = 2   # before capture: cuDNN autotuning and torch.compile happen outside the graph
ATTENTION = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
"""Attention kernels that `NoisePredictor(attention=...)` can put first ("auto": torch's choice)."""


VAE_ATTENTION = "math"
"""The attention kernel for the SD VAE encoder. Its one attention layer has a single 512-wide
head, which flash and cuDNN attention do not take; torch then picks the memory-efficient
kernel, whose backward alone took 15 ms of a 4-view iteration on an H200 (bench/results/
train_gpu_h200.txt, run E's profile). With plain matmuls and a softmax the encoder's forward +
backward for 4 views took 46.6 ms instead of 61.2 (guidance_parts_h200.txt)."""


def attention_kernels(name: str) -> contextlib.AbstractContextManager:
    """A context preferring one scaled-dot-product-attention kernel, falling back to the others
    for shapes it does not support."""
    if name == "auto":
        return contextlib.nullcontext()
    if name not in ATTENTION:
        raise ValueError(f"attention must be auto or one of {', '.join(ATTENTION)}; got {name!r}")
    order = [ATTENTION[name]] + [b for b in ATTENTION.values() if b is not ATTENTION[name]]
    return sdpa_kernel(order, set_priority=True)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """TF32 matrix products while the diffusion models run, restored after: the flag is
    process-wide, and the rasterizer and posing in the same process need full fp32."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def accelerate(models: GuidanceModels, channels_last: bool = False, compile: bool = False,
               tiny_encoder: Any = None, mode: str | None = None) -> GuidanceModels:
    """cuDNN autotuning, layout and torch.compile for the UNet, the ControlNet and the encoder
    (static shapes: one compile per batch size). In place; returns `models`.

    Measured on an H200 (bench/results/guidance_parts_h200.txt): channels-last makes SD 1.5's
    UNet + ControlNet and VAE encoder slower in eager mode (their GroupNorms fall back to
    contiguous copies); compiled, it makes UNet + ControlNet 4 % faster (27.3 -> 26.1 ms) and the
    VAE encoder 25 % slower. So `compile` puts UNet + ControlNet channels-last and `channels_last`
    forces it on all three; the tiny encoder, without GroupNorm, is 30 % faster channels-last
    and always gets it on CUDA."""
    cuda = models.device.type == "cuda"
    if cuda:
        # static shapes for a whole run: cuDNN times its convolution algorithms once (as
        # bench/train.py measured it)
        torch.backends.cudnn.benchmark = True
        # fp32 models (the dreamwaltz-g recipe's default) multiply matrices on tensor cores in
        # TF32, as cuDNN's convolutions already do by default (and as bench/train.py measures);
        # only inside the models' calls (tf32_matmuls), never for the renderer's or posing's maths
        models.tf32 = models.dtype == torch.float32
        # the VAE's math attention (VAE_ATTENTION) on tensor cores, in half precision like the
        # fused kernels, rather than upcast to fp32
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    if (channels_last or compile) and cuda and not models.compiled:
        for module in (models.unet, models.controlnet):
            module.to(memory_format=torch.channels_last)
        models.channels_last = True
    if channels_last and cuda and not models.compiled:
        models.vae.encoder.to(memory_format=torch.channels_last)
        models.vae_channels_last = True
    if tiny_encoder is not None and cuda:
        tiny_encoder.encoder.to(memory_format=torch.channels_last)
        tiny_encoder.channels_last = True
    if compile:
        encoder_owner = tiny_encoder if tiny_encoder is not None else models.vae
        models.unet = torch.compile(models.unet, mode=mode, dynamic=False)
        models.controlnet = torch.compile(models.controlnet, mode=mode, dynamic=False)
        encoder_owner.encoder = torch.compile(encoder_owner.encoder, mode=mode, dynamic=False)
        models.compiled = True
    return models


class NoisePredictor:
    """eps for (latents, t, text embeddings, control images): ControlNet residuals into the UNet.

    With `graphs` on a CUDA device each new input signature is run WARMUP_CALLS times, then
    captured; later calls copy their inputs into the captured buffers and replay. The returned
    tensor is the graph's output buffer: use it before the next call. A capture that fails
    (an op that cannot be captured) falls back to plain calls, with a warning."""

    def __init__(self, models: GuidanceModels, controlnet_scale: float = 1.0, graphs: bool = True,
                 attention: str = "auto") -> None:
        self.models = models
        self.controlnet_scale = float(controlnet_scale)
        self.graphs = graphs and models.device.type == "cuda"
        self.attention = attention
        attention_kernels(attention)  # a bad name fails here, not in the first step
        self._calls: dict[tuple, int] = {}
        self._captured: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self._pool: Any = None

    def run(self, latents: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        m = self.models
        if getattr(m, "channels_last", False):
            latents = latents.contiguous(memory_format=torch.channels_last)
            control = control.contiguous(memory_format=torch.channels_last)
        with attention_kernels(self.attention):
            down, mid = m.controlnet(latents, t, encoder_hidden_states=emb, controlnet_cond=control,
                                     conditioning_scale=self.controlnet_scale, return_dict=False)
            return m.unet(latents, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid, return_dict=False)[0]

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
                 control: torch.Tensor) -> torch.Tensor:
        inputs = (latents, t, emb, control)
        if not self.graphs:
            return self.run(*inputs)
        key = tuple((tuple(x.shape), x.dtype) for x in inputs)
        if key in self._captured:
            graph, static_in, static_out = self._captured[key]
            for dst, src in zip(static_in, inputs):
                dst.copy_(src, non_blocking=True)
            graph.replay()
            return static_out
        calls = self._calls.get(key, 0)
        self._calls[key] = calls + 1
        if calls < WARMUP_CALLS:
            return self.run(*inputs)
        return self._capture(key, inputs)

    def _capture(self, key: tuple, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        static_in = tuple(x.detach().clone() for x in inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                self.run(*static_in)  # allocations settle on the side stream before capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # thread-local: the batch receiver thread pins host memory during the capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                static_out = self.run(*static_in)
        except Exception as exc:  # noqa: BLE001 - an uncapturable op: keep working without graphs
            torch.cuda.synchronize()
            log.warning("CUDA graph capture of the noise prediction failed (%s: %s); running without graphs",
                        type(exc).__name__, exc)
            self.graphs = False
            return self.run(*inputs)
        self._captured[key] = (graph, static_in, static_out)
        graph.replay()
        return static_out
