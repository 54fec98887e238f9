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


# ---- a full disk and a file size limit: one `error:` line naming the file, nothing saved lost ----
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def limited_backend(args: list, fsize: int | None = None, wrap: list | None = None) -> subprocess.CompletedProcess:
    """`python -m backend ...` with RLIMIT_FSIZE = fsize bytes (Python ignores SIGXFSZ, so writes
    past the limit fail with EFBIG), or wrapped (e.g. into a namespace with a small tmpfs)."""
    import resource

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([*(wrap or []), sys.executable, "-m", "backend", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)


def assert_one_error_line(proc: subprocess.CompletedProcess, target: Path, why: str) -> None:
    """Exit status 1 and one `error:` line naming `target` (progress lines may come before it)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-2000:]
    assert str(target) in errors[0] and ".tmp" not in errors[0] and why in errors[0], errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def small_motion(path: Path, frames: int = 3000) -> Path:
    np.savez(path, poses=np.zeros((frames, 156)), trans=np.zeros((frames, 3)), mocap_framerate=np.array(30.0))
    return path


def test_cli_writers_past_a_file_size_limit_say_so_in_one_line(tmp_path, avatar_dir):
    """Each writer of the command line, past RLIMIT_FSIZE: exit status 1, one `error:` line that
    names the file the user asked for (not the temporary one), the previous file untouched and
    no temporary file left."""
    motion = small_motion(tmp_path / "walk.npz")
    out = tmp_path / "out"
    out.mkdir()
    old_avatar = out / "avatar"
    import shutil

    shutil.copytree(avatar_dir, old_avatar)
    cases = [
        (["template", "--out", out / "template.npz"], out / "template.npz", 64 << 10),
        (["motion", "convert", motion, "--out", out / "walk.npz"], out / "walk.npz", 64 << 10),
        (["export-ply", "--avatar", avatar_dir, "--out", out / "avatar.ply"], out / "avatar.ply", 64 << 10),
        (["avatar", "init", "--out", old_avatar], old_avatar, 64 << 10),
        (["render", "--avatar", avatar_dir, "--motion", motion, "--out", out / "clip.mp4", "--width", "64",
          "--height", "64", "--frames", "0:2"], out / "clip.mp4", 600),
    ]
    before_avatar = {p.name: p.read_bytes() for p in old_avatar.iterdir()}
    for args, target, fsize in cases:
        if not target.exists():
            target.write_bytes(b"saved before")
        before = target.read_bytes() if target.is_file() else None
        proc = limited_backend(args, fsize=fsize)
        assert_one_error_line(proc, target, "file size limit")
        assert before is None or target.read_bytes() == before, f"{target} changed"
    assert {p.name: p.read_bytes() for p in old_avatar.iterdir()} == before_avatar
    assert leftovers(out) == [] and leftovers(old_avatar) == []


def test_a_full_disk_says_so_in_one_line(tmp_path, avatar_dir):
    """A real full file system: a 1 MB tmpfs mounted in a private mount namespace."""
    disk = tmp_path / "disk"
    disk.mkdir()
    wrap = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "{disk}" && exec "$0" "$@"']
    probe = subprocess.run([*wrap, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("no private mount namespace here (needs root and util-linux unshare)")
    proc = limited_backend(["export-ply", "--avatar", avatar_dir, "--out", disk / "big" / "avatar.ply"], wrap=wrap)
    assert_one_error_line(proc, disk / "big" / "avatar.ply", "the disk is full")


def test_a_checkpoint_on_a_full_disk_is_an_os_error_naming_it(tmp_path):
    """torch.save's own writer reports a full disk as RuntimeError('unexpected pos ...'):
    checkpoints are serialised in memory and written by Python, so the error says what it is."""
    code = ("import resource, sys, torch\n"
            "from backend.train.checkpoint import save_checkpoint\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
            "try:\n    save_checkpoint(sys.argv[1], {'x': torch.zeros(1 << 20)})\n"
            "except OSError as exc:\n    from backend.files import describe_os_error; print(describe_os_error(exc))\n")
    target = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == f"{target}: the file is larger than this file system or this process may write " \
                                  "(file size limit)", proc.stdout + proc.stderr
    assert leftovers(target.parent) == []


def test_opening_a_run_folder_removes_what_killed_writers_left(tmp_path):
    from backend.files import remove_stale_temps

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "previews").mkdir()
    stale = [run / "checkpoints" / ".last.pt.k3j2s9ab.pt.tmp", run / "previews" / ".latest.png.abcd1234.png.tmp",
             run / ".config.json.zz99yy88.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (run / ".avatar.q1w2e3r4.tmp").mkdir()                     # atomic_folder's staging
    (run / ".avatar.old-a1b2c3d4").mkdir()                     # and the old folder it swaps out
    keep = [run / "checkpoints" / "last.pt", run / ".hidden-by-the-user", run / "notes.tmp",
            run / "previews" / ".latest.png.not-ours.tmp"]
    for p in keep:
        p.write_bytes(b"keep")
    removed = remove_stale_temps(run)
    assert sorted(map(str, removed)) == sorted(map(str, stale + [run / ".avatar.q1w2e3r4.tmp",
                                                                 run / ".avatar.old-a1b2c3d4"]))
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
