"""Shared-memory blocks the server hands frames and bulk arrays through.

One block per *slot* (a name the client picks, e.g. "frame" or "viewport"): a request that
writes a slot reuses its block when the new data has the same size and replaces it (unlink, new
name) when not. Block names carry the server's pid (``protocol.block_prefix``), so a client can
remove the blocks of a server that was killed, and a random token, so that another process
cannot claim a name first (a name taken anyway is retried with a new token). All blocks are
unlinked on release, on shutdown, at interpreter exit and on SIGTERM (see
``backend.server.core``).

A block's memory is reserved when it is made (``posix_fallocate``): shared memory is a file in
a tmpfs (/dev/shm; Docker gives 64 MB), and a sparse one that the tmpfs cannot back kills the
writer with SIGBUS on first touch. Reserved up front, a full /dev/shm is an error reply.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import threading
from multiprocessing import shared_memory

import numpy as np

from .. import protocol as P

log = logging.getLogger("backend.server.shm")

MAX_SLOTS = 32
NAME_ATTEMPTS = 16


def _reserve(shm: shared_memory.SharedMemory, size: int) -> None:
    """Back every byte of a new block now (raises OSError(ENOSPC) when the tmpfs is full)."""
    fd = getattr(shm, "_fd", -1)
    if fd < 0 or not hasattr(os, "posix_fallocate"):
        return                   # Windows / macOS: the system backs the mapping itself
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
            return               # no fallocate on this filesystem (the C library emulates it where it can)
        raise


def _full_message(size: int) -> str:
    free = ""
    try:
        usage = shutil.disk_usage(P.SHM_DIR)
        free = f" ({usage.free / 2**20:.0f} MB of {usage.total / 2**20:.0f} MB free)"
    except OSError:
        pass
    return (f"shared memory is full: {P.SHM_DIR}{free} cannot hold another {size / 2**20:.1f} MB block; "
            "release slots (op 'release'), render smaller frames, or give the system more shared memory "
            "(Docker: --shm-size=1g)")


class Block:
    def __init__(self, name: str, size: int) -> None:
        self.shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        try:
            _reserve(self.shm, size)
        except BaseException:
            self.shm.close()
            self.shm.unlink()
            raise
        self.name = name
        self.size = size
        self._pinned: int | None = None  # address registered with CUDA, when it is
        self._pin_failed = False

    @classmethod
    def create(cls, pid: int, serial: int, size: int) -> "Block":
        """A new block with an unpredictable name; a full shared memory is a ProtocolError."""
        for _ in range(NAME_ATTEMPTS):
            try:
                return cls(P.block_name(pid, serial, secrets.token_hex(4)), size)
            except FileExistsError:
                log.warning("shared-memory name taken by someone else; trying another")
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise P.ProtocolError(P.UNAVAILABLE, _full_message(size)) from None
                raise
        raise P.ProtocolError(P.UNAVAILABLE, f"could not create a shared-memory block: {NAME_ATTEMPTS} names "
                              "in a row were taken (another process is squatting on them)")

    def pin_for_cuda(self) -> bool:
        """Page-lock the block for CUDA (cudaHostRegister) so that device-to-host copies land in
        it directly; False where that is not possible (then copies are staged, still correct)."""
        if self._pinned is not None or self._pin_failed:
            return self._pinned is not None
        try:
            import torch

            view = np.frombuffer(self.shm.buf, dtype=np.uint8)
            ptr = int(view.ctypes.data)
            del view
            res = torch.cuda.cudart().cudaHostRegister(ptr, self.size, 0)
            if int(getattr(res, "value", res)) != 0:
                raise RuntimeError(f"cudaHostRegister returned {res}")
            self._pinned = ptr
            return True
        except Exception as exc:  # noqa: BLE001 - an optimisation only
            log.info("shared memory %s stays pageable for CUDA copies: %s", self.name, exc)
            self._pin_failed = True
            return False

    def array(self, spec: dict) -> np.ndarray:
        count = int(np.prod(spec["shape"], dtype=np.int64))
        return np.ndarray(spec["shape"], dtype=spec["dtype"], buffer=self.shm.buf,
                          offset=spec["offset"]) if count else np.zeros(spec["shape"], spec["dtype"])

    def destroy(self) -> None:
        if self._pinned is not None:
            try:
                import torch

                torch.cuda.cudart().cudaHostUnregister(self._pinned)
            except Exception as exc:  # noqa: BLE001
                log.warning("cudaHostUnregister failed for %s: %s", self.name, exc)
            self._pinned = None
        try:
            self.shm.close()
        except BufferError:  # a numpy view is still alive; the mapping goes with it
            pass
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


class ShmPool:
    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.prefix = P.block_prefix(self.pid)
        self._serial = 0
        self._slots: dict[str, Block] = {}
        self._lock = threading.Lock()

    def allocate(self, slot: str, arrays: list[tuple[str, str, tuple]]) -> tuple[Block, dict[str, dict], dict[str, np.ndarray]]:
        """The block for `slot` laid out for `arrays` (reused when the size matches), the array
        specs for the reply, and writable numpy views to fill."""
        P.check_slot(slot)
        specs, size = P.layout(arrays)
        with self._lock:
            block = self._slots.get(slot)
            if block is not None and block.size != size:
                log.debug("slot %s: size %d -> %d, replacing block %s", slot, block.size, size, block.name)
                block.destroy()
                del self._slots[slot]
                block = None
            if block is None:
                if len(self._slots) >= MAX_SLOTS:
                    raise P.ProtocolError(P.BAD_REQUEST, f"too many shared-memory slots in use ({MAX_SLOTS}); "
                                          "release some with the op 'release'")
                self._serial += 1
                block = Block.create(self.pid, self._serial, size)
                self._slots[slot] = block
        views = {name: block.array(spec) for name, spec in specs.items()}
        for spec in specs.values():
            spec["shm"] = block.name
        return block, specs, views

    def release(self, slot: str | None = None) -> list[str]:
        """Unlink one slot's block (or all of them); returns the names removed."""
        with self._lock:
            slots = list(self._slots) if slot is None else [slot]
            removed = []
            for s in slots:
                block = self._slots.pop(s, None)
                if block is not None:
                    block.destroy()
                    removed.append(block.name)
            return removed

    def describe(self) -> list[dict]:
        with self._lock:
            return [{"slot": s, "block": b.name, "bytes": b.size} for s, b in self._slots.items()]

    def has(self, slot: str) -> bool:
        with self._lock:
            return slot in self._slots
