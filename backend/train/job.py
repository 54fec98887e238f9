"""The server's `train` job kind: `make_train_job(params, services) -> run(ctx)`.

Params (JSON): "prompt" (str, required unless resuming), "out" (the run folder, required),
"resume" (bool), and any TrainConfig setting by name ("steps", "preset", "expression",
"sd_model", "controlnet", "time_budget" (seconds or "10m"), "seed", "views", "sds": {...}, ...).

Progress: `job_progress` events with stage ("loading models" or "loading or downloading models",
then "compiling models" where asked, with total 0; then the recipe's stage names: template /
canonical / posed for --recipe fast, nerf-64 ... random-pose for dreamwaltz-g), step, total,
loss, ETA, recipe, stage_index, stages, and "preview": the path of `<out>/previews/latest.png`
when it was rewritten. Cancel saves a
checkpoint; the job then ends cancelled with result {"checkpoint", "step", "out", "resumable":
true}, and the same params with "resume": true continue it. Done: {"avatar": <folder>, "out",
"steps"}. The diffusion models stay loaded between jobs (keyed by weights, device, precision).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

_MODELS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
JOB_KEYS = ("prompt", "out", "resume")


def config_from_params(params: dict[str, Any]) -> Any:
    from .config import TrainConfig, parse_duration
    from .trainer import resume_config

    settings = {k: v for k, v in params.items() if k not in JOB_KEYS}
    if "time_budget" in settings:
        settings["time_budget"] = parse_duration(settings["time_budget"])
    out = Path(str(params["out"]))
    if params.get("resume") and (out / "config.json").exists():
        if params.get("prompt"):
            settings["prompt"] = params["prompt"]
        return resume_config(out, settings)
    return TrainConfig.from_dict(dict(settings, prompt=str(params.get("prompt") or "")))


def cached_models(config: Any) -> Any:
    """Load (or reuse) the guidance models for a config (the trainer compiles them on first use
    when asked, and the compiled ones stay cached)."""
    from ..guidance import load_guidance_models, parse_dtype
    from .trainer import resolve_device

    device = resolve_device(config.device)
    dtype = parse_dtype(config.diffusion_dtype, device)
    key = (config.sd_model, config.controlnet, str(device), str(dtype), bool(config.compile))
    with _LOCK:
        if key not in _MODELS:
            _MODELS.clear()  # one set at a time: they are large
            _MODELS[key] = load_guidance_models(config.sd_model, config.controlnet, device, dtype,
                                                config.allow_download)
        return _MODELS[key]


def loading_stage(config: Any) -> str:
    """The stage shown while the diffusion models load: "downloading" only where a download is
    allowed and a model is not a local folder."""
    local = all(value and Path(str(value)).expanduser().is_dir() for value in (config.sd_model, config.controlnet))
    return "loading models" if local or not config.allow_download else "loading or downloading models"


def make_train_job(params: dict[str, Any], services: Any = None) -> Any:
    from ..server.jobs import JobCancelled, JobFailed, JobParamError

    if not isinstance(params.get("out"), str) or not params["out"]:
        raise JobParamError('"out" (the run folder) is required')
    if not params.get("resume") and not str(params.get("prompt") or "").strip():
        raise JobParamError('"prompt" is required')
    try:
        config = config_from_params(params)
    except (ValueError, TypeError) as exc:
        raise JobParamError(str(exc)) from None
    out = Path(params["out"])
    resume = bool(params.get("resume", False))

    def run(ctx: Any) -> dict[str, Any]:
        from .. import protocol as P
        from ..guidance import GuidanceModelError
        from .checkpoint import CheckpointError
        from .trainer import TrainingCancelled, TrainingError, run_training

        ctx.progress(loading_stage(config), 0, 0)
        try:
            models = cached_models(config)
        except GuidanceModelError as exc:
            raise JobFailed(P.UNAVAILABLE, str(exc)) from None
        try:
            folder = run_training(config, out, progress_cb=ctx.progress, should_cancel=lambda: ctx.cancelled,
                                  resume=resume, models=models)
        except TrainingCancelled as exc:
            raise JobCancelled(result={"checkpoint": str(exc.checkpoint), "step": exc.step, "out": str(out),
                                       "resumable": True}) from None
        except (TrainingError, CheckpointError) as exc:
            raise JobFailed(P.JOB_ERROR, str(exc)) from None
        from ..avatar import read_meta

        done = read_meta(folder).get("provenance", {}).get("iterations")
        return {"avatar": str(folder), "out": str(out), "steps": done if done is not None else config.total_steps}

    return run
