"""The backend server: reads requests from stdin, answers on stdout, logs to stderr.

Threads:

* the **main thread** reads lines; it answers the cheap ops itself (``status``, ``job_start``,
  ``job_cancel``, ``job_status``, ``shutdown``), so they answer even while a render runs;
* the **request thread** serves every other op in arrival order (loading, rig, render, export,
  release): two renders never overlap, and a render's shared-memory slot is not rewritten
  before the client asked for the next frame;
* the **job thread** runs one job at a time (``backend.server.jobs``).

Renders are served while a job runs: both threads use the same device (torch releases the
GIL in its kernels); a render then takes longer, and on a GPU both share its memory, which is
fine for avatar sizes. Replies can therefore come out of order: match them by id.
"""

from __future__ import annotations

import atexit
import logging
import os
import platform
import queue
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .. import __version__
from .. import protocol as P
from .errors import classify
from .jobs import JobManager
from .shm import ShmPool

log = logging.getLogger("backend.server")

INLINE_OPS = frozenset({"status", "job_start", "job_cancel", "job_status", "shutdown"})


class _Terminate(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT / SIGHUP."""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def system_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _file_stamp(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _matrix(value: Any, shape: tuple, what: str) -> np.ndarray:
    """A list (nested or flat) of finite numbers as a float64 array of `shape`."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise P.ProtocolError(P.BAD_REQUEST, f"{what} must be a {'×'.join(map(str, shape))} array of numbers") from None
    size = int(np.prod(shape))
    if arr.size != size or (arr.shape != shape and arr.ndim != 1):
        raise P.ProtocolError(P.BAD_REQUEST, f"{what} must have shape {'×'.join(map(str, shape))} "
                              f"(nested or flat); got shape {'×'.join(map(str, arr.shape)) or 'scalar'}")
    arr = arr.reshape(shape)
    if not np.isfinite(arr).all():
        raise P.ProtocolError(P.BAD_REQUEST, f"{what} contains NaN or infinite values")
    if arr.size and np.abs(arr).max() > P.MAX_MAGNITUDE:
        raise P.ProtocolError(P.BAD_REQUEST, f"{what} holds {np.abs(arr).max():.4g}; its numbers must lie within "
                              f"±{P.MAX_MAGNITUDE:g}")
    return arr


def _handle(value: Any, what: str) -> int:
    if not P.type_ok(value, "int"):
        raise P.ProtocolError(P.BAD_REQUEST, f"{what} must be an integer handle")
    return int(value)


class Services:
    """What handlers and jobs share: the device, body models and loaded avatars / objects."""

    def __init__(self, device: str = "auto", smplx: str | None = None) -> None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
            if self.device.type == "cuda":
                if not torch.cuda.is_available():
                    raise RuntimeError("CUDA is not available to this torch build")
                torch.zeros(1, device=self.device)
        except (RuntimeError, ValueError) as exc:
            log.warning("device %r cannot be used (%s); using the CPU", device, exc)
            self.device = torch.device("cpu")
        self.smplx = smplx or os.environ.get("DREAMWALTZ_SMPLX") or None
        self._bodies: dict[str, Any] = {}
        self._lock = threading.RLock()
        self.avatars: dict[int, dict] = {}
        self.objects: dict[int, dict] = {}
        self._by_path: dict[tuple[str, str], int] = {}
        self._next_handle = 0

    # ---- device --------------------------------------------------------------------------
    def rasterizer(self) -> str:
        from ..render import available_backends

        return "gsplat" if self.device.type == "cuda" and "gsplat" in available_backends() else "torch"

    def device_info(self) -> dict:
        import torch

        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                    "index": self.device.index or 0}
        return {"type": "cpu", "name": cpu_name(), "memory_bytes": system_memory(),
                "threads": torch.get_num_threads()}

    # ---- body models ---------------------------------------------------------------------
    def body_model(self, kind: str | None = None) -> Any:
        """The body model of `kind` ("template" or "smplx"); default: SMPL-X when configured."""
        from ..body import BodyModel
        from ..body.template import cached_template_path

        kind = kind or ("smplx" if self.smplx else "template")
        with self._lock:
            if kind not in self._bodies:
                if kind == "template":
                    self._bodies[kind] = BodyModel(cached_template_path(), device=self.device)
                else:
                    self._bodies[kind] = BodyModel.load(self.smplx, self.device)
            return self._bodies[kind]

    def load_avatar_object(self, path: str | os.PathLike) -> Any:
        """Read an avatar folder with the matching (cached) body model; not registered."""
        from ..avatar import load_avatar, read_meta

        meta = read_meta(path)
        kind = meta.get("body_model", {}).get("kind")
        body = None
        if kind == "template":
            body = self.body_model("template")
        elif kind == "smplx" and self.smplx:
            body = self.body_model("smplx")
        return load_avatar(path, body=body, device=self.device)

    # ---- handles -------------------------------------------------------------------------
    def _new_handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    def cached_handle(self, table: str, path: Path, stamp_file: Path) -> int | None:
        with self._lock:
            handle = self._by_path.get((table, str(path)))
            entries = self.avatars if table == "avatar" else self.objects
            if handle is not None and handle in entries and entries[handle]["stamp"] == _file_stamp(stamp_file):
                return handle
            return None

    def register(self, table: str, path: Path, stamp_file: Path, entry: dict) -> int:
        with self._lock:
            entries = self.avatars if table == "avatar" else self.objects
            handle = self._by_path.get((table, str(path)))
            if handle is None or handle not in entries:
                handle = self._new_handle()
            entry.update(path=str(path), stamp=_file_stamp(stamp_file))
            entries[handle] = entry
            self._by_path[(table, str(path))] = handle
            return handle

    def unregister(self, table: str, handle: int) -> None:
        with self._lock:
            entries = self.avatars if table == "avatar" else self.objects
            entry = entries.pop(handle, None)
            if entry is None:
                word = "avatar" if table == "avatar" else "static object"
                raise P.ProtocolError(P.NOT_FOUND, f"there is no {word} with handle {handle} (already unloaded, "
                                      "or loaded by an earlier backend process)")
            self._by_path.pop((table, entry["path"]), None)

    def _lookup(self, table: dict, handle: Any, what: str, loader: str) -> dict:
        handle = _handle(handle, what.split()[-1])
        with self._lock:
            entry = table.get(handle)
        if entry is None:
            raise P.ProtocolError(P.NOT_FOUND, f"there is no {what} with handle {handle} (load it with {loader}; "
                                  "handles do not survive a backend restart)")
        return entry

    def avatar(self, handle: Any) -> Any:
        return self._lookup(self.avatars, handle, "avatar", "load_avatar")["avatar"]

    def static_object(self, handle: Any) -> Any:
        return self.object_entry(handle)["gaussians"]

    def object_entry(self, handle: Any) -> dict:
        return self._lookup(self.objects, handle, "static object", "load_ply")


