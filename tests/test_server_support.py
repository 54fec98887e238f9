"""Helpers for the server tests: the real `python -m backend serve` over raw pipes (no client),
so that the tests see exactly the bytes on the wire. No tests here."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def small_shm_wrap(megabytes: int = 64) -> list[str] | None:
    """A command prefix that runs a program in a private mount namespace whose /dev/shm is a
    `megabytes` tmpfs (Docker's default is 64 MB), or None where that is not permitted here
    (it needs root, or CAP_SYS_ADMIN, and util-linux's unshare)."""
    wrap = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={megabytes}m tmpfs /dev/shm && exec "$0" "$@"']
    try:
        probe = subprocess.run([*wrap, "df", "-m", "/dev/shm"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return wrap if probe.returncode == 0 and f" {megabytes} " in probe.stdout else None


def shm_entries(prefix: str = "dw_") -> list[str]:
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except FileNotFoundError:
        return []


class RawServer:
    """`python -m backend serve` with line-level access to its stdin/stdout."""

    def __init__(self, *args: str, env: dict | None = None, wrap: list[str] | None = None) -> None:
        """wrap: a command that execs the server (e.g. into another mount namespace)."""
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.log = open(os.devnull, "wb") if os.environ.get("DW_TEST_QUIET") else None
        self.proc = subprocess.Popen([*(wrap or []), sys.executable, "-m", "backend", "serve", *args], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=full_env, bufsize=0)
        self.replies: dict = {}
        self.events: list[dict] = []
        self.raw: list[bytes] = []
        self._cond = threading.Condition()
        self._next = 1000
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @property
    def prefix(self) -> str:
        return f"dw_{self.proc.pid}_"

    def _read(self) -> None:
        for line in iter(self.proc.stdout.readline, b""):
            msg = json.loads(line)
            with self._cond:
                self.raw.append(line)
                if "event" in msg:
                    self.events.append(msg)
                else:
                    self.replies.setdefault(msg.get("id"), []).append(msg)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_err(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.stderr_lines.append(line.decode("utf-8", "replace"))

    def send_line(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.proc.stdin.write(line if line.endswith(b"\n") else line + b"\n")
        self.proc.stdin.flush()

    def send(self, op: str, **fields) -> int:
        self._next += 1
        self.send_line(json.dumps({"id": self._next, "op": op, **fields}))
        return self._next

    def wait_reply(self, rid, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.replies.get(rid):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to {rid}; stderr:\n{''.join(self.stderr_lines[-20:])}")
                if self.proc.poll() is not None and not self.replies.get(rid):
                    self._cond.wait(0.5)
                    if not self.replies.get(rid):
                        raise RuntimeError(f"server exited ({self.proc.returncode}); stderr:\n"
                                           f"{''.join(self.stderr_lines[-20:])}")
                self._cond.wait(min(left, 0.5))
            return self.replies[rid].pop(0)

    def request(self, op: str, timeout: float = 120.0, **fields) -> dict:
        return self.wait_reply(self.send(op, **fields), timeout)

    def ok(self, op: str, **fields) -> dict:
        reply = self.request(op, **fields)
        assert reply["ok"], reply
        return reply

    def error(self, op: str, **fields) -> dict:
        reply = self.request(op, **fields)
        assert reply["ok"] is False, reply
        return reply["error"]

    def wait_event(self, pred, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching event; events: {self.events[-5:]}")
                self._cond.wait(min(left, 0.5))

    def job_events(self, job: int) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e.get("job") == job]

    def final_event(self, job: int, timeout: float = 120.0) -> dict:
        return self.wait_event(lambda e: e.get("job") == job and e["event"] in
                               ("job_done", "job_failed", "job_cancelled"), timeout)

    def close(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            try:
                self.send("shutdown")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def identity_transforms() -> list:
    return [[[1.0 if r == c else 0.0 for c in range(4)] for r in range(4)] for _ in range(55)]


def front_camera(width: int, height: int, distance: float = 3.0) -> dict:
    """OpenCV camera on +z looking at the origin region (y up in the world -> y down in image)."""
    from backend.render import Camera

    cam = Camera.look_at([0.0, 0.3, distance], [0.0, 0.3, 0.0], (0.0, 1.0, 0.0), 40.0, width, height)
    return {"world_to_camera": cam.world_to_camera.tolist(), "K": cam.K.tolist(), "near": 0.05, "far": 100.0}
