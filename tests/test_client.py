"""The add-on's backend client against the real server (and a few fake backends for start-up
failures): lazy start, requests, futures, events, frames through shared memory, timeouts, a
backend killed during a job and during a render, and no leaked shared memory."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from dreamwaltz_blender import client as C

from .test_server_support import front_camera, identity_transforms, shm_entries

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    c = C.BackendClient(log_path=None)
    yield c
    c.close()


@pytest.fixture(scope="module")
def avatar(client, avatar_dir):
    return client.request("load_avatar", path=str(avatar_dir))["avatar"]


# ---- loading, interpreter, paths -----------------------------------------------------------
def test_client_imports_without_torch_bpy_or_sys_path_changes():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        before = list(sys.path)
        spec = importlib.util.spec_from_file_location("dwc", {str(ROOT / 'dreamwaltz_blender' / 'client.py')!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        p = m.load_protocol()
        assert p.PROTOCOL_VERSION >= 1
        assert sys.path == before, "sys.path changed"
        bad = [n for n in ("torch", "bpy", "backend", "backend.protocol") if n in sys.modules]
        assert not bad, bad
        print("ok", m.backend_root())
    """)
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", str(ROOT)]


def test_backend_root_packaged_layout(tmp_path):
    addon = tmp_path / "dreamwaltz_blender"
    (addon / "backend_src" / "backend").mkdir(parents=True)
    shutil.copy(ROOT / "dreamwaltz_blender" / "client.py", addon / "client.py")
    shutil.copy(ROOT / "backend" / "protocol.py", addon / "backend_src" / "backend" / "protocol.py")
    code = ("import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('dwc', {str(addon / 'client.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "print(m.backend_root()); print(m.load_protocol().__file__)\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    root, proto = out.stdout.split()
    assert root == str(addon / "backend_src") and proto == str(addon / "backend_src" / "backend" / "protocol.py")
    # no backend anywhere: a clear error
    (addon / "backend_src" / "backend" / "protocol.py").unlink()
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode != 0 and "backend source is missing" in out.stderr


def test_resolve_python_order(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    monkeypatch.delenv(C.ENV_PYTHON, raising=False)
    assert C.resolve_python("/opt/py/bin/python", venv) == ("/opt/py/bin/python", "the add-on preferences")
    assert C.resolve_python(None, venv)[0] == str(venv / "bin" / "python")
    assert C.resolve_python(None, tmp_path / "missing")[0] == sys.executable
    monkeypatch.setenv(C.ENV_PYTHON, "/env/python")
    assert C.resolve_python(None, venv) == ("/env/python", "$DREAMWALTZ_PYTHON")
    assert C.resolve_python("/pref/python", venv)[0] == "/pref/python"
    monkeypatch.delenv(C.ENV_PYTHON)
    c = C.BackendClient(venv=venv)
    assert c.python == str(venv / "bin" / "python") and "backend environment" in c.python_source
    assert c.pid is None and not c.alive  # nothing started


def plant_modules(folder: Path, marker: Path) -> None:
    """Modules that record their import in `marker`: what someone could leave in a shared working
    folder or a PYTHONPATH entry (sitecustomize runs at every start of Python that sees it)."""
    folder.mkdir(parents=True, exist_ok=True)
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    for name in ("sitecustomize", "usercustomize", "numpy", "torch", "json", "safetensors"):
        (folder / f"{name}.py").write_text(code)
    (folder / "backend").mkdir(exist_ok=True)
    (folder / "backend" / "__init__.py").write_text(code)


def test_planted_modules_never_run_in_the_backend_or_set_up(tmp_path, monkeypatch):
    """Blender's working folder, PYTHONPATH and the user's site-packages are not the backend's:
    the backend and every set-up step start isolated (-I) in a folder of their own, and work."""
    from .test_setup_env import _setup_env

    planted = tmp_path / "shared folder"
    marker = tmp_path / "imported"
    plant_modules(planted, marker)
    monkeypatch.chdir(planted)
    hostile = {"PYTHONPATH": f"{planted}{os.pathsep}{os.pathsep}.", "PYTHONUSERBASE": str(planted),
               "PYTHONSTARTUP": str(planted / "sitecustomize.py")}
    c = C.BackendClient(env=hostile)
    try:
        assert c.request("hello")["protocol_version"] == c.protocol.PROTOCOL_VERSION
        assert c.request("status")["pid"] == c.pid
        assert c.command()[1] == "-I"
    finally:
        c.close()
    env = _setup_env()
    for target in (env.Target((3, 11), "linux", (12, 8), True), env.Target((3, 13), "windows")):
        steps = env.plan(tmp_path / "venv", ROOT / "backend" / "requirements.txt", target, base_python=sys.executable)
        assert all(s.command[1] == "-I" for s in steps), [s.command[:3] for s in steps]
    check = steps[-1]                                  # "Check the backend": imports torch, smplx, numpy
    runner = env.SetupRunner([env.Step(check.label, [sys.executable, *check.command[1:]])], tmp_path / "setup" / "log",
                             env={**os.environ, **hostile})
    runner.start().wait(300)
    assert runner.error is None and runner.done, (tmp_path / "setup" / "log").read_text()
    assert runner.cwd == tmp_path / "setup"
    assert not marker.exists(), marker.read_text()
    # control: the same folder and environment with a plain `python -m backend` runs the planted code
    proc = subprocess.run([sys.executable, "-m", "backend", "--help"], cwd=planted, capture_output=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(planted)))
    assert marker.exists() and "sitecustomize" in marker.read_text(), proc.stderr


def test_the_log_is_private_and_never_follows_a_link(tmp_path, monkeypatch):
    """The default log lives in a 0700 folder of this user (not a shared temp folder); a link
    planted at the log's path is moved aside, not written through."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache" / "dreamwaltz" / "logs").mkdir(parents=True, mode=0o777)
    os.chmod(tmp_path / "cache" / "dreamwaltz" / "logs", 0o777)
    c = C.BackendClient()
    folder = c.log_path.parent
    assert folder == tmp_path / "cache" / "dreamwaltz" / "logs" and (folder.stat().st_mode & 0o777) == 0o700
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    dangling = tmp_path / "does-not-exist-yet"
    for target in (dangling, victim):
        if c.log_path.is_symlink() or c.log_path.exists():
            c.log_path.unlink()
        c.log_path.symlink_to(target)
        try:
            c.request("hello")
        finally:
            c.close()
        assert not dangling.exists() and victim.read_text() == "precious\n"
        assert c.log_path.is_file() and not c.log_path.is_symlink() and "serving on" in c.log_path.read_text()
        assert (c.log_path.stat().st_mode & 0o777) == 0o600
    # a logs folder that is a link (or someone else's) is not used
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.rmtree(folder)
    folder.symlink_to(other, target_is_directory=True)
    c2 = C.BackendClient()
    assert other not in c2.log_path.parents and folder not in c2.log_path.parents
    assert (c2.log_path.parent.stat().st_mode & 0o777) == 0o700


# ---- the real backend -------------------------------------------------------------------------
def test_lazy_start_and_hello(client, caplog):
    with caplog.at_level(logging.INFO, logger="dreamwaltz.client"):
        hello = client.start()
    assert client.alive and client.pid and hello["pid"] == client.pid
    assert client.hello["rasterizer"] == "torch" and client.python == sys.executable
    assert client.generation == 1
    assert client.request("hello")["protocol_version"] == client.protocol.PROTOCOL_VERSION


def test_start_is_logged(tmp_path, caplog):
    c = C.BackendClient(log_path=tmp_path / "backend.log")
    with caplog.at_level(logging.INFO, logger="dreamwaltz.client"):
        c.request("status")
    c.close()
    assert any("starting the DreamWaltz backend with" in r.message and sys.executable in r.message
               for r in caplog.records)
    assert "serving on cpu" in (tmp_path / "backend.log").read_text()


def test_errors_are_backend_errors(client):
    with pytest.raises(C.BackendError) as e:
        client.request("no_such_op")
    assert e.value.code == "unknown_op"
    with pytest.raises(C.BackendError) as e:
        client.request("load_avatar", path="/definitely/not/here")
    assert e.value.code == "not_found" and "/definitely/not/here" in e.value.message
    with pytest.raises(C.BackendError) as e:
        client.request("render", width=4, height=4, camera={"world_to_camera": np.full((4, 4), np.nan), "K": np.eye(3)})
    assert e.value.code == "bad_request"
    assert client.request("hello")["pid"] == client.pid  # still the same backend


def test_submit_futures_in_parallel(client):
    futs = [client.submit("status") for _ in range(20)] + [client.submit("hello")]
    results = [client.result(f, 60) for f in futs]
    assert all("pid" in r for r in results)
    bad = client.submit("unload", object=123456)
    with pytest.raises(C.BackendError):
        bad.result(30)


def test_render_frames(client, avatar):
    W, H = 64, 48
    cam = front_camera(W, H)
    T = np.tile(np.eye(4), (55, 1, 1))
    f = client.render(camera=cam, width=W, height=H, avatars=[{"avatar": avatar, "transforms": T}])
    assert f["rgba"].shape == (H, W, 4) and f["depth"].shape == (H, W, 1)
    assert f["rgba"].flags.writeable and f["rgba"][..., 3].max() > 0.9
    assert set(f["timing"]) >= {"pose_ms", "raster_ms", "pack_ms", "request_ms", "copy_ms"}
    view = client.render(camera=cam, width=W, height=H, avatars=[{"avatar": avatar, "transforms": T}], copy=False)
    assert not view["rgba"].flags.writeable
    np.testing.assert_array_equal(view["rgba"], f["rgba"])
    out = {"rgba": np.zeros((H, W, 4), np.float32), "depth": np.zeros((H, W, 1), np.float32)}
    g = client.render(camera=cam, width=W, height=H, avatars=[{"avatar": avatar, "transforms": T}], out=out)
    assert g["rgba"] is out["rgba"]
    np.testing.assert_array_equal(out["depth"], f["depth"])
    flipped = client.render(camera=cam, width=W, height=H, avatars=[{"avatar": avatar, "transforms": T}],
                            flip_y=True, dtype="float16", slot="viewport")
    np.testing.assert_allclose(flipped["rgba"][::-1].astype(np.float32), f["rgba"], atol=2e-3)
    client.release("viewport")
    assert f"{client.hello['shm_prefix']}" and all(b["slot"] != "viewport" for b in client.request("status")["blocks"])


def test_rig_via_client(client, avatar, body):
    rig = client.rig(avatar)
    assert rig["joint_names"] == list(body.joint_names)
    assert rig["parents"].dtype == np.int64 and rig["parents"][0] == -1
    assert rig["vertices"].shape == (body.num_vertices, 3) and rig["faces"].dtype == np.int32
    assert rig["rest_joints"].shape == (55, 3)
    assert rig["skin_joints"].shape == rig["skin_weights"].shape == (body.num_vertices, 4)
    slots = [b["slot"] for b in client.request("status")["blocks"]]
    assert not any(s.startswith("rig") for s in slots)  # released after copying


def test_job_events(client):
    seen = []
    client.on_event = seen.append
    try:
        client.poll_events()
        job = client.job_start("selftest", steps=5, delay=0.01)
        final = client.wait_job(job, timeout=60)
    finally:
        client.on_event = None
    assert final["event"] == "job_done" and final["result"]["steps"] == 5
    polled = [e for e in client.poll_events() if e.get("job") == job]
    names = [e["event"] for e in polled]
    assert names == ["job_queued", "job_started"] + ["job_progress"] * 5 + ["job_done"]
    assert [e for e in seen if e.get("job") == job] == polled
    assert client.poll_events() == []


# ---- fake backends: start-up failures and timeouts ---------------------------------------------
FAKE_SERVER = textwrap.dedent("""
    import json, os, sys
    mode = os.environ.get("FAKE_MODE", "ok")
    print("fake backend starting in mode " + mode, file=sys.stderr, flush=True)
    if mode == "no_torch":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("ModuleNotFoundError: No module named 'torch'", file=sys.stderr, flush=True)
        sys.exit(1)
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        if op == "hello":
            if mode == "silent":
                continue
            v = 999 if mode == "mismatch" else 1
            print(json.dumps({"id": msg["id"], "ok": True, "protocol_version": v, "pid": os.getpid(),
                              "shm_prefix": "dw_%d_" % os.getpid()}), flush=True)
        elif op == "hang":
            continue
        elif op == "make_blocks":  # blocks made without any resource tracker, like a killed server's
            import _posixshmem
            names = []
            for n in (1, 2):
                name = "dw_%d_%d" % (os.getpid(), n)
                fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_RDWR, 0o600)
                os.ftruncate(fd, 4096)
                os.close(fd)
                names.append(name)
            arrays = {"a": {"shm": names[0], "offset": 0, "dtype": "uint8", "shape": [16]}}
            print(json.dumps({"id": msg["id"], "ok": True, "slot": "frame", "block": names[0], "arrays": arrays}), flush=True)
        elif op == "die":
            print("fake backend: dying as asked", file=sys.stderr, flush=True)
            os._exit(3)
        elif op == "noisy":  # lines a broken backend might write before its real reply
            rid = msg["id"]
            for bad in ('{"id": %d, "ok": true, "x": NaN}' % rid, '{"id": %d, "ok": true, "x": 1e999}' % rid,
                        "[" * 100000 + "]" * 100000, '{"event": 5, "job": [[[[]]]]}', "not json at all"):
                print(bad, flush=True)
            print(json.dumps({"id": rid, "ok": True, "slot": "x", "arrays": {"a": {"shm": 5, "offset": -1}}}), flush=True)
        else:
            print(json.dumps({"id": msg["id"], "ok": True}), flush=True)
            if op == "shutdown":
                break
