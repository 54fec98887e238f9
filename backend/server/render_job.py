"""Built-in job kinds: ``render_motion`` (an avatar on a motion, to PNG frames) and ``selftest``
(a job that only counts, checkpoints and resumes: it exercises the job machinery anywhere)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import protocol as P
from .jobs import JobCancelled, JobContext, JobFailed, JobParamError

FRAME_PATTERN = "frame_{:05d}.png"


def _param(params: dict, name: str, kind: str, default: Any = None, required: bool = False) -> Any:
    value = params.get(name)
    if value is None:
        if required:
            raise JobParamError(f"the parameter {name!r} is required")
        return default
    if not P.type_ok(value, kind):
        raise JobParamError(f"the parameter {name!r} must be {P._TYPE_WORDS[kind]}")
    return value


# ---- render_motion ------------------------------------------------------------------------
def make_render_motion_job(params: dict, services: Any):
    """params: avatar (handle) or avatar_path; motion (file or TRAM folder); out (folder);
    width, height (default 512); camera (OpenCV world_to_camera + K; default: the motion's own
    camera track, else a front camera framing the whole motion); fps (resample); start, end
    (frames, end exclusive); background [r, g, b] (default: transparent PNGs); rasterizer;
    resume (skip frames already written)."""
    handle = params.get("avatar")
    avatar_path = _param(params, "avatar_path", "str")
    if handle is None and avatar_path is None:
        raise JobParamError("give \"avatar\" (a loaded avatar's handle) or \"avatar_path\" (an avatar folder)")
    avatar = services.avatar(handle) if handle is not None else None
    if avatar_path is not None and not Path(avatar_path).expanduser().is_dir():
        raise JobParamError(f"the avatar folder {avatar_path} does not exist")
    motion_path = Path(_param(params, "motion", "str", required=True)).expanduser()
    if not motion_path.exists():
        raise JobParamError(f"the motion file {motion_path} does not exist")
    out = Path(_param(params, "out", "str", required=True)).expanduser()
    width = _param(params, "width", "int", 512)
    height = _param(params, "height", "int", 512)
    for name, v in (("width", width), ("height", height)):
        if not 1 <= v <= P.MAX_IMAGE_SIDE:
            raise JobParamError(f"{name} must be between 1 and {P.MAX_IMAGE_SIDE}")
    camera_msg = _param(params, "camera", "dict")
    fps = _param(params, "fps", "number")
    if fps is not None and fps <= 0:
        raise JobParamError("fps must be positive")
    start = _param(params, "start", "int", 0)
    end = _param(params, "end", "int")
    background = _param(params, "background", "list")
    rasterizer = _param(params, "rasterizer", "str", "auto")
    if rasterizer not in P.RASTERIZERS:
        raise JobParamError(f"rasterizer must be one of {list(P.RASTERIZERS)}")
    resume = bool(params.get("resume", False))
    camera = None
    if camera_msg is not None:
        from .render_ops import parse_camera

        camera = parse_camera(camera_msg, width, height)
    if background is not None:
        from .core import _matrix

        background = _matrix(background, (3,), "background")

    def run(ctx: JobContext) -> dict:
        import torch

        from ..avatar import pose_with_params
        from ..files import atomic_path, remove_stale_temps
        from ..motion import load_motion
        from ..render import rasterize

        with torch.no_grad():
            av = avatar if avatar is not None else services.load_avatar_object(Path(avatar_path).expanduser())
            ctx.progress("load", 0, 1)
            motion = load_motion(motion_path, fps=fps, body_model=av.body)
            n = motion.num_frames
            first, last = max(0, start), n if end is None else min(max(end, 0), n)
            if first >= last:
                raise JobFailed(P.BAD_REQUEST, f"the frame range {first}..{last} is empty (the motion has {n} frames)")
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out, depth=0)     # frames a killed job left half-written
            bg = None if background is None else torch.as_tensor(background, dtype=torch.float32, device=services.device)

            def frame_params(i: int) -> dict:
                p = {k: np.asarray(getattr(motion, k)[i]) for k in
                     ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose",
                      "leye_pose", "reye_pose", "transl")}
                if motion.num_expression:
                    p["expression"] = np.asarray(motion.expression[i])
                return p

            cams = _cameras(camera, motion, av, frame_params, range(first, last), width, height)
            rendered = skipped = 0
            for k, i in enumerate(range(first, last)):
                ctx.check_cancel()
                path = out / FRAME_PATTERN.format(i)
                if resume and path.exists():
                    skipped += 1
                else:
                    g = pose_with_params(av, **frame_params(i))
                    o = rasterize(g, cams(i), backend=rasterizer, background=bg)
                    _write_png(path, o.rgb, o.alpha, bg is not None, atomic_path)
                    rendered += 1
                ctx.progress("render", k + 1, last - first, frame=i, path=str(path))
            return {"out": str(out.resolve()), "pattern": FRAME_PATTERN.replace("{:05d}", "%05d"),
                    "first": first, "last": last - 1, "rendered": rendered, "skipped": skipped,
                    "fps": float(motion.fps)}

    return run


def _cameras(camera: Any, motion: Any, avatar: Any, frame_params: Any, frames: range, width: int, height: int):
    import torch

    from ..avatar import pose_with_params
    from ..avatar.preview import framing_camera
    from ..render import Camera

    if camera is not None:
        return lambda i: camera
    track = getattr(motion, "camera", None)
    if track is not None:
        sx = width / track.width if track.width else 1.0
        sy = height / track.height if track.height else 1.0
        scale = np.diag([sx, sy, 1.0])
        return lambda i: Camera(world_to_camera=track.world_to_camera[i], K=scale @ track.K[i],
                                width=width, height=height)
    picks = sorted({frames[int(round(j))] for j in np.linspace(0, len(frames) - 1, min(len(frames), 8))})
    points = torch.cat([pose_with_params(avatar, **frame_params(i)).means for i in picks])
    cam = framing_camera(points, width, height)
    return lambda i: cam


def _write_png(path: Path, rgb: Any, alpha: Any, opaque: bool, atomic_path: Any) -> None:
    from PIL import Image

    rgb_np = rgb.detach().cpu().numpy()
    a = alpha.detach().cpu().numpy()
    if opaque:
        img = Image.fromarray((np.clip(rgb_np, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    else:
        straight = np.where(a > 1e-6, rgb_np / np.maximum(a, 1e-6), 0.0)
        rgba = np.concatenate([np.clip(straight, 0, 1), np.clip(a, 0, 1)], -1)
        img = Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA")
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


# ---- selftest ------------------------------------------------------------------------------
def make_selftest_job(params: dict, services: Any):
    """params: steps (default 10), delay (seconds per step, default 0.05), out (folder for the
    checkpoint ``checkpoints/selftest.json``, written every step), resume, fail_at (a step at
    which to fail, for tests)."""
    steps = _param(params, "steps", "int", 10)
    delay = _param(params, "delay", "number", 0.05)
    fail_at = _param(params, "fail_at", "int")
    _param(params, "out", "str")
    if steps < 0 or delay < 0:
        raise JobParamError("steps and delay must not be negative")

    def run(ctx: JobContext) -> dict:
        from ..files import write_text_atomic

        ckpt = None if ctx.checkpoint_dir is None else ctx.checkpoint_dir / "selftest.json"
        step = 0
        if ctx.resume and ckpt is not None and ckpt.exists():
            step = int(json.loads(ckpt.read_text())["step"])
        resumed_from = step
        while step < steps:
            try:
                ctx.check_cancel()
            except JobCancelled:
                raise JobCancelled(result={"step": step, "checkpoint": None if ckpt is None else str(ckpt)})
            time.sleep(delay)
            step += 1
            if fail_at is not None and step == fail_at:
                raise JobFailed(P.JOB_ERROR, f"selftest failed at step {step}, as asked")
            if ckpt is not None:
                write_text_atomic(ckpt, json.dumps({"step": step}))
            ctx.progress("count", step, steps, loss=1.0 / step)
        return {"steps": steps, "resumed_from": resumed_from}

    return run
