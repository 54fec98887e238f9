"""Jobs: long work (training, batch rendering) that streams progress and can be cancelled.

A job kind is registered with ``register_job_kind(name, factory)``. The factory is called on
the request thread with the job's params and the server's ``Services``; it checks the params
(raise ``JobParamError`` for a bad one: the ``job_start`` request then fails at once) and
returns the work, a callable ``run(ctx: JobContext) -> dict | None`` that the job thread
calls. ``run`` reports with ``ctx.progress(...)``, calls ``ctx.check_cancel()`` between steps
(it raises ``JobCancelled``; save a checkpoint first, or catch it, save, and re-raise), and
returns a JSON-able result. ``params["resume"] is True`` asks it to continue from the last
checkpoint in its output folder (``ctx.out_dir``).

One job runs at a time (one device); others wait in a FIFO queue that ``status`` shows.
Kinds not registered yet are looked up in ``LAZY_KINDS`` ("module:function") on first use:
the training engineer's ``backend/train/job.py`` only has to define ``make_train_job``.
"""

from __future__ import annotations

import collections
import importlib
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .. import protocol as P

log = logging.getLogger("backend.server.jobs")

JobRun = Callable[["JobContext"], Any]
JobFactory = Callable[[dict, Any], JobRun]

_REGISTRY: dict[str, JobFactory] = {}
LAZY_KINDS: dict[str, str] = {
    "render_motion": "backend.server.render_job:make_render_motion_job",
    "selftest": "backend.server.render_job:make_selftest_job",
    "train": "backend.train.job:make_train_job",
}


PATH_PARAMS = ("out", "avatar_path", "motion", "body_model")
"""Job parameters that name files or folders: they must be absolute paths."""


class JobParamError(ValueError):
    """A job parameter that cannot be used; the job is refused before it is queued."""


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancel`` when the job was cancelled. A job may pass a
    result (e.g. the checkpoint it saved) as ``JobCancelled(result={...})``."""

    def __init__(self, result: Any = None) -> None:
        super().__init__("cancelled")
        self.result = result


class JobFailed(Exception):
    """A failure the job wants reported with a specific error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _encodable(value: Any) -> bool:
    try:
        P.encode({"value": value})
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def register_job_kind(name: str, factory: JobFactory | str) -> None:
    """Make `name` a job kind; `factory(params, services) -> run(ctx)`, or a "module:function"
    string resolved on first use."""
    if isinstance(factory, str):
        LAZY_KINDS[name] = factory
        _REGISTRY.pop(name, None)
    else:
        _REGISTRY[name] = factory


def job_kinds() -> list[str]:
    return sorted(set(_REGISTRY) | set(LAZY_KINDS))


def resolve_kind(name: str) -> JobFactory:
    if name in _REGISTRY:
        return _REGISTRY[name]
    target = LAZY_KINDS.get(name)
    if target is None:
        raise P.ProtocolError(P.BAD_REQUEST, f"unknown job kind {name[:40]!r}; known kinds: {', '.join(job_kinds())}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise P.ProtocolError(P.UNAVAILABLE, f"the job kind {name!r} is not available in this backend "
                                  f"({module_name} is not installed or not written yet)") from None
        raise P.ProtocolError(P.UNAVAILABLE, f"the job kind {name!r} needs the Python package "
                              f"{exc.name!r}, which the backend's interpreter does not have") from None
    if name in _REGISTRY:  # the module registered itself on import
        return _REGISTRY[name]
    factory = getattr(module, attr, None)
    if factory is None:
        raise P.ProtocolError(P.UNAVAILABLE, f"the job kind {name!r} is not available ({target} is missing)")
    _REGISTRY[name] = factory
    return factory


