"""File hygiene (issue 17, item 4): every writer goes through backend.files, so files and folders
appear whole or not at all and get the modes the umask asks for (a render farm's other accounts
must be able to read what one account wrote)."""

from __future__ import annotations

import contextlib
import os
import stat

import numpy as np
import pytest

from backend.files import atomic_folder, atomic_path, current_umask, write_text_atomic


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it():
    with umask(0o027):
        assert current_umask() == 0o027
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what the test set


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_files_and_folders_honour_the_umask(tmp_path, mask):
    with umask(mask):
        write_text_atomic(tmp_path / "a.txt", "hello")
        with atomic_folder(tmp_path / "folder") as staging:
            (staging / "inside.txt").write_text("x")
    assert mode(tmp_path / "a.txt") == 0o666 & ~mask
    assert mode(tmp_path / "folder") == 0o777 & ~mask
    assert mode(tmp_path / "folder" / "inside.txt") == 0o666 & ~mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_failed_folder_leaves_the_old_folder_and_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "the old folder is gone once replaced"


def test_project_writers_honour_the_umask(tmp_path, small_avatar):
    """The avatar folder (was 0700), Gaussian export and motion file (were 0600)."""
    from backend.avatar import save_avatar
    from backend.motion.loader import save_motion
    from backend.motion.types import Motion
    from backend.ply import write_ply
    from backend.render import GaussianSet

    g = GaussianSet.empty()
    n = 3
    motion = Motion.from_full_pose(30.0, np.zeros((n, 55, 3)), np.zeros((n, 3)))
    with umask(0o027):
        folder = save_avatar(small_avatar, tmp_path / "avatar", preview=np.zeros((4, 4, 3), np.uint8))
        files = [write_ply(tmp_path / "a.ply", g)]
        save_motion(motion, tmp_path / "m.npz")
        files.append(tmp_path / "m.npz")
    assert mode(folder) == 0o750
    for p in list(folder.iterdir()) + files:
        assert mode(p) == 0o640, p
