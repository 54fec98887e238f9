"""The add-on's side of the backend process (DESIGN.md §2): start it, talk to it, survive it.

stdlib + numpy only, and no ``bpy`` at import time: this module imports in Blender's Python,
in plain Python (tests, render-node scripts) and never loads torch. The protocol module is
read by its file path from the backend source (``backend_root()``) without touching sys.path.

Use::

    client = BackendClient()                 # nothing starts yet
    info = client.request("hello")           # starts the backend lazily, blocks for the answer
    fut = client.submit("load_avatar", path=folder)   # non-blocking: a Future
    frame = client.render(camera=..., width=..., height=..., avatars=[...])  # numpy arrays
    for ev in client.poll_events(): ...      # progress events; call from a bpy.app.timers function

Errors are ``BackendError(code, message)``. If the backend dies, every request in flight
fails with one ``backend_died`` error that carries the last lines of its log; the next request
starts a fresh backend (handles from the old one are gone: see ``generation``).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import importlib.util
import itertools
import json
import logging
import mmap
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

log = logging.getLogger("dreamwaltz.client")

ENV_PYTHON = "DREAMWALTZ_PYTHON"
CLIENT_NAME = "dreamwaltz_blender"
LOG_TAIL_LINES = 20
DEFAULT_TIMEOUT = 60.0
OP_TIMEOUTS = {"hello": 180.0, "load_avatar": 300.0, "load_ply": 300.0, "rig": 120.0, "render": 300.0,
               "export_ply": 300.0, "shutdown": 60.0}


class BackendError(RuntimeError):
    """A request that failed: ``code`` is a protocol error word, ``message`` a sentence for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


# ---- finding the backend source and its protocol ------------------------------------------
def backend_root() -> Path:
    """The folder that holds the ``backend`` package: ``backend_src`` inside the add-on (the
    built extension) or the repository root above ``dreamwaltz_blender`` (a checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "backend_src", here.parent):
        if (candidate / "backend" / "protocol.py").is_file():
            return candidate
    raise BackendError("start_failed", f"the backend source is missing: neither {here / 'backend_src'} nor "
                       f"{here.parent} holds backend/protocol.py (reinstall the add-on)")


_PROTOCOL: Any = None
_PROTOCOL_LOCK = threading.Lock()


def load_protocol() -> Any:
    """``backend/protocol.py`` as a module, loaded by file path (not registered in sys.modules,
    sys.path untouched)."""
    global _PROTOCOL
    with _PROTOCOL_LOCK:
        if _PROTOCOL is None:
            path = backend_root() / "backend" / "protocol.py"
            spec = importlib.util.spec_from_file_location("_dreamwaltz_protocol", path)
            if spec is None or spec.loader is None:
                raise BackendError("start_failed", f"cannot load the protocol from {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _PROTOCOL = module
        return _PROTOCOL


# ---- which interpreter ---------------------------------------------------------------------
def venv_python(venv: str | os.PathLike) -> Path:
    """The interpreter of a virtual environment folder (POSIX or Windows layout)."""
    venv = Path(venv)
    for rel in ("bin/python3", "bin/python", "Scripts/python.exe"):
        if (venv / rel).exists():
            return venv / rel
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def resolve_python(python: str | os.PathLike | None = None,
                   venv: str | os.PathLike | None = None) -> tuple[str, str]:
    """(interpreter, where it came from): the add-on preference, else $DREAMWALTZ_PYTHON, else
    the backend environment that set-up made (`venv`, when it exists), else this Python."""
    if python:
        return str(Path(python).expanduser()), "the add-on preferences"
    env = os.environ.get(ENV_PYTHON)
    if env:
        return str(Path(env).expanduser()), f"${ENV_PYTHON}"
    if venv:
        candidate = venv_python(Path(venv).expanduser())
        if candidate.exists():
            return str(candidate), f"the backend environment {venv}"
    return sys.executable, "Blender's own Python" if "bpy" in sys.modules else "this Python (sys.executable)"


def blocking_allowed() -> bool:
    """True where blocking calls are fine: outside Blender, or Blender in background mode."""
    bpy = sys.modules.get("bpy")
    return bpy is None or bool(getattr(getattr(bpy, "app", None), "background", True))


# ---- the backend's log ---------------------------------------------------------------------------
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _private(folder: Path) -> bool:
    """True when `folder` is a real folder (not a link) that only this user can enter."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if os.name != "posix":
        return True
    if st.st_uid != os.getuid():
        return False
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return True