class JobContext:
    """What a running job sees: its params, output folder, progress reporting and cancel flag."""

    def __init__(self, job: "Job", manager: "JobManager") -> None:
        self._job = job
        self._manager = manager
        self.job_id = job.id
        self.kind = job.kind
        self.params = job.params
        self.services = manager.services
        out = job.params.get("out")
        self.out_dir: Path | None = Path(out) if isinstance(out, str) and out else None
        self.resume = bool(job.params.get("resume", False))
        self._stage: str | None = None
        self._stage_t0 = 0.0
        self._stage_step0 = 0

    @property
    def checkpoint_dir(self) -> Path | None:
        """``<out>/checkpoints`` (a convention; jobs may keep checkpoints elsewhere in out)."""
        return None if self.out_dir is None else self.out_dir / "checkpoints"

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_event.is_set()

    def check_cancel(self) -> None:
        if self._job.cancel_event.is_set():
            raise JobCancelled()

    def progress(self, stage: str, step: int, total: int, loss: float | None = None,
                 preview: str | None = None, **extra: Any) -> None:
        """Report progress; stage changes restart the ETA estimate. Emits ``job_progress``."""
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_t0, self._stage_step0 = stage, now, int(step)
        done = int(step) - self._stage_step0
        eta = None
        if done > 0 and total:
            eta = (now - self._stage_t0) / done * max(int(total) - int(step), 0)
        elapsed = now - self._job.started
        fields: dict[str, Any] = {"stage": stage, "step": int(step), "total": int(total),
                                  "elapsed": round(elapsed, 3), "eta": None if eta is None else round(eta, 3)}
        if loss is not None:
            fields["loss"] = float(loss) if loss == loss and abs(float(loss)) != float("inf") else None
        if preview is not None:
            fields["preview"] = str(preview)
        fields.update(extra)
        if not _encodable(fields):
            log.warning("job %d (%s): progress fields that are not JSON were dropped: %s", self._job.id, self.kind,
                        sorted(extra))
            fields = {k: v for k, v in fields.items() if k not in extra}
        self._job.progress = fields
        self._manager.emit(P.event("job_progress", self._job.id, **fields))

    def emit(self, name: str, **fields: Any) -> None:
        """Send another event for this job (documented by the job kind)."""
        self._manager.emit(P.event(name, self._job.id, **fields))

    def log(self, message: str, *args: Any) -> None:
        log.info("job %d (%s): " + message, self._job.id, self.kind, *args)