class Server:
    def __init__(self, stdin: BinaryIO, stdout: BinaryIO, device: str = "auto", smplx: str | None = None) -> None:
        self._in = stdin
        self._out = stdout
        self._out_lock = threading.Lock()
        self.services = Services(device, smplx)
        self.pool = ShmPool()
        self.jobs = JobManager(self.services, self.emit)
        self._requests: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._serve_requests, name="dreamwaltz-requests", daemon=True)
        self._started = time.monotonic()
        self._shutting_down = False
        self._cleaned = False
        self._current_op: str | None = None
        atexit.register(self._cleanup)

    # ---- output ----------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        try:
            data = P.encode(message)
        except (TypeError, ValueError, RecursionError) as exc:
            text = f"internal error: the message could not be encoded ({str(exc)[:200]})"
            if "event" in message:
                log.error("cannot encode the event %r: %s", message.get("event"), exc)
                job = message.get("job") if P.type_ok(message.get("job"), "int") else None
                data = P.encode(P.event(str(message.get("event"))[:40], job, error={"code": P.INTERNAL, "message": text}))
            else:
                log.error("cannot encode a message for op reply %r: %s", message.get("id"), exc)
                data = P.encode(P.reply_error(message.get("id"), P.INTERNAL, text))
        with self._out_lock:
            try:
                self._out.write(data)
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                # the client is gone: nobody reads us any more
                log.warning("stdout is closed; the client has gone away")

    def emit(self, event: dict) -> None:
        self.send(event)

    # ---- ops --------------------------------------------------------------------------------
    @classmethod
    def list_ops(cls) -> list[str]:
        return sorted(name[3:] for name in dir(cls) if name.startswith("op_"))

    def op_hello(self, msg: dict) -> dict:
        from ..render import available_backends
        from .jobs import job_kinds

        try:
            body = self.services.body_model()
            body_info = dict(body.identity, num_betas=body.num_betas, num_expression=body.num_expression)
        except Exception as exc:  # noqa: BLE001 - a bad SMPL-X path must not stop the handshake
            code, message = classify(exc)
            log.warning("the body model cannot be loaded: %s", message)
            body_info = {"error": {"code": code, "message": message}}
        return {"protocol_version": P.PROTOCOL_VERSION, "backend_version": __version__,
                "pid": os.getpid(), "shm_prefix": self.pool.prefix,
                "device": self.services.device_info(), "rasterizer": self.services.rasterizer(),
                "rasterizers": available_backends(),
                "body_model": body_info,
                "job_kinds": job_kinds(), "python": sys.executable,
                "torch_version": __import__("torch").__version__}

    def op_status(self, msg: dict) -> dict:
        s = self.services
        with s._lock:
            avatars = [{"avatar": h, "name": e["name"], "path": e["path"], "num_gaussians": e["num_gaussians"]}
                       for h, e in s.avatars.items()]
            objects = [{"object": h, "path": e["path"], "num_gaussians": e["num_gaussians"]}
                       for h, e in s.objects.items()]
        return {"pid": os.getpid(), "uptime": round(time.monotonic() - self._started, 3),
                "device": str(s.device), "avatars": avatars, "objects": objects,
                "jobs": self.jobs.status(), "blocks": self.pool.describe(),
                "requests_pending": self._requests.qsize(), "serving": self._current_op}

    def op_shutdown(self, msg: dict) -> dict:  # handled in run(); listed here for list_ops
        return {}

    def op_load_avatar(self, msg: dict) -> dict:
        from ..avatar import read_meta

        path = Path(P.absolute_path(msg["path"], "the field 'path'"))
        if not path.exists():
            raise P.ProtocolError(P.NOT_FOUND, f"the avatar folder {path} does not exist")
        path = path.resolve()
        stamp = path / "avatar.json"
        handle = None if msg.get("reload") else self.services.cached_handle("avatar", path, stamp)
        cached = handle is not None
        if handle is None:
            avatar = self.services.load_avatar_object(path)
            handle = self.services.register("avatar", path, stamp, {
                "avatar": avatar, "name": avatar.meta.name, "num_gaussians": avatar.num_gaussians})
        avatar = self.services.avatar(handle)
        meta = read_meta(path)
        return {"avatar": handle, "cached": cached, "name": avatar.meta.name, "path": str(path),
                "num_gaussians": avatar.num_gaussians, "num_expression": avatar.body.num_expression,
                "num_betas": avatar.body.num_betas, "meta": meta}

    def op_unload_avatar(self, msg: dict) -> dict:
        self.services.unregister("avatar", msg["avatar"])
        return {"avatar": msg["avatar"]}

    def op_rig(self, msg: dict) -> dict:
        import torch

        avatar = self.services.avatar(msg["avatar"])
        body = avatar.body
        rest = body.rest_joints(avatar.betas).detach().cpu().numpy().astype(np.float32)
        verts, faces = body.template_mesh(avatar.betas)
        weights = body.skinning_weights.detach()
        top_w, top_j = torch.topk(weights, 4, dim=1)
        top_w = top_w / top_w.sum(1, keepdim=True).clamp_min(1e-12)
        V, F = int(verts.shape[0]), int(faces.shape[0])
        block, specs, views = self.pool.allocate(msg.get("slot") or "rig", [
            ("rest_joints", "float32", (P.NUM_JOINTS, 3)), ("vertices", "float32", (V, 3)),
            ("faces", "int32", (F, 3)), ("skin_joints", "int32", (V, 4)), ("skin_weights", "float32", (V, 4))])
        views["rest_joints"][...] = rest
        views["vertices"][...] = verts
        views["faces"][...] = faces
        views["skin_joints"][...] = top_j.cpu().numpy()
        views["skin_weights"][...] = top_w.cpu().numpy()
        return {"avatar": msg["avatar"], "joint_names": list(body.joint_names), "parents": body.parents.tolist(),
                "num_expression": body.num_expression, "num_betas": body.num_betas,
                "betas": [float(b) for b in avatar.betas.detach().cpu()],
                "body_model": body.identity, "num_vertices": V, "num_faces": F,
                "slot": msg.get("slot") or "rig", "block": block.name, "arrays": specs}

    def op_load_ply(self, msg: dict) -> dict:
        from ..gsio import detect_format, read_gaussians

        path = Path(P.absolute_path(msg["path"], "the field 'path'"))
        if not path.is_file():
            raise P.ProtocolError(P.NOT_FOUND, f"the Gaussian file {path} does not exist")
        path = path.resolve()
        handle = None if msg.get("reload") else self.services.cached_handle("object", path, path)
        cached = handle is not None
        if handle is None:
            splats = read_gaussians(path)
            g = splats.to_gaussian_set(self.services.device)
            handle = self.services.register("object", path, path, {
                "gaussians": g, "num_gaussians": len(g), "format": detect_format(path), "up": splats.up})
        entry = self.services.object_entry(handle)
        g = entry["gaussians"]
        lo = g.means.min(0).values.tolist() if len(g) else [0.0] * 3
        hi = g.means.max(0).values.tolist() if len(g) else [0.0] * 3
        return {"object": handle, "cached": cached, "path": str(path), "num_gaussians": len(g),
                "bounds": {"min": lo, "max": hi}, "format": entry["format"], "up": entry["up"],
                "sh_degree": g.sh_degree}

    def op_unload(self, msg: dict) -> dict:
        self.services.unregister("object", msg["object"])
        return {"object": msg["object"]}

    def op_render(self, msg: dict) -> dict:
        from .render_ops import render_frame

        return render_frame(self.services, self.pool, msg)

    def op_export_ply(self, msg: dict) -> dict:
        from ..avatar import pose_with_params, pose_with_transforms
        from ..gsio import GaussianFileError, Splats, format_for_path, write_gaussians

        path = Path(P.absolute_path(msg["path"], "the field 'path'"))
        try:
            fmt = format_for_path(path)
        except GaussianFileError as exc:
            raise P.ProtocolError(P.BAD_REQUEST, f"export_ply: {exc}") from None
        avatar = self.services.avatar(msg["avatar"])
        if msg.get("transforms") is not None:
            t = _matrix(msg["transforms"], (P.NUM_JOINTS, 4, 4), "transforms")
            expr = None if msg.get("expression") is None else _matrix(msg["expression"], (len(msg["expression"]),), "expression")
            rots = None if msg.get("local_rotations") is None else _matrix(msg["local_rotations"], (P.NUM_JOINTS, 3, 3), "local_rotations")
            g = pose_with_transforms(avatar, t, expr, rots)
            posed = True
        else:
            g = pose_with_params(avatar)
            posed = False
        write_gaussians(path, Splats.from_gaussian_set(g.detach().to("cpu"), up="y"), fmt)
        return {"path": str(path.resolve()), "num_gaussians": len(g), "posed": posed, "format": fmt}

    def op_load_motion(self, msg: dict) -> dict:
        from .motion_ops import load_motion_op

        return load_motion_op(self.services, self.pool, msg)

    def op_shape(self, msg: dict) -> dict:
        from .shape_ops import shape_op

        return shape_op(self.services, self.pool, msg)

    def op_release(self, msg: dict) -> dict:
        if msg.get("all"):
            return {"released": self.pool.release(None)}
        slot = msg.get("slot")
        if slot is None:
            raise P.ProtocolError(P.BAD_REQUEST, "release needs \"slot\" (a slot name) or \"all\": true")
        return {"released": self.pool.release(P.check_slot(slot))}

    def op_job_start(self, msg: dict) -> dict:
        return self.jobs.start(msg["kind"], msg.get("params") or {})

    def op_job_cancel(self, msg: dict) -> dict:
        return self.jobs.cancel(msg["job"])

    def op_job_status(self, msg: dict) -> dict:
        return self.jobs.status(msg.get("job"))

    # ---- dispatch ------------------------------------------------------------------------
    def _call(self, rid: int, op: str, msg: dict) -> None:
        t0 = time.perf_counter()
        try:
            result = getattr(self, "op_" + op)(msg)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            code, message = classify(exc)
            if code == P.INTERNAL:
                log.error("op %s (id %s) failed:\n%s", op, rid, traceback.format_exc())
            else:
                log.info("op %s (id %s): %s: %s", op, rid, code, message)
            self.send(P.reply_error(rid, code, message))
            return
        t1 = time.perf_counter()
        self.send(P.reply_ok(rid, **result))
        del result
        if log.isEnabledFor(logging.DEBUG):
            t2 = time.perf_counter()
            log.debug("op %s (id %s): waited %.2f ms, handled %.2f ms, replied %.2f ms", op, rid,
                      (t0 - msg.get("__received", t0)) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def _serve_requests(self) -> None:
        import torch

        with torch.no_grad():
            while True:
                item = self._requests.get()
                if item is None:
                    return
                rid, op, msg = item
                if self._shutting_down:
                    self.send(P.reply_error(rid, P.SHUTTING_DOWN, "the backend is shutting down"))
                    continue
                self._current_op = op
                try:
                    self._call(rid, op, msg)
                except BaseException as exc:  # noqa: BLE001 - SystemExit & co. from a handler: this thread serves on
                    self._last_resort(rid, op, exc)
                finally:
                    self._current_op = None

    def _last_resort(self, rid: Any, op: str, exc: BaseException) -> None:
        """What escaped every other handler (a SystemExit from a library, a failing reply) still
        gets an error reply; the thread that caught it keeps serving."""
        log.error("op %s (id %s): %s escaped its handler:\n%s", op, rid, type(exc).__name__, traceback.format_exc())
        try:
            self.send(P.reply_error(rid, P.INTERNAL, f"internal error ({type(exc).__name__}: {str(exc)[:200]}); "
                                    "the backend log has the details"))
        except Exception:  # noqa: BLE001 - nothing more can be done for this request
            pass

    def handle_line(self, line: bytes) -> dict | None:
        """Handle one request line; returns the shutdown request when the line asks for it.
        Never raises (but for the termination signals): every line gets its reply."""
        rid: Any = None
        op = "?"
        try:
            msg = P.decode(line)
            rid = msg.get("id") if isinstance(msg.get("id"), int) and not isinstance(msg.get("id"), bool) else None
            rid, op = P.validate_request(msg)
            if op == "shutdown":
                return msg
            msg["__received"] = time.perf_counter()
            if op in INLINE_OPS:
                self._call(rid, op, msg)
            else:
                self._requests.put((rid, op, msg))
        except P.ProtocolError as exc:
            self.send(P.reply_error(exc.request_id if exc.request_id is not None else rid, exc.code, exc.message))
        except _Terminate:
            raise
        except BaseException as exc:  # noqa: BLE001 - the main thread must keep reading
            self._last_resort(rid, op, exc)
        return None

    def _read_lines(self):
        limit = P.MAX_LINE_BYTES
        while True:
            line = self._in.readline(limit + 1)
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                while True:  # skip the rest of the oversized line
                    rest = self._in.readline(1 << 20)
                    if not rest or rest.endswith(b"\n"):
                        break
                self.send(P.reply_error(None, P.BAD_REQUEST, f"request line longer than {limit} bytes"))
                continue
            yield line

    def run(self) -> int:
        """Serve until shutdown, end of input or a termination signal; returns the exit code."""
        self._install_signals()
        self._worker.start()
        log.info("backend %s serving on %s (pid %d, protocol %d)", __version__, self.services.device,
                 os.getpid(), P.PROTOCOL_VERSION)
        code = 0
        shutdown_msg = None
        try:
            for line in self._read_lines():
                if not line.strip():
                    continue
                shutdown_msg = self.handle_line(line)
                if shutdown_msg is not None:
                    break
            else:
                log.info("stdin closed: shutting down")
        except _Terminate as exc:
            log.info("terminated by %s: shutting down", exc.args[0] if exc.args else "a signal")
            code = 128 + (exc.args[1] if len(exc.args) > 1 else signal.SIGTERM)
            self._shutdown(wait=5.0, drain=False)
            return code
        wait = 10.0
        if shutdown_msg is not None and P.type_ok(shutdown_msg.get("wait"), "number"):
            wait = min(max(0.0, float(shutdown_msg["wait"])), P.MAX_SHUTDOWN_WAIT)
        self._shutdown(wait=wait, reply_to=None if shutdown_msg is None else shutdown_msg.get("id"))
        return code

    def _shutdown(self, wait: float, reply_to: int | None = None, drain: bool = True) -> None:
        """Cancel the job (it may checkpoint for up to `wait` s), serve the requests that came
        before the shutdown (unless `drain` is false), unlink all blocks, answer, return."""
        if not drain:
            self._shutting_down = True
        self._requests.put(None)
        self.jobs.stop(wait)
        self._worker.join(max(wait, 1.0))
        self._shutting_down = True
        self._cleanup()
        if reply_to is not None:
            self.send(P.reply_ok(reply_to, released=True))

    def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        removed = self.pool.release(None)
        if removed:
            log.info("unlinked %d shared-memory blocks", len(removed))

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            raise _Terminate(signal.Signals(signum).name, signum)

        for sig in ("SIGTERM", "SIGINT", "SIGHUP"):
            if hasattr(signal, sig):
                signal.signal(getattr(signal, sig), handler)
