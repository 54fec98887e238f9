"""What one training iteration trains on, made ahead of time.

A `Batch` is the pose (skinning transforms, local rotations, expression), the cameras, the
backgrounds and the OpenPose skeleton images of one iteration. `BatchMaker.make(step, stage)`
is a pure function of (seed, step, stage): its randomness comes from a generator seeded with
(seed, step), so a batch is the same whether it is made in the training process or in a worker,
early or late, before or after a resume.

Making a batch is host-bound (posing the body model, ray-casting keypoints against the mesh,
drawing the skeleton): 10-40 ms of one CPU core per 512 px view, depending on the CPU, against a
GPU iteration of 50-130 ms for 4 views. `BatchSource` therefore keeps worker processes making
the coming batches on the CPU while the GPU trains, and a thread unpickles and pins them as
they arrive, so none of it sits on the critical path.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..body import BodyModel
from .cameras import CameraSampler, View
from ..render.core import upload
from .poses import PoseSampler, to_torch
from .skeleton import SkeletonRenderer

if TYPE_CHECKING:  # the config imports the NeRF package, which uses this module
    from .config import TrainConfig

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 120.0   # a batch takes well under a second; this much silence means a dead worker


class BatchError(RuntimeError):
    """A batch could not be made (the message carries the worker's traceback)."""


@dataclasses.dataclass
class Batch:
    step: int
    stage: str
    transforms: torch.Tensor            # (55, 4, 4) skinning transforms
    rotations: torch.Tensor             # (55, 3, 3) local joint rotations (pose correctives)
    expression: torch.Tensor | None     # (1, E) or None
    views: list[View]
    backgrounds: torch.Tensor           # (V, 3) in [0, 1]
    controls: torch.Tensor | None       # (V, H, W, 3) uint8 skeleton images, None in the template stage

    def _map(self, fn: Callable[[Any], Any]) -> "Batch":
        """The batch with `fn` applied to each of its tensors (None stays None)."""
        return dataclasses.replace(self, **{name: None if getattr(self, name) is None else fn(getattr(self, name))
                                            for name in TENSOR_FIELDS})

    def to(self, device: torch.device) -> "Batch":
        """On `device`, copied asynchronously from pinned memory (no wait for the GPU)."""
        return self._map(lambda t: upload(t, device, t.dtype))

    def pinned(self) -> "Batch":
        """In page-locked host memory, so that `to(cuda)` is a plain asynchronous copy."""
        return self._map(lambda t: t.pin_memory())

    def share(self, views: slice) -> "Batch":
        """The batch of the views `views` (one rank's share in view-parallel training)."""
        if views == slice(0, len(self.views)):
            return self
        return dataclasses.replace(self, views=self.views[views], backgrounds=self.backgrounds[views],
                                   controls=None if self.controls is None else self.controls[views])

    def control_images(self) -> torch.Tensor | None:
        """(V, 3, H, W) float skeleton images in [0, 1]."""
        if self.controls is None:
            return None
        return self.controls.permute(0, 3, 1, 2).float() / 255.0

    def pack(self) -> dict[str, Any]:
        """Plain arrays, for sending between processes."""
        packed = self._map(lambda t: t.cpu().numpy())
        return {f.name: getattr(packed, f.name) for f in dataclasses.fields(packed)}

    @classmethod
    def unpack(cls, data: dict[str, Any]) -> "Batch":
        return cls(**data)._map(torch.from_numpy)


TENSOR_FIELDS = ("transforms", "rotations", "expression", "backgrounds", "controls")


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of one iteration: independent streams per (seed, step)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), 0x5EED])