""")


@pytest.fixture
def fake_python(tmp_path):
    server = tmp_path / "fake_server.py"
    server.write_text(FAKE_SERVER)
    exe = tmp_path / "fakepython"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {server}\n")
    exe.chmod(0o755)
    return exe


def test_request_timeout(fake_python):
    c = C.BackendClient(fake_python)
    try:
        t0 = time.monotonic()
        with pytest.raises(C.BackendError) as e:
            c.request("hang", timeout=0.5)
        assert e.value.code == "timeout" and "'hang'" in e.value.message
        assert time.monotonic() - t0 < 5
        assert c.request("status") == {}  # the backend is still there
    finally:
        c.close()


def test_garbage_from_the_backend_is_skipped(fake_python):
    """The add-on decodes with the protocol's own rules: NaN, infinities, deep nesting and junk
    are logged and skipped; a reply whose arrays make no sense is an error; the reader lives on."""
    c = C.BackendClient(fake_python)
    try:
        reply = c.request("noisy", timeout=30)
        assert "x" not in reply
        with pytest.raises(C.BackendError) as e:
            c.arrays(reply)
        assert e.value.code == "internal" and "names its arrays wrongly" in e.value.message
        assert c.request("status", timeout=30) == {}
    finally:
        c.close()


def test_start_failures(fake_python, tmp_path):
    c = C.BackendClient(tmp_path / "no" / "python")
    with pytest.raises(C.BackendError) as e:
        c.request("hello")
    assert e.value.code == "start_failed" and "does not exist" in e.value.message

    c = C.BackendClient(fake_python, env={"FAKE_MODE": "no_torch"})
    with pytest.raises(C.BackendError) as e:
        c.request("hello")
    assert e.value.code == "start_failed" and "has no torch" in e.value.message
    assert "No module named 'torch'" in e.value.message  # the log's tail

    c = C.BackendClient(fake_python, env={"FAKE_MODE": "mismatch"})
    with pytest.raises(C.BackendError) as e:
        c.request("hello")
    assert e.value.code == "version_mismatch" and "999" in e.value.message
    assert not c.alive

    c = C.BackendClient(fake_python, env={"FAKE_MODE": "silent"}, start_timeout=1.0)
    with pytest.raises(C.BackendError) as e:
        c.request("status")
    assert e.value.code == "start_failed" and "did not answer" in e.value.message
    assert not c.alive


def test_fake_backend_dies_one_clear_error_then_restarts(fake_python):
    c = C.BackendClient(fake_python)
    try:
        pid = c.start()["pid"]
        reply = c.request("make_blocks")
        assert c.arrays(reply)["a"].shape == (16,)
        assert shm_entries(f"dw_{pid}_") == [f"dw_{pid}_1", f"dw_{pid}_2"]
        hung = [c.submit("hang") for _ in range(3)]
        with pytest.raises(C.BackendError) as e:
            c.request("die")
        err = e.value
        assert err.code == "backend_died" and "exit code 3" in err.message and "dying as asked" in err.message
        for f in hung:  # every request in flight gets the same error
            assert f.exception(5) is err
        died = [ev for ev in c.poll_events() if ev["event"] == "backend_died"]
        assert len(died) == 1 and died[0]["returncode"] == 3
        assert shm_entries(f"dw_{pid}_") == []  # the client removed the dead backend's blocks
        assert c.request("status") == {} and c.pid != pid and c.generation == 2
    finally:
        c.close()


# ---- killing the real backend -----------------------------------------------------------------------
def test_sigkill_during_job_then_resume(tmp_path):
    c = C.BackendClient()
    try:
        c.render(camera=front_camera(32, 32), width=32, height=32)
        prefix = c.hello["shm_prefix"]
        assert shm_entries(prefix)
        out = tmp_path / "job"
        job = c.job_start("selftest", steps=400, delay=0.02, out=str(out))
        deadline = time.monotonic() + 60
        while not (out / "checkpoints" / "selftest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        old_pid = c.pid
        os.kill(old_pid, signal.SIGKILL)
        with pytest.raises(C.BackendError) as e:
            c.wait_job(job, timeout=30)
        assert e.value.code == "backend_died" and "SIGKILL" in e.value.message
        assert shm_entries(prefix) == []
        # the next request starts a fresh backend, and the job resumes from its checkpoint
        job2 = c.job_start("selftest", steps=400, delay=0.0, out=str(out), resume=True)
        assert c.pid != old_pid and c.generation == 2
        final = c.wait_job(job2, timeout=60)
        assert final["event"] == "job_done" and final["result"]["resumed_from"] > 0
    finally:
        c.close()


def test_sigkill_during_render(avatar_dir):
    c = C.BackendClient()
    try:
        h = c.request("load_avatar", path=str(avatar_dir))["avatar"]
        T = np.tile(np.eye(4), (55, 1, 1))
        cam = front_camera(1280, 720, distance=1.2)
        c.render(camera=front_camera(64, 64), width=64, height=64, avatars=[{"avatar": h, "transforms": T}])
        prefix = c.hello["shm_prefix"]
        before = shm_entries(prefix)
        assert before
        fut = c.submit("render", camera=cam, width=1280, height=720, slot="big",
                       avatars=[{"avatar": h, "transforms": T}] * 6)
        deadline = time.monotonic() + 60
        while c.request("status")["serving"] != "render" and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(c.pid, signal.SIGKILL)
        err = fut.exception(30)
        assert isinstance(err, C.BackendError) and err.code == "backend_died"
        assert "killed by SIGKILL" in err.message and "serving on cpu" in err.message  # the log's tail
        assert shm_entries(prefix) == []
        # fresh backend, old handles gone, rendering works again
        with pytest.raises(C.BackendError) as e:
            c.request("rig", avatar=h)
        assert e.value.code == "not_found"
        h2 = c.request("load_avatar", path=str(avatar_dir))["avatar"]
        f = c.render(camera=front_camera(32, 32), width=32, height=32, avatars=[{"avatar": h2, "transforms": T}])
        assert f["rgba"][..., 3].max() > 0.5
    finally:
        c.close()
    assert shm_entries(prefix) == []


def test_no_leak_after_a_session(avatar_dir, tmp_path):
    c = C.BackendClient()
    c.start()
    prefix = c.hello["shm_prefix"]
    h = c.request("load_avatar", path=str(avatar_dir))["avatar"]
    T = identity_transforms()
    for slot in ("frame", "viewport", "final"):
        for size in (16, 24):
            c.render(camera=front_camera(size, size), width=size, height=size, avatars=[{"avatar": h, "transforms": T}],
                     slot=slot)
    c.rig(h)
    c.request("load_motion", path=str(_motion(tmp_path)), slot="motion")
    assert len(shm_entries(prefix)) == 4  # three render slots + the motion (rig released)
    pid = c.pid
    c.close()
    assert shm_entries(prefix) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _motion(tmp_path: Path) -> Path:
    from backend.motion import Motion, save_motion

    path = tmp_path / "m.npz"
    save_motion(Motion.from_full_pose(30.0, np.zeros((3, 55, 3), np.float32), np.zeros((3, 3), np.float32)), path)
    return path


def test_attaching_does_not_hand_blocks_to_the_resource_tracker(tmp_path):
    """A client process that maps a block and exits must not unlink it (the server owns it)."""
    shm = shared_memory.SharedMemory(create=True, size=4096, name=f"dw_{os.getpid()}_tracker")
    try:
        shm.buf[:4] = b"\x01\x02\x03\x04"
        code = textwrap.dedent(f"""
            import importlib.util
            spec = importlib.util.spec_from_file_location("dwc", {str(ROOT / 'dreamwaltz_blender' / 'client.py')!r})
            m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
            mp = m._Mapping({shm.name!r})
            a = mp.array({{"offset": 0, "dtype": "uint8", "shape": [4]}})
            print(a.tolist())
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[1, 2, 3, 4]"
        assert "leaked" not in out.stderr and "resource_tracker" not in out.stderr
        assert shm.name in shm_entries()
    finally:
        shm.close()
        shm.unlink()


def test_close_is_idempotent_and_restartable(avatar_dir):
    c = C.BackendClient()
    c.close()  # never started: nothing to do
    first = c.start()["pid"]
    c.close()
    c.close()
    assert not c.alive
    assert c.request("hello")["pid"] != first
    c.close()


def test_copy_array_split_over_threads(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(C, "_COPY_POOL", [ThreadPoolExecutor(3)])
    monkeypatch.setattr(C, "PARALLEL_MIN_BYTES", 1)
    src = np.random.default_rng(1).random((101, 5, 4)).astype(np.float32)
    dst = np.empty_like(src)
    assert C.copy_array(dst, src) is dst
    np.testing.assert_array_equal(dst, src)
    one = np.zeros((1, 3))
    C.copy_array(one, np.ones((1, 3)))
    assert one.sum() == 3