def private_log_dir() -> Path:
    """The folder for backend logs: ``<user cache>/dreamwaltz/logs`` (XDG_CACHE_HOME or ~/.cache;
    LOCALAPPDATA on Windows), 0700 and owned by this user. A shared temp folder would let anyone
    plant a symlink where the log goes; where the user folder cannot be used, a fresh private
    temporary folder is."""
    base = os.environ.get("LOCALAPPDATA") if os.name == "nt" else None
    base = base or os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "dreamwaltz" / "logs"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        pass
    if _private(folder):
        return folder
    log.warning("the log folder %s is not a private folder of this user; using a temporary one", folder)
    return Path(tempfile.mkdtemp(prefix="dreamwaltz-logs-"))


def open_log(path: Path) -> Any:
    """A new log file at `path`, the previous one kept as ``*.previous.log``; never written
    through a symbolic link (whatever was at the path is moved aside, then the file is created
    exclusively, without following links)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        os.replace(path, path.with_suffix(".previous.log"))   # moves a link itself, never its target
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0), 0o600)
    return os.fdopen(fd, "wb")


# ---- shared memory, without the resource tracker ---------------------------------------------
try:  # the C module behind multiprocessing.shared_memory on POSIX
    import _posixshmem  # type: ignore
except ImportError:  # Windows (no tracker there), or an unusual build
    _posixshmem = None


class _Mapping:
    """A read-only view of a block the server created. On POSIX it is opened with shm_open and
    mmap directly, so Python's resource_tracker never hears of it (attaching through
    SharedMemory would register it, and the tracker would unlink the server's block when this
    process exits); elsewhere SharedMemory is used and unregistered from the tracker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._shm = None
        if _posixshmem is not None:
            fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, 0o600)
            try:
                size = os.fstat(fd).st_size
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                self.buf: Any = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        else:
            from multiprocessing import shared_memory

            self._shm = shared_memory.SharedMemory(name=name)
            if os.name == "posix":  # pragma: no cover - only without _posixshmem
                from multiprocessing import resource_tracker

                resource_tracker.unregister(self._shm._name, "shared_memory")  # type: ignore[attr-defined]
            self.buf = self._shm.buf

    def array(self, spec: dict, dtypes: Any = ("float32", "float16", "int32", "int64", "uint8")) -> np.ndarray:
        """The array a reply's spec names, checked against the block (a bad spec is a ValueError)."""
        try:
            shape = tuple(int(s) for s in spec["shape"])
            dtype = np.dtype(spec["dtype"]) if spec["dtype"] in dtypes else None
            offset = int(spec["offset"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a malformed array spec from the backend: {str(spec)[:200]}") from None
        count = 1
        for s in shape:
            count *= s
        if dtype is None or min(shape, default=0) < 0 or offset < 0 or offset + count * dtype.itemsize > len(self.buf):
            raise ValueError(f"an array spec that does not fit its block {self.name}: {str(spec)[:200]}")
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=offset).reshape(shape)

    def close(self) -> None:
        try:
            if self._shm is not None:
                self._shm.close()
            else:
                self.buf.close()
        except BufferError:  # views are still in use; the mapping closes when they go
            pass


def unlink_block(name: str) -> bool:
    """Remove a shared-memory block by name (POSIX); True when it existed."""
    if _posixshmem is None:
        return False
    try:
        _posixshmem.shm_unlink("/" + name)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not unlink shared memory %s: %s", name, exc)
        return False


PARALLEL_MIN_BYTES = 4 << 20
_COPY_POOL: list = []


def _copy_pool() -> concurrent.futures.ThreadPoolExecutor | None:
    if not _COPY_POOL:
        cores = os.cpu_count() or 1
        _COPY_POOL.append(concurrent.futures.ThreadPoolExecutor(min(8, cores), thread_name_prefix="dreamwaltz-copy")
                          if cores >= 4 else None)
    return _COPY_POOL[0]


def copy_array(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """np.copyto split by rows over a few threads for big arrays (numpy releases the GIL while
    copying; one thread rarely reaches the memory bandwidth)."""
    pool = _copy_pool()
    rows = dst.shape[0] if dst.ndim else 0
    if pool is None or dst.nbytes < PARALLEL_MIN_BYTES or rows < 2:
        np.copyto(dst, src)
        return dst
    step = -(-rows // pool._max_workers)
    futures = [pool.submit(np.copyto, dst[i:i + step], src[i:i + step]) for i in range(step, rows, step)]
    np.copyto(dst[:step], src[:step])
    for f in futures:
        f.result()
    return dst


def _np_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} cannot be sent to the backend")


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


_LIVE_CLIENTS: "weakref.WeakSet[BackendClient]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for client in list(_LIVE_CLIENTS):
        try:
            client.close(timeout=5.0)
        except Exception:  # noqa: BLE001 - interpreter exit: best effort
            pass


class BackendClient:
    """One backend process, started lazily and restarted after a crash.

    python: interpreter from the add-on preferences (else $DREAMWALTZ_PYTHON, else the
    set-up environment `venv`, else this Python). device / smplx: passed to `serve`.
    on_event: called with each event dict on the client's reader thread (not Blender's main
    thread: in Blender use ``poll_events`` from a ``bpy.app.timers`` function instead, or
    ``blender_event_pump``). log_path: where the backend's stderr goes (default: a file in
    the per-user ``private_log_dir()``, named in errors).
    """

    def __init__(self, python: str | os.PathLike | None = None, *, venv: str | os.PathLike | None = None,
                 device: str | None = None, smplx: str | os.PathLike | None = None,
                 extra_args: Iterable[str] = (), env: dict[str, str] | None = None,
                 log_path: str | os.PathLike | None = None,
                 on_event: Callable[[dict], None] | None = None, start_timeout: float = 180.0,
                 timeouts: dict[str, float] | None = None, max_events: int = 10000) -> None:
        self.protocol = load_protocol()
        self.python, self.python_source = resolve_python(python, venv)
        self.device = device
        self.smplx = None if smplx is None else os.fspath(smplx)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.log_path = Path(log_path) if log_path else private_log_dir() / f"backend-{os.getpid()}-{id(self):x}.log"
        self.on_event = on_event
        self.start_timeout = start_timeout
        self.timeouts = dict(OP_TIMEOUTS, **(timeouts or {}))
        self.generation = 0          # +1 per backend start: handles belong to one generation
        self.hello: dict | None = None
        self.last_error: BackendError | None = None
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._pending: dict[int, tuple[concurrent.futures.Future, str]] = {}
        self._ids = itertools.count(1)
        self._events: collections.deque[dict] = collections.deque(maxlen=max_events)
        self._event_cond = threading.Condition()
        self._final_jobs: dict[int, dict] = {}
        self._maps: dict[str, _Mapping] = {}
        self._slot_blocks: dict[str, str] = {}
        self._seen_blocks: set[str] = set()
        self._closing = False
        _LIVE_CLIENTS.add(self)

    # ---- process -----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    @property
    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def command(self) -> list[str]:
        """The backend's command line: isolated (``-I``), the backend source the only extra path."""
        args = ["serve"]
        if self.device:
            args += ["--device", self.device]
        if self.smplx:
            args += ["--smplx", self.smplx]
        return self.protocol.isolated_command(self.python, str(backend_root()), "backend", *args, *self.extra_args)

    def start(self) -> dict:
        """Start the backend now (if it is not running) and return its hello."""
        with self._start_lock:
            self._ensure_started()
        assert self.hello is not None
        return self.hello

    def _ensure_started(self) -> subprocess.Popen:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        if proc is not None:  # exited but the reader has not reported yet
            if self._reader is not None:
                self._reader.join(5.0)
        return self._spawn()

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        return env  # PYTHON* variables are ignored by the isolated interpreter (see command())

    def _spawn(self) -> subprocess.Popen:
        P = self.protocol
        root = backend_root()
        if not Path(self.python).exists():
            raise self._fail(BackendError(P.START_FAILED, f"the backend interpreter {self.python} (from "
                                          f"{self.python_source}) does not exist; set the backend Python in the add-on "
                                          f"preferences or ${ENV_PYTHON}"))
        try:
            log_file = open_log(self.log_path)
        except OSError as exc:
            raise self._fail(BackendError(P.START_FAILED, f"cannot write the backend's log {self.log_path}: "
                                          f"{exc.strerror or exc}")) from None
        log.info("starting the DreamWaltz backend with %s (from %s); log: %s", self.python, self.python_source,
                 self.log_path)
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # Ctrl-C in Blender's terminal does not reach it
        elif hasattr(subprocess, "CREATE_NO_WINDOW"):
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW
        with log_file:
            try:
                proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=log_file, cwd=str(root), env=self._child_env(),
                                        bufsize=0, close_fds=True, **kwargs)
            except OSError as exc:
                raise self._fail(BackendError(P.START_FAILED, f"cannot start the backend with {self.python} "
                                              f"(from {self.python_source}): {exc.strerror or exc}")) from None
        with self._lock:
            self._proc = proc
            self._ids = itertools.count(1)
            self.generation += 1
            self.hello = None
            self._closing = False
        self._reader = threading.Thread(target=self._read_loop, args=(proc,), name="dreamwaltz-client-reader",
                                        daemon=True)
        self._reader.start()
        fut = self._send(proc, "hello", {"client": CLIENT_NAME, "protocol_version": P.PROTOCOL_VERSION})
        try:
            hello = fut.result(self.start_timeout)
        except concurrent.futures.TimeoutError:
            self._kill(proc)
            raise self._fail(BackendError(P.START_FAILED, f"the backend did not answer within {self.start_timeout:g} s "
                                          f"of starting; {self._log_tail_text()}")) from None
        except BackendError as exc:
            if exc.code == P.BACKEND_DIED:
                raise self._fail(BackendError(P.START_FAILED, self._start_failure_message(exc))) from None
            self._kill(proc)
            raise self._fail(BackendError(P.START_FAILED, f"the backend refused the handshake: {exc.message}")) from None
        if hello.get("protocol_version") != P.PROTOCOL_VERSION:
            self._kill(proc)
            raise self._fail(BackendError(P.VERSION_MISMATCH, f"the backend at {self.python} speaks protocol "
                                          f"{hello.get('protocol_version')}, this add-on speaks {P.PROTOCOL_VERSION}: "
                                          "update the backend source or the add-on so that they match"))
        self.hello = hello
        log.info("backend ready: pid %s, %s, device %s, rasterizer %s", hello.get("pid"),
                 hello.get("backend_version"), hello.get("device", {}).get("name"), hello.get("rasterizer"))
        return proc

    def _start_failure_message(self, exc: BackendError) -> str:
        tail = self.log_tail()
        text = "\n".join(tail)
        hint = ""
        if "No module named 'torch'" in text:
            hint = (f" The interpreter {self.python} (from {self.python_source}) has no torch: point the add-on "
                    "preferences at a Python with the backend's requirements, or run the add-on's set-up.")
        elif "No module named" in text:
            hint = f" The interpreter {self.python} lacks a package the backend needs (see the log)."
        return f"the backend could not start.{hint} {exc.message}"

    def _fail(self, err: BackendError) -> BackendError:
        self.last_error = err
        log.error("%s", err.message)
        return err

    def _kill(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._closing = True
        try:
            proc.kill()
        except OSError:
            pass
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5.0)

    # ---- log ---------------------------------------------------------------------------
    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            with os.fdopen(os.open(self.log_path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_BINARY", 0)), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def _log_tail_text(self) -> str:
        tail = self.log_tail()
        if not tail:
            return f"its log ({self.log_path}) is empty"
        return f"last lines of its log ({self.log_path}):\n" + "\n".join(tail)

    # ---- reading -----------------------------------------------------------------------
    def _read_loop(self, proc: subprocess.Popen) -> None:
        """Deliver each line the backend writes; a line that is not a valid message (NaN, deep
        nesting, garbage: decoded by the protocol's own rules) is logged and skipped, so
        nothing the backend writes stops this thread."""
        P = self.protocol
        stream = proc.stdout
        assert stream is not None
        try:
            for line in iter(lambda: stream.readline(P.MAX_LINE_BYTES + 1), b""):
                try:
                    msg = P.decode(line)
                except P.ProtocolError as exc:
                    log.warning("backend wrote a line that is not a valid message (%s): %r", exc.message, line[:200])
                    continue
                try:
                    if "event" in msg:
                        self._deliver_event(msg)
                    else:
                        self._deliver_reply(msg)
                except Exception:  # noqa: BLE001 - a malformed message must not end the reader
                    log.exception("could not deliver a backend message: %r", line[:200])
        except (OSError, ValueError):
            pass
        self._on_exit(proc)

    def _deliver_reply(self, msg: dict) -> None:
        rid = msg.get("id")
        with self._lock:
            entry = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if entry is None:
            if msg.get("ok") is False:
                log.warning("backend error without a pending request: %s", msg.get("error"))
            return
        fut, op = entry
        if fut.done():
            return
        if msg.get("ok") is True:
            msg.pop("id", None)
            msg.pop("ok", None)
            arrays = msg.get("arrays")
            for spec in (arrays.values() if isinstance(arrays, dict) else ()):
                if isinstance(spec, dict) and isinstance(spec.get("shm"), str):
                    self._seen_blocks.add(spec["shm"])
            fut.set_result(msg)
        else:
            raw = msg.get("error")
            err: dict = raw if isinstance(raw, dict) else {}
            fut.set_exception(BackendError(str(err.get("code", "internal")),
                                           str(err.get("message", f"the backend refused {op!r}"))))

    def _deliver_event(self, msg: dict) -> None:
        with self._event_cond:
            self._events.append(msg)
            if msg.get("event") in ("job_done", "job_failed", "job_cancelled") and isinstance(msg.get("job"), int):
                self._final_jobs[msg["job"]] = msg
            self._event_cond.notify_all()
        if self.on_event is not None:
            try:
                self.on_event(msg)
            except Exception:  # noqa: BLE001 - a faulty handler must not kill the reader
                log.exception("the event handler failed on %s", msg.get("event"))

    def _on_exit(self, proc: subprocess.Popen) -> None:
        try:
            code = proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        P = self.protocol
        with self._lock:
            if self._proc is not proc:
                return
            pending = list(self._pending.values())
            self._pending.clear()
            self._proc = None
            expected = self._closing
        prefixes = {P.block_prefix(proc.pid)}
        if self.hello and isinstance(self.hello.get("shm_prefix"), str):
            prefixes.add(self.hello["shm_prefix"])
        self._drop_blocks(prefixes)
        if expected:
            err = BackendError(P.BACKEND_DIED, "the backend was stopped")
        else:
            err = BackendError(P.BACKEND_DIED, f"the DreamWaltz backend stopped unexpectedly ({_signal_name(code)}); "
                               f"the next request starts a new one. {self._log_tail_text()}")
            self._fail(err)
            self._deliver_event({"event": "backend_died", "job": None, "message": err.message,
                                 "returncode": code})
        for fut, _ in pending:
            if not fut.done():
                fut.set_exception(err)

    def _drop_blocks(self, prefixes: set[str]) -> None:
        """Close our mappings and unlink whatever blocks the ended backend left behind."""
        P = self.protocol
        with self._lock:
            for mapping in list(self._maps.values()):
                mapping.close()
            self._maps.clear()
            self._slot_blocks.clear()
            names = set(self._seen_blocks)
            self._seen_blocks.clear()
        for prefix in prefixes:
            names.update(P.list_blocks(prefix))
        removed = [n for n in sorted(names) if any(n.startswith(p) for p in prefixes) and unlink_block(n)]
        if removed:
            log.info("removed %d shared-memory blocks the backend left: %s", len(removed), ", ".join(removed))

    # ---- requests ----------------------------------------------------------------------
    def _encode(self, message: dict) -> bytes:
        try:
            text = json.dumps(message, separators=(",", ":"), allow_nan=False, default=_np_default)
        except ValueError as exc:
            raise BackendError(self.protocol.BAD_REQUEST, f"the request {message.get('op')!r} holds NaN or "
                               f"infinite numbers ({exc})") from None
        except TypeError as exc:
            raise BackendError(self.protocol.BAD_REQUEST, str(exc)) from None
        return (text + "\n").encode("utf-8")

    def _send(self, proc: subprocess.Popen, op: str, fields: dict) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._proc is not proc:
                fut.set_exception(self.last_error or BackendError(self.protocol.BACKEND_DIED, "the backend stopped"))
                return fut
            rid = next(self._ids)
            data = self._encode({"id": rid, "op": op, **fields})
            self._pending[rid] = (fut, op)
            fut.request_id = rid  # type: ignore[attr-defined]
            fut.op = op  # type: ignore[attr-defined]
            try:
                assert proc.stdin is not None
                proc.stdin.write(data)
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the reader sees the end of the backend and fails this future with the reason
        return fut

    def submit(self, op: str, **fields: Any) -> concurrent.futures.Future:
        """Send a request without waiting; the Future gives the reply's fields or raises
        BackendError. Starts the backend first if needed (that part blocks)."""
        with self._start_lock:
            proc = self._ensure_started()
        return self._send(proc, op, fields)

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> dict:
        """Send a request and wait for its reply's fields; raises BackendError."""
        fut = self.submit(op, **fields)
        return self.result(fut, timeout)

    def result(self, fut: concurrent.futures.Future, timeout: float | None = None) -> dict:
        op = getattr(fut, "op", "request")
        wait = self.timeouts.get(op, DEFAULT_TIMEOUT) if timeout is None else timeout
        try:
            return fut.result(wait)
        except concurrent.futures.TimeoutError:
            with self._lock:
                self._pending.pop(int(getattr(fut, "request_id", -1)), None)
            raise BackendError(self.protocol.TIMEOUT, f"the backend did not answer {op!r} within {wait:g} s "
                               f"(busy or stuck; its log is {self.log_path})") from None

    # ---- events ------------------------------------------------------------------------
    def poll_events(self, max_events: int | None = None) -> list[dict]:
        """Take the events received so far (oldest first). Safe from any thread."""
        out = []
        with self._event_cond:
            while self._events and (max_events is None or len(out) < max_events):
                out.append(self._events.popleft())
        return out

    def wait_job(self, job: int, timeout: float | None = None) -> dict:
        """Block until job `job` ends; returns its final event (job_done / job_failed /
        job_cancelled). Raises BackendError(backend_died) if the backend dies meanwhile.
        Events stay in the poll_events queue."""
        deadline = None if timeout is None else time.monotonic() + timeout
        generation = self.generation
        with self._event_cond:
            while job not in self._final_jobs:
                if self.generation != generation or (self._proc is None and self.last_error is not None):
                    raise self.last_error or BackendError(self.protocol.BACKEND_DIED, "the backend stopped")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise BackendError(self.protocol.TIMEOUT, f"job {job} did not finish within {timeout:g} s")
                self._event_cond.wait(0.2 if remaining is None else min(remaining, 0.2))
            return self._final_jobs[job]

    # ---- shared memory -----------------------------------------------------------------
    def _mapping(self, name: str, slot: str | None) -> _Mapping:
        with self._lock:
            mapping = self._maps.get(name)
            if mapping is None:
                if slot is not None:
                    old = self._slot_blocks.get(slot)
                    if old is not None and old != name and old in self._maps:
                        self._maps.pop(old).close()
                try:
                    mapping = _Mapping(name)
                except FileNotFoundError:
                    raise BackendError(self.protocol.NOT_FOUND, f"the shared-memory block {name} is gone (released, "
                                       "replaced by a later request, or its backend stopped)") from None
                self._maps[name] = mapping
                self._seen_blocks.add(name)
            if slot is not None:
                self._slot_blocks[slot] = name
            return mapping

    def arrays(self, reply: dict, copy: bool = True, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The arrays a reply points at: copies (default), copies into `out`'s arrays, or
        read-only views valid until the next request that writes the same slot."""
        result = {}
        arrays = reply.get("arrays") or {}
        if not isinstance(arrays, dict) or not all(isinstance(s, dict) and isinstance(s.get("shm"), str)
                                                   for s in arrays.values()):
            raise BackendError(self.protocol.INTERNAL, f"the backend's reply names its arrays wrongly: {str(arrays)[:200]}")
        for name, spec in arrays.items():
            try:
                view = self._mapping(spec["shm"], reply.get("slot")).array(spec)
            except ValueError as exc:
                raise BackendError(self.protocol.INTERNAL, str(exc)) from None
            if out is not None and name in out:
                result[name] = copy_array(out[name], view)
            elif copy:
                result[name] = copy_array(np.empty(view.shape, view.dtype), view)
            else:
                result[name] = view
        return result

    def release(self, slot: str | None = None) -> dict:
        """Ask the backend to unlink a slot's block (or all blocks) and drop our mapping."""
        fields: dict[str, Any] = {"slot": slot} if slot is not None else {"all": True}
        with self._lock:
            name = self._slot_blocks.pop(slot, None) if slot is not None else None
            if slot is None:
                for mapping in self._maps.values():
                    mapping.close()
                self._maps.clear()
                self._slot_blocks.clear()
            elif name is not None and name in self._maps:
                self._maps.pop(name).close()
        return self.request("release", **fields)

    # ---- typed helpers -----------------------------------------------------------------
    def render(self, *, camera: dict, width: int, height: int, avatars: Iterable[dict] = (),
               objects: Iterable[dict] = (), passes: Iterable[str] = ("rgba", "depth"), dtype: str = "float32",
               background: Any = None, slot: str = "frame", flip_y: bool = False, depth_empty: float | None = None,
               rasterizer: str | None = None, color: str | None = None, copy: bool = True,
               out: dict[str, np.ndarray] | None = None, timeout: float | None = None) -> dict:
        """Render a frame; returns the reply's fields with ``rgba`` (H, W, 4, premultiplied) and
        ``depth`` (H, W, 1) numpy arrays (see docs/protocol.md, op render)."""
        fields: dict[str, Any] = {"camera": camera, "width": int(width), "height": int(height),
                                  "avatars": list(avatars), "objects": list(objects), "passes": list(passes),
                                  "dtype": dtype, "slot": slot, "flip_y": bool(flip_y)}
        for key, value in (("background", background), ("depth_empty", depth_empty), ("rasterizer", rasterizer),
                           ("color", color)):
            if value is not None:
                fields[key] = value
        t0 = time.perf_counter()
        reply = self.request("render", timeout=timeout, **fields)
        t1 = time.perf_counter()
        reply.update(self.arrays(reply, copy=copy, out=out))
        t2 = time.perf_counter()
        reply.setdefault("timing", {}).update(request_ms=round((t1 - t0) * 1e3, 3), copy_ms=round((t2 - t1) * 1e3, 3))
        return reply

    def rig(self, avatar: int, timeout: float | None = None) -> dict:
        """Everything Blender needs to build an avatar's rig, arrays as numpy copies."""
        slot = f"rig{self.generation}"
        reply = self.request("rig", timeout=timeout, avatar=avatar, slot=slot)
        reply.update(self.arrays(reply, copy=True))
        reply["parents"] = np.asarray(reply["parents"], dtype=np.int64)
        try:
            self.release(slot)
        except BackendError as exc:
            log.warning("could not release the rig's shared memory: %s", exc)
        return reply

    def job_start(self, kind: str, **params: Any) -> int:
        return int(self.request("job_start", kind=kind, params=params)["job"])

    # ---- ending ------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Shut the backend down (cancelling a job, which may checkpoint) and wait for it."""
        with self._start_lock:
            proc = self._proc
            if proc is None:
                return
            with self._lock:
                self._closing = True
            if proc.poll() is None:
                fut = self._send(proc, "shutdown", {"wait": max(0.0, timeout - 2.0)})
                try:
                    fut.result(timeout)
                except (concurrent.futures.TimeoutError, BackendError):
                    pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("the backend did not stop within %g s; killing it", timeout)
                    proc.kill()
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            if self._reader is not None and self._reader is not threading.current_thread():
                self._reader.join(timeout)

    def restart(self) -> dict:
        self.close()
        return self.start()

    def __enter__(self) -> "BackendClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def blender_event_pump(client: BackendClient, handler: Callable[[dict], None], interval: float = 0.1) -> Callable[[], None]:
    """Deliver the client's events to `handler` on Blender's main thread (a bpy.app.timers
    function). Returns a function that stops it."""
    import bpy  # only inside Blender

    def tick() -> float:
        for ev in client.poll_events():
            try:
                handler(ev)
            except Exception:  # noqa: BLE001
                log.exception("DreamWaltz event handler failed on %s", ev.get("event"))
        return interval

    bpy.app.timers.register(tick, first_interval=interval, persistent=True)

    def stop() -> None:
        if bpy.app.timers.is_registered(tick):
            bpy.app.timers.unregister(tick)

    return stop