def step_seed(seed: int, step: int) -> int:
    """A torch seed per (seed, step), for the noise and timesteps of SDS."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), 0xD1FF]).generate_state(1)[0])


def background_color(mode: str, rng: np.random.Generator) -> np.ndarray:
    if mode == "random":
        return rng.random(3)
    return {"white": np.ones(3), "black": np.zeros(3), "grey": np.full(3, 0.5)}[mode]


def pose_body(body: BodyModel, betas: torch.Tensor, params: dict[str, Any]) -> dict[str, Any]:
    """The posed body model for SMPL-X parameters: vertices, joints, skinning transforms,
    local rotations and expression (None without one)."""
    t = to_torch(params, body.device)
    expression = t.pop("expression", None)
    with torch.no_grad():
        out = body.forward(betas=betas.to(body.device), expression=expression, **t)
        rotations = body.local_rotations(body.full_pose(1, **t))[0]
    return {"vertices": out.vertices[0], "joints": out.joints[0], "transforms": out.transforms[0],
            "rotations": rotations, "expression": expression}


class BatchMaker:
    """Makes the batch of any iteration, on one device (see the module docstring)."""

    def __init__(self, config: TrainConfig, body: BodyModel, betas: torch.Tensor,
                 fixed_views: list[View] | None = None) -> None:
        self.config = config
        self.body = body
        self.betas = betas.detach().to(body.device)
        self.fixed_views = fixed_views
        self.skeleton = SkeletonRenderer(body, config.skeleton)
        self.stages = {s.name: s for s in config.stages()}
        self._cameras: dict[int, CameraSampler] = {}
        hands = {side: body.hand_pca(side) for side in ("left", "right")}
        self.poses = PoseSampler(config.poses, body.num_expression, config.expression, hand_basis=hands)
        if config.poses.vposer:
            self.poses.vposer()  # a missing or wrong file fails now, naming it, not in a worker later

    def cameras(self, resolution: int) -> CameraSampler:
        if resolution not in self._cameras:
            self._cameras[resolution] = CameraSampler(self.config.cameras, resolution, resolution)
        return self._cameras[resolution]

    @classmethod
    def on_cpu(cls, config: TrainConfig, betas: np.ndarray) -> "BatchMaker":
        return cls(config, BodyModel.load(config.body_model, "cpu"), torch.as_tensor(betas, dtype=torch.float32))

    def make(self, step: int, stage: str, controls: bool = True) -> Batch:
        """The batch of iteration `step` in the stage named `stage` (its pose mode and size)."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; the stages of this recipe are {', '.join(self.stages)}")
        spec = self.stages[stage]
        rng = step_rng(self.config.seed, step)
        params = self.poses.sample(rng, spec.poses)
        posed = pose_body(self.body, self.betas, params)
        keypoints = self.skeleton.keypoints(posed["vertices"], posed["joints"])
        if self.fixed_views is not None:
            views = list(self.fixed_views)
        else:
            cameras = self.cameras(spec.resolution)
            views = [cameras.sample(rng, posed["vertices"], posed["joints"], posed["transforms"], keypoints)
                     for _ in range(self.config.views)]
        backgrounds = np.stack([background_color(self.config.background, rng) for _ in views])
        images = None
        if controls:
            drawn = torch.stack([self.skeleton.render(posed["vertices"], posed["joints"], v.camera, keypoints)
                                 for v in views])
            images = (drawn.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8)
        return Batch(step=step, stage=stage, transforms=posed["transforms"], rotations=posed["rotations"],
                     expression=posed["expression"], views=views,
                     backgrounds=torch.as_tensor(backgrounds, dtype=torch.float32, device=self.body.device),
                     controls=images)


WORKER_MEMORY = 0.4e9   # bytes a worker holds (torch, the body model, its batches): measured 0.3-0.4 GB


