"""Atomic file writing: every file and folder the project writes appears whole or not at all.

The one helper every writer uses (DESIGN.md §3, Files). A file is written under a hidden
temporary name in its target folder, flushed to disk, then renamed over the target; a folder is
built the same way and swapped into place. New files get ``0o666 & ~umask`` and new folders
``0o777 & ~umask``, like any file a program creates with ``open``/``mkdir`` (``tempfile`` makes
0600 files and 0700 folders, which other accounts of a render farm could not read).
"""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is flushed and replaces `path`, on
    error it is removed (and `path`, if it existed, is untouched). `suffix` keeps writers that
    choose their format by extension (PIL, imageio) working."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        yield Path(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; on success it takes `path`'s place (an
    existing folder is swapped out and removed only then, when `replace`), on error it is
    removed. Files written inside it with plain ``open`` honour the umask already."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
