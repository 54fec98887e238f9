"""Atomic file writing: every file and folder the project writes appears whole or not at all.

The one helper every writer uses (DESIGN.md §3, Files). A file is written under a hidden
temporary name in its target folder, flushed to disk, then renamed over the target; a folder is
built the same way and swapped into place. New files get ``0o666 & ~umask`` and new folders
``0o777 & ~umask``, like any file a program creates with ``open``/``mkdir`` (``tempfile`` makes
0600 files and 0700 folders, which other accounts of a render farm could not read).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else swapped
    under a lock (``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    return 0o777 & ~current_umask()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _named(exc: OSError, temporary: str | os.PathLike, target: str | os.PathLike) -> OSError:
    """The same error, naming `target` where it named the temporary file (or nothing): the user
    never heard of ``.frame.png.k3j2s9.tmp``."""
    name = exc.filename
    tmp = os.fspath(temporary)
    if name is None or os.fspath(name) == tmp or os.fspath(name).startswith(tmp + os.sep):
        named = OSError(exc.errno, exc.strerror or str(exc), os.fspath(target))
        named.__cause__ = exc
        return named
    return exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is flushed and replaces `path`, on
    error it is removed (and `path`, if it existed, is untouched). `suffix` keeps writers that
    choose their format by extension (PIL, imageio) working. An OSError (a full disk) names
    `path`, not the temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as exc:
        raise _named(exc, path.parent, path) from None
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        yield Path(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, tmp, path) from None
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_npz_atomic(path: str | os.PathLike, arrays: dict, compressed: bool = False) -> None:
    """An .npz of `arrays`, atomically. Built in memory first: numpy's writer leaves its zip file
    open when the disk fills, which then fails a second time while being collected."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    write_bytes_atomic(path, buffer.getbuffer())


def write_torch_atomic(path: str | os.PathLike, obj: object) -> None:
    """torch.save, atomically. Serialised in memory first: torch's own file writer reports a
    full disk as a RuntimeError ("unexpected pos ..."), a plain write as an OSError that says so."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; on success it takes `path`'s place (an
    existing folder is swapped out and removed only then, when `replace`), on error it is
    removed. Files written inside it with plain ``open`` honour the umask already."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _named(exc, path.parent, path) from None
    try:
        os.chmod(staging, folder_mode())
        yield staging
        if not path.exists():
            os.replace(staging, path)
            return
        if not replace:
            raise FileExistsError(f"{path} exists")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
        try:
            os.replace(staging, path)
        except BaseException:
            os.replace(old / path.name, path)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.filename is not None \
                and os.fspath(exc.filename).startswith(os.fspath(staging) + os.sep):
            inside = os.path.relpath(os.fspath(exc.filename), staging)
            raise _named(exc, exc.filename, path / inside) from None
        if isinstance(exc, OSError):
            raise _named(exc, staging, path) from None
        raise


_STALE = re.compile(r"^\..+\.(?:[a-z0-9_]{8}(?:\.[^./]+)?\.tmp|old-[a-z0-9_]{8})$")


def remove_stale_temps(folder: str | os.PathLike, depth: int = 2) -> list[Path]:
    """Remove what killed writers left in `folder` (and `depth` levels below): the temporary
    files and folders of atomic_path / atomic_folder, never anything else. Call it when a run
    folder is opened by the one process that writes it."""
    removed: list[Path] = []
    todo = [(Path(folder), 0)]
    while todo:
        here, level = todo.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        for entry in entries:
            if _STALE.match(entry.name):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                removed.append(Path(entry.path))
            elif level < depth and entry.is_dir(follow_symlinks=False):
                todo.append((Path(entry.path), level + 1))
    return removed


_WHY = {errno.ENOSPC: "the disk is full (no space left on the device)",
        errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "the file is larger than this file system or this process may write (file size limit)",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied", errno.EPERM: "permission denied",
        errno.ENOENT: "no such file or folder", errno.EISDIR: "it is a folder",
        errno.ENOTDIR: "a part of the path is not a folder", errno.EIO: "the device reported an input/output error"}


def describe_os_error(exc: OSError) -> str:
    """One sentence for the user: the file, then what went wrong (for `error:` lines)."""
    standard = exc.errno is not None and exc.strerror == os.strerror(exc.errno)
    why = (_WHY.get(exc.errno or 0) if standard or not exc.strerror else None) or exc.strerror or str(exc)
    name = exc.filename
    other = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"{os.fspath(name)}{other}: {why}" if name is not None else why


LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


def lfs_pointer_message(path: str | os.PathLike) -> str | None:
    """If `path` is a Git LFS pointer (the small text file a clone without `git lfs` holds in
    place of a large file), what to tell the user ("a Git LFS pointer, …: fetch …"; callers put
    the file's name before it); else None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if not head.startswith(LFS_POINTER_PREFIX):
        return None
    size = ""
    for line in head.decode("ascii", "replace").splitlines():
        if line.startswith("size ") and line[5:].strip().isdigit():
            size = f" of {int(line[5:]):,} bytes"
    return (f"a Git LFS pointer, not the file itself: fetch the real file{size} "
            "(git lfs pull, or download it again) and try again")