def _available_memory() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_workers(device: torch.device) -> int:
    """Worker processes worth running: on a GPU, all cores but two (one 512 px view takes
    10-40 ms of a core, and an iteration of 4 views on an H200 about 60 ms), at most 16 and
    within a quarter of the free memory; none when training on the CPU (the workers would take
    the cores the training needs)."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(16, cores - 2)
    free = _available_memory()
    if free is not None:
        n = min(n, int(0.25 * free / WORKER_MEMORY))
    return max(0, n)


def _worker(config: TrainConfig, betas: np.ndarray, tasks: Any, results: Any) -> None:
    torch.set_num_threads(1)
    try:
        maker = BatchMaker.on_cpu(config, betas)
    except BaseException:  # noqa: BLE001 - reported to the training process
        results.put(("error", -1, traceback.format_exc()))
        return
    while True:
        task = tasks.get()
        if task is None:
            results.cancel_join_thread()  # exit now, even if unread batches are still buffered
            return
        step, stage, controls = task
        try:
            results.put(("ok", step, maker.make(step, stage, controls).pack()))
        except BaseException:  # noqa: BLE001
            results.put(("error", step, traceback.format_exc()))


class BatchSource:
    """Batches in step order: made by `workers` processes ahead of time, or here when there are
    none (or when the workers fail: a warning, and the run goes on with the same batches).
    `stage_of(step)` says which stage a step is in and `needs_controls(stage)` whether it needs
    skeleton images; when they change (a time budget shortens the schedule), batches made for
    the old plan are made again."""

    def __init__(self, maker: BatchMaker, stage_of: Callable[[int], str], needs_controls: Callable[[str], bool],
                 device: torch.device, workers: int = 0, depth: int | None = None) -> None:
        self.maker = maker
        self.stage_of = stage_of
        self.needs_controls = needs_controls
        self.device = device
        self.workers = 0 if maker.fixed_views is not None else max(0, int(workers))
        self.depth = depth or 2 * self.workers
        self._procs: list[Any] = []
        self._pending: dict[int, tuple[str, bool]] = {}
        self._ready: dict[int, Batch] = {}
        self._tasks: Any = None
        self._results: Any = None
        self._inbox: queue.Queue = queue.Queue()
        self._receiver: threading.Thread | None = None
        self._stop = threading.Event()

    def _task(self, step: int) -> tuple[str, bool]:
        stage = self.stage_of(step)
        return stage, bool(self.needs_controls(stage))

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # the training process holds CUDA: never fork it
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        betas = self.maker.betas.cpu().numpy()
        for _ in range(self.workers):
            proc = ctx.Process(target=_worker, args=(self.maker.config, betas, self._tasks, self._results),
                               daemon=True)
            proc.start()
            self._procs.append(proc)
        self._stop.clear()
        self._receiver = threading.Thread(target=self._receive_loop, name="batch-receiver", daemon=True)
        self._receiver.start()
        log.info("%d batch workers started", self.workers)

    def _receive_loop(self) -> None:
        """Unpickles and pins arriving batches off the training thread (copies release the GIL)."""
        pin = self.device.type == "cuda"
        while not self._stop.is_set():
            try:
                kind, step, payload = self._results.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            if kind == "ok":
                payload = Batch.unpack(payload)
                if pin:
                    try:
                        payload = payload.pinned()
                    except Exception as exc:  # noqa: BLE001 - e.g. during a CUDA-graph capture: pinned later
                        log.debug("could not pin the batch of iteration %d: %s", step, exc)
            self._inbox.put((kind, step, payload))

    def _request(self, first: int, last: int) -> None:
        for step in range(first, last):
            task = self._task(step)
            if self._pending.get(step) == task or step in self._ready and \
                    (self._ready[step].stage, self._ready[step].controls is not None) == task:
                continue
            self._ready.pop(step, None)
            self._pending[step] = task
            self._tasks.put((step,) + task)

    def _next_result(self) -> tuple[str, int, Any]:
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while True:
            try:
                return self._inbox.get(timeout=0.5)
            except queue.Empty:
                pass
            dead = [p.exitcode for p in self._procs if not p.is_alive()]
            receiver_dead = self._receiver is None or not self._receiver.is_alive()
            if dead or receiver_dead or time.monotonic() > deadline:
                self.close()
                why = (f"workers exited with {dead}" if dead else "the receiving thread stopped" if receiver_dead
                       else f"nothing arrived in {WORKER_TIMEOUT_S:.0f} s")
                raise BatchError(f"the batch workers failed: {why}")

    def _receive(self, step: int) -> None:
        while step not in self._ready:
            kind, got, payload = self._next_result()
            if kind == "error":
                self.close()
                raise BatchError(f"making the batch of iteration {got} failed in a worker:\n{payload}")
            wanted = self._pending.get(got)
            if wanted is not None and wanted == (payload.stage, payload.controls is not None):
                del self._pending[got]
                self._ready[got] = payload

    def get(self, step: int) -> Batch:
        """The batch of `step`, on the training device."""
        if self.workers == 0:
            stage, controls = self._task(step)
            return self.maker.make(step, stage, controls).to(self.device)
        if not self._procs:
            self._start()
        for old in [s for s in self._ready if s < step]:
            del self._ready[old]
        try:
            self._request(step, step + self.depth)
            self._receive(step)
        except BatchError as exc:  # the batches are the same either way: go on without workers
            log.warning("%s; making batches in the training process from now on", exc)
            self.close()
            self.workers = 0
            return self.get(step)
        return self._ready.pop(step).to(self.device)

    def close(self) -> None:
        """Stop the workers (safe to call more than once)."""
        procs, self._procs = self._procs, []
        self._stop.set()
        if self._receiver is not None:
            self._receiver.join(timeout=5)
            self._receiver = None
        self._inbox = queue.Queue()
        if procs:
            try:  # batches nobody will use: skip them
                while True:
                    self._tasks.get_nowait()
            except (queue.Empty, OSError, EOFError):
                pass
            for _ in procs:
                self._tasks.put(None)
            deadline = time.monotonic() + 5.0
            for proc in procs:
                proc.join(timeout=max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=1.0)
        self._pending.clear()
        self._ready.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