class Job:
    def __init__(self, job_id: int, kind: str, params: dict, run: JobRun) -> None:
        self.id = job_id
        self.kind = kind
        self.params = params
        self.run = run
        self.state = "queued"
        self.cancel_event = threading.Event()
        self.created = time.time()
        self.started = 0.0
        self.finished_at: float | None = None
        self.progress: dict | None = None
        self.result: Any = None
        self.error: dict | None = None

    def describe(self) -> dict:
        out: dict[str, Any] = {"job": self.id, "kind": self.kind, "state": self.state, "params": self.params}
        if self.progress is not None:
            out["progress"] = self.progress
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class JobManager:
    """One worker thread runs jobs one after another from a FIFO queue."""

    KEEP_FINISHED = 50

    def __init__(self, services: Any, emit: Callable[[dict], None]) -> None:
        self.services = services
        self.emit = emit
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}
        self._current: Job | None = None
        self._next_id = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="dreamwaltz-jobs", daemon=True)
        self._thread.start()

    # ---- requests ------------------------------------------------------------------------
    def start(self, kind: str, params: dict) -> dict:
        factory = resolve_kind(kind)
        params = dict(params)
        for name in PATH_PARAMS:
            if params.get(name) is not None:
                params[name] = P.absolute_path(params[name], f"job {kind!r}: the parameter {name!r}")
        try:
            run = factory(dict(params), self.services)
        except JobParamError as exc:
            raise P.ProtocolError(P.BAD_REQUEST, f"job {kind!r}: {exc}") from None
        with self._lock:
            if self._stopping:
                raise P.ProtocolError(P.SHUTTING_DOWN, "the backend is shutting down and takes no new jobs")
            self._next_id += 1
            job = Job(self._next_id, kind, dict(params), run)
            self._jobs[job.id] = job
            self._queue.append(job)
            position = len(self._queue) - 1 + (self._current is not None)
            self._trim()
            self._wake.notify()
        self.emit(P.event("job_queued", job.id, kind=kind, position=position))
        return {"job": job.id, "state": job.state, "position": position}

    def cancel(self, job_id: int) -> dict:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise P.ProtocolError(P.NOT_FOUND, f"there is no job {job_id}")
            if job.state == "queued":
                self._queue.remove(job)
                job.state = "cancelled"
                job.finished_at = time.time()
                self.emit(P.event("job_cancelled", job.id, result=None, elapsed=0.0))
            elif job.state == "running":
                job.state = "cancelling"
                job.cancel_event.set()
            return job.describe()

    def status(self, job_id: int | None = None) -> dict:
        with self._lock:
            if job_id is not None:
                job = self._jobs.get(job_id)
                if job is None:
                    raise P.ProtocolError(P.NOT_FOUND, f"there is no job {job_id}")
                return job.describe()
            return {"running": None if self._current is None else self._current.describe(),
                    "queue": [j.describe() for j in self._queue],
                    "finished": [j.describe() for j in self._jobs.values()
                                 if j.state in ("done", "failed", "cancelled")],
                    "kinds": job_kinds()}

    def stop(self, wait: float) -> None:
        """Refuse new jobs, drop the queue, cancel the running job and wait for it to end."""
        with self._lock:
            self._stopping = True
            queued = list(self._queue)
            self._queue.clear()
            current = self._current
            self._wake.notify()
        for job in queued:
            job.state = "cancelled"
            self.emit(P.event("job_cancelled", job.id, result=None, elapsed=0.0))
        if current is not None:
            current.state = "cancelling"
            current.cancel_event.set()
            self._thread.join(wait)

    # ---- worker --------------------------------------------------------------------------
    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in ("done", "failed", "cancelled")]
        for job in finished[:-self.KEEP_FINISHED]:
            del self._jobs[job.id]

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self._current = job
                job.state = "running"
                job.started = time.monotonic()
            try:
                self._run(job)
            except BaseException as exc:  # noqa: BLE001 - SystemExit & co.: report it, keep running jobs
                log.error("job %d (%s): %s escaped:\n%s", job.id, job.kind, type(exc).__name__, traceback.format_exc())
                if job.state in ("running", "cancelling"):
                    self._finish(job, "failed", "job_failed", error={
                        "code": P.JOB_ERROR, "message": f"the job stopped with {type(exc).__name__}: {str(exc)[:200]}"})
            with self._lock:
                self._current = None

    def _run(self, job: Job) -> None:
        try:
            self.emit(P.event("job_started", job.id, kind=job.kind))
            ctx = JobContext(job, self)
            log.info("job %d (%s) started", job.id, job.kind)
            result = job.run(ctx)
        except JobCancelled as exc:
            self._finish(job, "cancelled", "job_cancelled", result=exc.result)
        except JobFailed as exc:
            self._finish(job, "failed", "job_failed", error={"code": exc.code, "message": exc.message})
        except P.ProtocolError as exc:
            self._finish(job, "failed", "job_failed", error={"code": exc.code, "message": exc.message})
        except Exception as exc:  # noqa: BLE001 - reported to the client, traceback in the log
            from .errors import classify

            code, message = classify(exc)
            log.error("job %d (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            self._finish(job, "failed", "job_failed", error={"code": code if code != P.INTERNAL else P.JOB_ERROR,
                                                             "message": message})
        else:
            if job.cancel_event.is_set():
                self._finish(job, "cancelled", "job_cancelled", result=result)
            else:
                self._finish(job, "done", "job_done", result=result)

    def _finish(self, job: Job, state: str, event_name: str, result: Any = None, error: dict | None = None) -> None:
        if not _encodable(result):   # kept for status replies: it must encode, now and later
            log.error("job %d (%s) returned a result that is not JSON: %.200r", job.id, job.kind, result)
            state, event_name, result = "failed", "job_failed", None
            error = {"code": P.JOB_ERROR, "message": "the job's result is not JSON (finite numbers, strings, "
                     "lists and objects only); the backend log has it"}
        job.state = state
        job.result = result
        job.error = error
        job.finished_at = time.time()
        elapsed = round(time.monotonic() - job.started, 3)
        log.info("job %d (%s) %s after %.1f s", job.id, job.kind, state, elapsed)
        fields: dict[str, Any] = {"elapsed": elapsed}
        if error is not None:
            fields["error"] = error
        else:
            fields["result"] = result
        self.emit(P.event(event_name, job.id, **fields))

