"""The backend server end to end on the CPU: the real `python -m backend serve` process, raw
JSON lines on its pipes, frames read back from shared memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest

from .test_server_support import RawServer, front_camera, identity_transforms, shm_entries


def read_array(spec: dict) -> np.ndarray:
    shm = shared_memory.SharedMemory(name=spec["shm"])
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # the server owns it
        count = int(np.prod(spec["shape"]))
        return np.frombuffer(shm.buf, dtype=spec["dtype"], count=count, offset=spec["offset"]).reshape(spec["shape"]).copy()
    finally:
        shm.close()


@pytest.fixture(scope="module")
def server():
    s = RawServer()
    hello = s.ok("hello")
    s.hello = hello
    yield s
    s.close()


@pytest.fixture(scope="module")
def avatar(server, avatar_dir):
    return server.ok("load_avatar", path=str(avatar_dir))


# ---- handshake and faults ----------------------------------------------------------------
def test_hello(server):
    h = server.hello
    from backend import __version__
    from backend import protocol as P

    assert h["protocol_version"] == P.PROTOCOL_VERSION
    assert h["backend_version"] == __version__
    assert h["device"]["type"] == "cpu" and h["device"]["name"] and h["device"]["memory_bytes"] > 0
    assert h["rasterizer"] == "torch"
    assert h["body_model"]["kind"] == "template" and len(h["body_model"]["content_sha256"]) == 64
    assert h["shm_prefix"] == f"dw_{server.proc.pid}_"
    assert {"render_motion", "train", "selftest"} <= set(h["job_kinds"])


def test_stdout_carries_only_protocol(server):
    for line in server.raw:
        msg = json.loads(line)
        assert "id" in msg or "event" in msg


@pytest.mark.parametrize("line, code", [
    (b"this is not json", "bad_json"),
    (b"[1, 2, 3]", "bad_json"),
    (b"\xff\xfe{}", "bad_json"),
    (b'{"id": 1, "op": "render", "width": NaN}', "bad_json"),
    (b'{"op": "hello"}', "bad_request"),
    (b'{"id": "seven", "op": "hello"}', "bad_request"),
    (b'{"id": true, "op": "hello"}', "bad_request"),
    (b'{"id": 5}', "bad_request"),
    (b'{"id": 5, "op": 12}', "bad_request"),
    (b'{"id": 5, "op": "fly_to_the_moon"}', "unknown_op"),
    (b'{"id": 5, "op": "load_avatar"}', "bad_request"),
    (b'{"id": 5, "op": "load_avatar", "path": 3}', "bad_request"),
    (b'{"id": 5, "op": "render", "width": "wide", "height": 4, "camera": {}}', "bad_request"),
    (b'{"id": 5, "op": "render", "width": 4.5, "height": 4, "camera": {}}', "bad_request"),
    (b'{"id": 5, "op": "job_cancel", "job": 424242}', "not_found"),
    (b'{"id": 5, "op": "unload_avatar", "avatar": 999}', "not_found"),
    (b'{"id": 5, "op": "job_start", "kind": "no_such_kind"}', "bad_request"),
    # valid JSON that must not get in: infinities spelled as numbers, 64-bit overflow, deep nesting
    (b'{"id": 5, "op": "job_start", "kind": "selftest", "params": {"delay": 1e999}}', "bad_json"),
    (b'{"id": 5, "op": "render", "width": 4, "height": 4, "camera": {"near": -1e400}}', "bad_json"),
    (b'{"id": 5, "op": "shutdown", "wait": 99999999999999999999999}', "bad_json"),
    # paths are absolute: the backend's working folder is nobody's business
    (b'{"id": 5, "op": "load_avatar", "path": "avatars/mannequin"}', "bad_request"),
    (b'{"id": 5, "op": "load_motion", "path": "dance.pkl"}', "bad_request"),
    (b'{"id": 5, "op": "load_ply", "path": "./scene.ply"}', "bad_request"),
    (b'{"id": 5, "op": "export_ply", "avatar": 1, "path": "out.ply"}', "bad_request"),
    (b'{"id": 5, "op": "job_start", "kind": "selftest", "params": {"out": "runs/a"}}', "bad_request"),
])
def test_faults_are_error_replies(server, line, code):
    server.send_line(line)
    try:
        rid = json.loads(line).get("id")
    except (ValueError, AttributeError):
        rid = None
    if isinstance(rid, bool) or code == "bad_json":
        rid = None  # unparsable lines and boolean ids are answered with id null
    reply = server.wait_reply(rid, timeout=30)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"]["message"] and len(reply["error"]["message"]) < 400
    assert server.ok("hello")["protocol_version"] == 1


VALID_CAMERA = '"camera": {"world_to_camera": [[1,0,0,0],[0,1,0,0],[0,0,1,3],[0,0,0,1]], "K": [[4,0,2],[0,4,2],[0,0,1]]}'


@pytest.mark.parametrize("field, value", [("depth_empty", "1e308"), ("background", "[1e300, 0, 0]")])
def test_finite_values_beyond_float32_are_refused_by_name(server, field, value):
    """A request valid in every other way: only the value float32 maths cannot hold is wrong."""
    server.send_line(f'{{"id": 5, "op": "render", "width": 4, "height": 4, {VALID_CAMERA}, "{field}": {value}}}'.encode())
    reply = server.wait_reply(5, timeout=30)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
    assert field in reply["error"]["message"], reply


@pytest.mark.parametrize("name, line", [
    ("400_digits", b'{"id": 5, "op": "shutdown", "wait": ' + b"9" * 400 + b"}"),
    ("40_deep", b'{"id": 5, "op": "status", "x": ' + b"[" * 40 + b"]" * 40 + b"}"),
    ("100000_deep", b'{"id": 5, "op": "status", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("deep_objects", b'{"id": 5, "op": "status", "x": ' + b'{"a":' * 50 + b"1" + b"}" * 50 + b"}"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_oversized_numbers_and_nesting_are_bad_json(server, name, line):
    server.send_line(line)
    reply = server.wait_reply(None, timeout=30)
    assert reply["error"]["code"] == "bad_json", reply
    assert server.ok("hello")


def test_hostile_motion_files_are_error_replies(server, tmp_path):
    """The crafted files of test_motion_safety (deep nesting, object pointers, memory bombs, a zip
    bomb) through the real server: one file_error each, no crash, no memory taken."""
    from .test_motion_safety import HOSTILE_PICKLES, hostile_array_files

    def peak() -> int:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) << 10

    paths = list(hostile_array_files(tmp_path).values())
    for name, (data, _) in HOSTILE_PICKLES.items():
        paths.append(tmp_path / f"{name}.pkl")
        paths[-1].write_bytes(data)
    before = peak()
    for path in paths:
        err = server.error("load_motion", path=str(path))
        assert err["code"] == "file_error" and str(path) in err["message"], err
    assert server.ok("hello") and server.proc.poll() is None
    assert peak() - before < 300 << 20, f"the server's peak memory grew by {(peak() - before) >> 20} MiB"


def test_status_keeps_answering_after_refused_numbers(server):
    """A request with 1e999 once made every later status reply fail to encode."""
    server.send_line(b'{"id": 77, "op": "job_start", "kind": "selftest", "params": {"steps": 1, "delay": 1e999}}')
    assert server.wait_reply(None, timeout=30)["error"]["code"] == "bad_json"
    job = server.ok("job_start", kind="selftest", params={"steps": 1, "delay": 0.0})["job"]
    assert server.final_event(job)["event"] == "job_done"
    st = server.ok("status")
    assert st["jobs"]["finished"] and all(j["state"] == "done" for j in st["jobs"]["finished"])


def test_relative_paths_are_refused_by_name(server):
    err = server.error("load_motion", path="dance.pkl")
    assert "absolute path" in err["message"] and "dance.pkl" in err["message"]
    err = server.error("job_start", kind="render_motion", params={"avatar_path": "/a", "motion": "m.npz", "out": "/o"})
    assert "'motion'" in err["message"] and "absolute path" in err["message"]


def test_nonexistent_avatar_and_bad_folder(server, tmp_path):
    assert server.error("load_avatar", path=str(tmp_path / "nope"))["code"] == "not_found"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "avatar.json").write_text("{broken")
    err = server.error("load_avatar", path=str(tmp_path / "junk"))
    assert err["code"] == "avatar_error" and "corrupt" in err["message"]
    assert server.error("load_ply", path=str(tmp_path / "none.ply"))["code"] == "not_found"
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    assert server.error("load_ply", path=str(tmp_path / "bad.ply"))["code"] == "file_error"


def test_blank_lines_are_ignored(server):
    server.send_line(b"   ")
    server.send_line(b"")
    assert server.ok("hello")


# ---- avatars, rig, render ----------------------------------------------------------------
def test_load_avatar_is_cached(server, avatar, avatar_dir):
    assert avatar["avatar"] > 0 and avatar["num_gaussians"] == 6000
    assert avatar["meta"]["format"] == "dreamwaltz-avatar"
    again = server.ok("load_avatar", path=str(avatar_dir))
    assert again["avatar"] == avatar["avatar"] and again["cached"] is True
    st = server.ok("status")
    assert [a["avatar"] for a in st["avatars"]] == [avatar["avatar"]]


def test_rig(server, avatar, body):
    import torch

    r = server.ok("rig", avatar=avatar["avatar"])
    assert r["joint_names"] == list(body.joint_names) and r["parents"] == body.parents.tolist()
    assert r["num_expression"] == body.num_expression
    arrays = {k: read_array(v) for k, v in r["arrays"].items()}
    np.testing.assert_allclose(arrays["rest_joints"], body.rest_joints(torch.zeros(body.num_betas)).numpy(), atol=1e-5)
    verts, faces = body.template_mesh()
    np.testing.assert_allclose(arrays["vertices"], verts, atol=1e-5)
    np.testing.assert_array_equal(arrays["faces"], faces)
    w = body.skinning_weights.numpy()
    assert arrays["skin_joints"].shape == (len(verts), 4)
    np.testing.assert_allclose(arrays["skin_weights"].sum(1), 1.0, atol=1e-5)
    rows = np.arange(len(w))
    np.testing.assert_allclose(w[rows, arrays["skin_joints"][:, 0]], w.max(1))  # strongest first (ties either way)
    top4 = np.sort(w, 1)[:, -4:].sum(1, keepdims=True)
    picked = np.take_along_axis(w, arrays["skin_joints"].astype(np.int64), 1)
    np.testing.assert_allclose(arrays["skin_weights"], picked / top4, atol=1e-5)
    assert server.ok("release", slot="rig")["released"] == [r["block"]]
    assert r["block"] not in shm_entries()


def test_render_matches_direct_rasterization(server, avatar, small_avatar):
    import torch

    from backend.avatar import pose_with_transforms
    from backend.render import Camera, rasterize

    W, H = 96, 64
    cam = front_camera(W, H)
    T = np.tile(np.eye(4), (55, 1, 1))
    T[:, 0, 3] = 0.1  # shift the whole body
    r = server.ok("render", width=W, height=H, camera=cam,
                  avatars=[{"avatar": avatar["avatar"], "transforms": T.tolist()}])
    assert r["num_gaussians"] == 6000 and set(r["timing"]) == {"queue_ms", "pose_ms", "raster_ms", "pack_ms"}
    rgba = read_array(r["arrays"]["rgba"])
    depth = read_array(r["arrays"]["depth"])
    assert rgba.shape == (H, W, 4) and rgba.dtype == np.float32 and depth.shape == (H, W, 1)
    with torch.no_grad():
        g = pose_with_transforms(small_avatar, torch.as_tensor(T, dtype=torch.float32))
        ref = rasterize(g, Camera(np.array(cam["world_to_camera"]), np.array(cam["K"]), W, H, 0.05, 100.0),
                        backend="torch").numpy()
    np.testing.assert_allclose(rgba[..., :3], ref["rgb"], atol=1e-5)
    np.testing.assert_allclose(rgba[..., 3:], ref["alpha"], atol=1e-5)
    np.testing.assert_allclose(depth, ref["depth"], atol=1e-4)
    assert rgba[..., 3].max() > 0.9 and rgba[..., 3].min() == 0.0


def test_render_slot_reuse_flip_dtype_and_passes(server, avatar):
    cam = front_camera(40, 30)
    base = dict(width=40, height=30, camera=cam,
                avatars=[{"avatar": avatar["avatar"], "transforms": identity_transforms()}])
    a = server.ok("render", slot="t1", **base)
    b = server.ok("render", slot="t1", **base)
    assert a["block"] == b["block"]  # same size -> same block
    flipped = server.ok("render", slot="t1", flip_y=True, depth_empty=1e10, **base)
    assert flipped["block"] == a["block"]
    rgba_f = read_array(flipped["arrays"]["rgba"])
    depth_f = read_array(flipped["arrays"]["depth"])
    plain = server.ok("render", slot="t2", **base)
    rgba = read_array(plain["arrays"]["rgba"])
    np.testing.assert_array_equal(rgba_f, rgba[::-1])
    empty = read_array(plain["arrays"]["rgba"])[..., 3] == 0
    assert (depth_f[::-1][empty] == 1e10).all()
    half = server.ok("render", slot="t1", dtype="float16", passes=["rgba"], **base)
    assert half["block"] != a["block"] and a["block"] not in shm_entries()  # size changed -> replaced
    assert set(half["arrays"]) == {"rgba"}
    rgba16 = read_array(half["arrays"]["rgba"])
    assert rgba16.dtype == np.float16
    np.testing.assert_allclose(rgba16.astype(np.float32), rgba, atol=2e-3)
    depth_only = server.ok("render", slot="t3", passes=["depth"], **base)
    assert set(depth_only["arrays"]) == {"depth"}
    bg = server.ok("render", slot="t3", passes=["rgba"], background=[0.0, 1.0, 0.0], **base)
    rgba_bg = read_array(bg["arrays"]["rgba"])
    np.testing.assert_allclose(rgba_bg[empty][:, :3], [[0.0, 1.0, 0.0]] * int(empty.sum()), atol=1e-6)
    released = server.ok("release", all=True)["released"]
    assert len(released) >= 3 and not shm_entries(server.prefix)


def test_render_linear_color_and_orthographic_camera(server, avatar, small_avatar):
    """`color: "linear"` turns the avatar's display colours into scene-linear ones (premultiplied,
    edges keep their alpha); `camera.model: "ortho"` draws through an orthographic camera, its
    near plane behind the camera allowed."""
    import torch

    from backend.avatar import pose_with_transforms
    from backend.render import Camera, rasterize

    W, H = 48, 40
    cam = front_camera(W, H)
    items = [{"avatar": avatar["avatar"], "transforms": identity_transforms()}]
    srgb = read_array(server.ok("render", width=W, height=H, camera=cam, avatars=items, slot="c1")["arrays"]["rgba"])
    lin = read_array(server.ok("render", width=W, height=H, camera=cam, avatars=items, color="linear",
                               slot="c2")["arrays"]["rgba"])
    np.testing.assert_array_equal(lin[..., 3], srgb[..., 3])
    a = srgb[..., 3:]
    c = np.clip(srgb[..., :3] / np.maximum(a, 1e-12), 0, 1)
    expected = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) * a
    np.testing.assert_allclose(lin[..., :3], expected, atol=2e-6)
    assert (lin[..., :3] < srgb[..., :3] - 1e-3).any(), "mid-tones get darker in linear"

    K = [[16.0, 0.0, W / 2], [0.0, 16.0, H / 2], [0.0, 0.0, 1.0]]  # 16 pixels per metre
    ortho = dict(cam, K=K, near=-5.0, far=50.0, model="ortho")
    r = server.ok("render", width=W, height=H, camera=ortho, avatars=items, slot="c3")
    got = read_array(r["arrays"]["rgba"])
    with torch.no_grad():
        g = pose_with_transforms(small_avatar, torch.as_tensor(np.tile(np.eye(4), (55, 1, 1)), dtype=torch.float32))
        ref = rasterize(g, Camera(np.array(cam["world_to_camera"]), np.array(K), W, H, -5.0, 50.0, model="ortho"),
                        backend="torch").numpy()
    np.testing.assert_allclose(got[..., 3:], ref["alpha"], atol=1e-5)
    assert ref["alpha"].max() > 0.9
    for bad in (dict(cam, model="fisheye"), dict(ortho, near=2.0, far=1.0), dict(cam, near=-1.0)):
        assert server.error("render", width=W, height=H, camera=bad, slot="c3")["code"] == "bad_request", bad
    assert server.error("render", width=W, height=H, camera=cam, color="rec709", slot="c3")["code"] == "bad_request"
    server.ok("release", all=True)


def test_render_empty_scene_and_errors(server, avatar):
    cam = front_camera(16, 8)
    r = server.ok("render", width=16, height=8, camera=cam, slot="e")
    assert r["num_gaussians"] == 0 and read_array(r["arrays"]["rgba"]).max() == 0
    bad = [
        (dict(width=0, height=8, camera=cam), "bad_request"),
        (dict(width=16, height=8, camera={"K": cam["K"]}), "bad_request"),
        (dict(width=16, height=8, camera=dict(cam, K=[[0, 0, 8], [0, 1, 4], [0, 0, 1]])), "bad_request"),
        (dict(width=16, height=8, camera=dict(cam, world_to_camera=[[1, 2], [3, 4]])), "bad_request"),
        (dict(width=16, height=8, camera=dict(cam, near=5, far=1)), "bad_request"),
        (dict(width=16, height=8, camera=cam, passes=["rgb"]), "bad_request"),
        (dict(width=16, height=8, camera=cam, dtype="uint8"), "bad_request"),
        (dict(width=16, height=8, camera=cam, slot="no/slashes"), "bad_request"),
        (dict(width=16, height=8, camera=cam, avatars=[{"avatar": 9999, "transforms": identity_transforms()}]), "not_found"),
        (dict(width=16, height=8, camera=cam, avatars=[{"avatar": avatar["avatar"]}]), "bad_request"),
        (dict(width=16, height=8, camera=cam, avatars=[{"avatar": avatar["avatar"], "transforms": [[1, 2, 3]]}]), "bad_request"),
        (dict(width=16, height=8, camera=cam, avatars=[{"avatar": avatar["avatar"], "transforms": [["a"] * 16] * 55}]), "bad_request"),
        (dict(width=16, height=8, camera=cam, avatars=["not an object"]), "bad_request"),
        (dict(width=16, height=8, camera=cam, objects=[{"object": 12345}]), "not_found"),
        (dict(width=16, height=8, camera=cam, rasterizer="gsplat", avatars=[{"avatar": avatar["avatar"], "transforms": identity_transforms()}]), "render_error"),
    ]
    for fields, code in bad:
        err = server.error("render", **fields)
        assert err["code"] == code, (fields, err)
    server.ok("release", slot="e")


def test_static_objects_compose_depth_correct(server, avatar, tmp_path):
    import torch

    from backend.ply import write_ply
    from backend.render import GaussianSet

    # a red wall of Gaussians 1 m behind the avatar's origin, in its own frame at z = 0
    xs, ys = np.meshgrid(np.linspace(-1.5, 1.5, 40), np.linspace(-1.0, 2.0, 40))
    n = xs.size
    means = np.stack([xs.ravel(), ys.ravel(), np.zeros(n)], 1)
    g = GaussianSet(means=torch.tensor(means, dtype=torch.float32), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                    scales=torch.full((n, 3), 0.05), opacities=torch.full((n,), 0.99),
                    colors=torch.tensor([[1.0, 0.0, 0.0]]).repeat(n, 1))
    write_ply(tmp_path / "wall.ply", g)
    obj = server.ok("load_ply", path=str(tmp_path / "wall.ply"))
    assert obj["num_gaussians"] == n and obj["bounds"]["min"][0] == pytest.approx(-1.5)
    assert server.ok("load_ply", path=str(tmp_path / "wall.ply"))["cached"] is True
    W, H = 48, 64
    cam = front_camera(W, H)
    behind = np.eye(4)
    behind[2, 3] = -1.0
    scene = dict(width=W, height=H, camera=cam, slot="scene",
                 avatars=[{"avatar": avatar["avatar"], "transforms": identity_transforms()}])
    r = server.ok("render", objects=[{"object": obj["object"], "matrix": behind.tolist()}], **scene)
    rgba = read_array(r["arrays"]["rgba"])
    depth = read_array(r["arrays"]["depth"])
    alone = read_array(server.ok("render", **dict(scene, slot="alone"))["arrays"]["rgba"])
    body = alone[..., 3] > 0.95
    wall_only = (alone[..., 3] < 0.01) & (rgba[..., 3] > 0.9)
    assert body.sum() > 50 and wall_only.sum() > 50
    # where the body is, it is in front of the wall: its colour wins and depth is the body's (< 4 m)
    np.testing.assert_allclose(rgba[body][:, :3], alone[body][:, :3], atol=0.05)
    assert np.median(depth[wall_only]) == pytest.approx(4.0, abs=0.05)
    assert np.median(depth[body]) < 3.3
    # a wall in front of the avatar hides it
    front = np.eye(4)
    front[2, 3] = 1.0
    r2 = server.ok("render", objects=[{"object": obj["object"], "matrix": front.tolist()}], **scene)
    hidden = read_array(r2["arrays"]["rgba"])
    assert hidden[body][:, 0].mean() > 0.9 and hidden[body][:, 1].mean() < 0.05
    # a scaled, rotated placement: the transform agrees with transforming the means and covariances
    from backend.server.render_ops import transform_gaussians
    from backend.render.torch_rasterizer import quat_to_rotmat

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    for A in (q * 1.7, q @ np.diag([0.5, 2.0, 1.0])):
        M = np.eye(4)
        M[:3, :3] = A
        M[:3, 3] = [0.3, -0.2, 0.1]
        small = g[:20]
        out = transform_gaussians(small, M)
        np.testing.assert_allclose(out.means.numpy(), small.means.numpy() @ A.T + M[:3, 3], atol=1e-5)

        def cov(gs):
            R = quat_to_rotmat(gs.quats).double()
            S = gs.scales.double()
            return (R * S[:, None, :] ** 2) @ R.transpose(1, 2)

        At = torch.tensor(A)
        np.testing.assert_allclose(cov(out).numpy(), (At @ cov(small) @ At.T).numpy(), atol=1e-5)
    assert server.ok("unload", object=obj["object"])["object"] == obj["object"]
    assert server.error("unload", object=obj["object"])["code"] == "not_found"
    server.ok("release", all=True)


def test_export_ply(server, avatar, tmp_path):
    from backend.ply import read_ply

    r = server.ok("export_ply", avatar=avatar["avatar"], path=str(tmp_path / "a.ply"))
    assert r["num_gaussians"] == 6000 and r["posed"] is False
    assert len(read_ply(tmp_path / "a.ply")) == 6000
    T = np.tile(np.eye(4), (55, 1, 1))
    T[:, 1, 3] = 2.0
    r = server.ok("export_ply", avatar=avatar["avatar"], path=str(tmp_path / "b.ply"), transforms=T.tolist())
    assert r["posed"] is True
    a, b = read_ply(tmp_path / "a.ply"), read_ply(tmp_path / "b.ply")
    assert float((b.means[:, 1] - a.means[:, 1]).mean()) == pytest.approx(2.0, abs=0.05)
    assert server.error("export_ply", avatar=avatar["avatar"], path=str(tmp_path / "a.txt"))["code"] == "bad_request"


def test_unload_avatar(server, tmp_path, small_avatar):
    from backend.avatar import save_avatar

    folder = save_avatar(small_avatar, tmp_path / "second")
    h = server.ok("load_avatar", path=str(folder))["avatar"]
    assert server.ok("unload_avatar", avatar=h)["avatar"] == h
    err = server.error("rig", avatar=h)
    assert err["code"] == "not_found"


# ---- jobs -----------------------------------------------------------------------------------
def test_job_progress_queue_and_cancel(server, tmp_path):
    j1 = server.ok("job_start", kind="selftest", params={"steps": 40, "delay": 0.05, "out": str(tmp_path / "j1")})
    j2 = server.ok("job_start", kind="selftest", params={"steps": 3, "delay": 0.01})
    j3 = server.ok("job_start", kind="selftest", params={"steps": 3, "delay": 0.01})
    assert j2["state"] == "queued" and j2["position"] >= 1
    server.wait_event(lambda e: e["event"] == "job_progress" and e["job"] == j1["job"] and e["step"] >= 3)
    st = server.ok("status")["jobs"]
    assert st["running"]["job"] == j1["job"] and [j["job"] for j in st["queue"]] == [j2["job"], j3["job"]]
    # a render is served while the job runs
    server.ok("render", width=8, height=8, camera=front_camera(8, 8), slot="during")
    assert server.ok("job_cancel", job=j3["job"])["state"] == "cancelled"
    c = server.ok("job_cancel", job=j1["job"])
    assert c["state"] in ("cancelling", "cancelled")
    final1 = server.final_event(j1["job"])
    assert final1["event"] == "job_cancelled" and 3 <= final1["result"]["step"] < 40
    final2 = server.final_event(j2["job"])
    assert final2["event"] == "job_done" and final2["result"] == {"steps": 3, "resumed_from": 0}
    assert server.final_event(j3["job"])["event"] == "job_cancelled"
    events = server.job_events(j1["job"])
    names = [e["event"] for e in events]
    assert names[0] == "job_queued" and names[1] == "job_started" and names[-1] == "job_cancelled"
    prog = [e for e in events if e["event"] == "job_progress"]
    assert [e["step"] for e in prog] == list(range(1, len(prog) + 1))
    assert all(e["stage"] == "count" and e["total"] == 40 and "elapsed" in e and "loss" in e for e in prog)
    assert prog[-1]["eta"] is not None and prog[-1]["eta"] > 0
    # resume continues from the checkpoint the cancelled run left
    j4 = server.ok("job_start", kind="selftest", params={"steps": 40, "delay": 0.0, "out": str(tmp_path / "j1"), "resume": True})
    final4 = server.final_event(j4["job"])
    assert final4["event"] == "job_done" and final4["result"]["resumed_from"] == final1["result"]["step"]
    assert server.ok("job_status", job=j4["job"])["state"] == "done"
    all_jobs = server.ok("job_status")
    assert {j["job"] for j in all_jobs["finished"]} >= {j1["job"], j2["job"], j3["job"], j4["job"]}
    server.ok("release", slot="during")


def test_job_failure_and_bad_params(server):
    j = server.ok("job_start", kind="selftest", params={"steps": 5, "delay": 0.0, "fail_at": 2})
    final = server.final_event(j["job"])
    assert final["event"] == "job_failed" and final["error"]["code"] == "job_error" and "step 2" in final["error"]["message"]
    err = server.error("job_start", kind="selftest", params={"steps": "many"})
    assert err["code"] == "bad_request" and "steps" in err["message"]
    err = server.error("job_start", kind="render_motion", params={"motion": "/nope.npz", "out": "/tmp/x", "avatar": 1})
    assert err["code"] in ("bad_request", "not_found")


def test_train_kind_reports_unavailable_or_validates(server):
    reply = server.request("job_start", kind="train", params={})
    if not reply["ok"]:
        assert reply["error"]["code"] in ("unavailable", "bad_request")


def _write_motion(path: Path, frames: int = 6) -> Path:
    from backend.motion import Motion, save_motion

    pose = np.zeros((frames, 55, 3), np.float32)
    pose[:, 18, 2] = np.linspace(0, -1.2, frames)  # raise the left elbow over time
    transl = np.zeros((frames, 3), np.float32)
    transl[:, 0] = np.linspace(0, 0.3, frames)
    motion = Motion.from_full_pose(30.0, pose, transl)
    save_motion(motion, path)
    return path


def test_render_motion_job(server, avatar, tmp_path):
    from PIL import Image

    motion = _write_motion(tmp_path / "wave.npz")
    out = tmp_path / "frames"
    j = server.ok("job_start", kind="render_motion",
                  params={"avatar": avatar["avatar"], "motion": str(motion), "out": str(out), "width": 48, "height": 64})
    final = server.final_event(j["job"])
    assert final["event"] == "job_done", final
    assert final["result"]["rendered"] == 6 and final["result"]["skipped"] == 0
    files = sorted(out.glob("frame_*.png"))
    assert [f.name for f in files] == [f"frame_{i:05d}.png" for i in range(6)]
    prog = [e for e in server.job_events(j["job"]) if e["event"] == "job_progress" and e["stage"] == "render"]
    assert [e["step"] for e in prog] == list(range(1, 7)) and prog[-1]["path"] == str(files[-1])
    first, last = (np.asarray(Image.open(f)) for f in (files[0], files[-1]))
    assert first.shape == (64, 48, 4) and first[..., 3].max() == 255 and first[..., 3].min() == 0
    assert not np.array_equal(first, last)  # the body moved
    # resume skips what exists
    (files[2]).unlink()
    j2 = server.ok("job_start", kind="render_motion",
                   params={"avatar_path": avatar["path"], "motion": str(motion), "out": str(out), "width": 48,
                           "height": 64, "resume": True})
    final2 = server.final_event(j2["job"])
    assert final2["event"] == "job_done" and final2["result"]["rendered"] == 1 and final2["result"]["skipped"] == 5


def test_render_motion_cancel(server, avatar, tmp_path):
    motion = _write_motion(tmp_path / "long.npz", frames=200)
    j = server.ok("job_start", kind="render_motion",
                  params={"avatar": avatar["avatar"], "motion": str(motion), "out": str(tmp_path / "o"),
                          "width": 32, "height": 32})
    server.wait_event(lambda e: e["event"] == "job_progress" and e["job"] == j["job"] and e["stage"] == "render")
    server.ok("job_cancel", job=j["job"])
    final = server.final_event(j["job"])
    assert final["event"] == "job_cancelled"
    assert 0 < len(list((tmp_path / "o").glob("frame_*.png"))) < 200


def test_render_motion_real_data(server, avatar, shared_data, tmp_path):
    motion = sorted((shared_data / "motions" / "smplx265_npy").glob("*.npy"))[0]
    j = server.ok("job_start", kind="render_motion",
                  params={"avatar": avatar["avatar"], "motion": str(motion), "out": str(tmp_path / "real"),
                          "width": 32, "height": 32, "end": 3})
    final = server.final_event(j["job"])
    assert final["event"] == "job_done", final
    assert final["result"]["rendered"] == 3


# ---- ending ----------------------------------------------------------------------------------
def test_shutdown_serves_earlier_requests_and_unlinks(avatar_dir):
    s = RawServer()
    s.ok("hello")
    h = s.ok("load_avatar", path=str(avatar_dir))["avatar"]
    s.ok("render", width=32, height=32, camera=front_camera(32, 32),
         avatars=[{"avatar": h, "transforms": identity_transforms()}])
    assert shm_entries(s.prefix)
    job = s.ok("job_start", kind="selftest", params={"steps": 1000, "delay": 0.02})["job"]
    s.wait_event(lambda e: e["event"] == "job_started")
    rid_render = s.send("render", width=32, height=32, camera=front_camera(32, 32), slot="late")
    rid = s.send("shutdown", wait=5)
    assert s.wait_reply(rid_render)["ok"] is True
    assert s.wait_reply(rid)["ok"] is True
    assert s.proc.wait(30) == 0
    assert s.final_event(job, timeout=5)["event"] == "job_cancelled"
    assert shm_entries(s.prefix) == []


def test_full_shared_memory_is_an_error_reply_not_sigbus():
    """Docker's 64 MB /dev/shm, made real in a private mount namespace: the second 1080p frame
    does not fit. It is an error reply naming the remedy; releasing the first frame makes room."""
    from .test_server_support import small_shm_wrap

    wrap = small_shm_wrap(64)
    if wrap is None:
        pytest.skip("no private mount namespace here (needs root and util-linux unshare)")
    s = RawServer(wrap=wrap)
    try:
        frame = dict(width=1920, height=1080, camera=front_camera(1920, 1080))     # rgba + depth: 41.5 MB
        assert s.ok("render", slot="a", **frame)["arrays"]["rgba"]["shape"] == [1080, 1920, 4]
        err = s.error("render", slot="b", **frame)
        assert err["code"] == "unavailable" and "shared memory is full" in err["message"] and "--shm-size" in err["message"]
        assert s.ok("hello") and s.proc.poll() is None
        assert [b["slot"] for b in s.ok("status")["blocks"]] == ["a"]
        s.ok("release", slot="a")
        assert s.ok("render", slot="b", **frame)["slot"] == "b"
    finally:
        assert s.close() == 0


def test_control_sparse_shared_memory_dies_of_sigbus_when_full():
    """What the server did before: a block larger than what is left, written, kills with SIGBUS."""
    from .test_server_support import small_shm_wrap

    wrap = small_shm_wrap(64)
    if wrap is None:
        pytest.skip("no private mount namespace here (needs root and util-linux unshare)")
    code = ("from multiprocessing import shared_memory\n"
            "blocks = [shared_memory.SharedMemory(create=True, size=41472000) for _ in range(2)]\n"
            "for b in blocks:\n    b.buf[:] = bytes(b.size)\n")
    proc = subprocess.run([*wrap, sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-500:])


def test_end_of_input_shuts_down(avatar_dir):
    s = RawServer()
    s.ok("render", width=16, height=16, camera=front_camera(16, 16))
    assert shm_entries(s.prefix)
    s.proc.stdin.close()
    assert s.proc.wait(30) == 0
    assert shm_entries(s.prefix) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unlinks_blocks(sig):
    s = RawServer()
    s.ok("render", width=16, height=16, camera=front_camera(16, 16))
    s.ok("render", width=16, height=16, camera=front_camera(16, 16), slot="second")
    assert len(shm_entries(s.prefix)) == 2
    os.kill(s.proc.pid, sig)
    assert s.proc.wait(30) == 128 + sig
    assert shm_entries(s.prefix) == []


FAULTY_PLUGIN = """
import sys
from backend.server import register_job_kind
from backend.server.core import Server
print('hello from a plugin that prints')

def make(params, services):
    def run(ctx):
        print('printing inside a job')
        return {'ok': 1}
    return run

def exit_factory(params, services):
    sys.exit("a factory that exits")

def exit_run(params, services):
    def run(ctx):
        raise SystemExit("a job that exits")
    return run

def unjsonable(params, services):
    return lambda ctx: {"result": object()}

release = Server.op_release
def op_release(self, msg):          # the request thread: a handler that exits
    if msg.get("slot") == "exit":
        raise SystemExit(3)
    return release(self, msg)

Server.op_release = op_release
for name, f in (("noisy", make), ("exit_factory", exit_factory), ("exit_run", exit_run), ("unjsonable", unjsonable)):
    register_job_kind(name, f)
"""


def test_plugins_print_to_the_log_and_no_thread_dies(tmp_path):
    """Stray prints land in the log; SystemExit or an unencodable result in any thread (main,
    request, job) is an error reply or a failed job, and every thread keeps serving."""
    (tmp_path / "faulty_plugin.py").write_text(FAULTY_PLUGIN)
    s = RawServer("--plugin", "faulty_plugin", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    job = s.ok("job_start", kind="noisy")["job"]
    assert s.final_event(job)["result"] == {"ok": 1}
    assert s.error("job_start", kind="exit_factory")["code"] == "internal"          # main thread
    assert s.error("release", slot="exit")["code"] == "internal"                    # request thread
    assert s.ok("release", slot="other")["released"] == []
    for kind in ("exit_run", "unjsonable"):                                          # job thread
        job = s.ok("job_start", kind=kind)["job"]
        final = s.final_event(job)
        assert final["event"] in ("job_failed", "job_done") and s.proc.poll() is None, final
    job = s.ok("job_start", kind="selftest", params={"steps": 2, "delay": 0.0})["job"]
    assert s.final_event(job)["event"] == "job_done"
    t0 = time.monotonic()
    rid = s.send("shutdown", wait=1e300)                                             # clamped, not OverflowError
    assert s.wait_reply(rid)["ok"] is True and s.proc.wait(30) == 0
    assert time.monotonic() - t0 < 20
    assert all(json.loads(line) for line in s.raw)
    time.sleep(0.2)
    assert any("plugin that prints" in line for line in s.stderr_lines)


def test_load_motion(server, avatar, shared_data, tmp_path, body):
    from backend.motion import load_motion

    path = sorted((shared_data / "motions" / "amass_npz").glob("*.npz"))[0]
    r = server.ok("load_motion", path=str(path), fps=24.0, avatar=avatar["avatar"])
    ref = load_motion(path, body_model=body).resample(24.0)
    assert r["num_frames"] == ref.num_frames and r["fps"] == 24.0 and r["has_camera"] is False
    pose = read_array(r["arrays"]["full_pose"])
    np.testing.assert_allclose(pose, ref.full_pose, atol=1e-5)
    np.testing.assert_allclose(read_array(r["arrays"]["transl"]), ref.transl, atol=1e-5)
    assert server.ok("release", slot="motion")["released"] == [r["block"]]
    assert server.error("load_motion", path=str(tmp_path / "none.npz"))["code"] == "not_found"
    (tmp_path / "junk.npz").write_bytes(b"not a motion at all")
    assert server.error("load_motion", path=str(tmp_path / "junk.npz"))["code"] == "file_error"
    assert server.error("load_motion", path=str(path), fps=-1)["code"] == "bad_request"


def test_hello_survives_a_bad_smplx_path(tmp_path):
    s = RawServer("--smplx", str(tmp_path / "SMPLX_NEUTRAL_missing.npz"))
    try:
        h = s.ok("hello")
        assert h["body_model"]["error"]["code"] == "avatar_error"
        assert "does not exist" in h["body_model"]["error"]["message"]
    finally:
        assert s.close() == 0


def test_block_names_are_unpredictable_and_retried_when_taken(monkeypatch):
    """Another process that creates the next block's name first does not stop the server."""
    from backend import protocol as P
    from backend.server import shm

    tokens = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(shm.secrets, "token_hex", lambda n: next(tokens))
    pool = shm.ShmPool(pid=999_999)
    squatter = shared_memory.SharedMemory(name=P.block_name(999_999, 1, "aaaaaaaa"), create=True, size=16)
    try:
        block, _, views = pool.allocate("frame", [("x", "uint8", (16,))])
        assert block.name == "dw_999999_1_bbbbbbbb" and block.name.startswith(pool.prefix)
        views["x"][...] = 7
    finally:
        pool.release(None)
        squatter.close()
        squatter.unlink()
    monkeypatch.undo()
    a, b = shm.ShmPool(pid=999_998), shm.ShmPool(pid=999_998)
    try:
        names = {pool.allocate("frame", [("x", "uint8", (8,))])[0].name for pool in (a, b)}
        assert len(names) == 2        # same pid, same serial: the tokens differ
    finally:
        a.release(None)
        b.release(None)


def test_sh_of_a_static_scene_reaches_the_renderer_and_turns_with_the_object(server, tmp_path):
    """Issue 17: SH coefficients travel load_ply -> object matrix -> rasterizer -> shared memory;
    the frame matches an independent evaluation (gsplat's reference SH formulas) along the view
    directions expressed in the object's own frame."""
    import math

    import torch

    from backend.gsio import write_gaussians
    from backend.render import Camera, GaussianSet, rasterize
    from backend.server.render_ops import transform_gaussians

    from .test_gsio import sample
    from .test_sh import psnr, reference_colors

    s = sample(800, degree=3, seed=7, up="-y")
    s.means[:, 2] *= 0.2
    s.scales = s.scales * 0.5
    write_gaussians(tmp_path / "room.ply", s)
    obj = server.ok("load_ply", path=str(tmp_path / "room.ply"))
    assert obj["format"] == "ply" and obj["up"] == "-y" and obj["sh_degree"] == 3
    a = math.radians(35)
    M = np.eye(4)
    M[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    M[:3, 3] = [0.1, 0.2, -0.5]
    W, H = 40, 32
    cam = front_camera(W, H, distance=4.0)
    r = server.ok("render", width=W, height=H, camera=cam, slot="sh", rasterizer="torch",
                  objects=[{"object": obj["object"], "matrix": M.tolist()}])
    got = torch.as_tensor(read_array(r["arrays"]["rgba"])[..., :3].copy())
    camera = Camera(np.asarray(cam["world_to_camera"]), np.asarray(cam["K"]), W, H, cam["near"], cam["far"])
    g = s.to_gaussian_set()
    placed = transform_gaussians(g, M)
    # the object sees the camera from R^T (camera - t): evaluate there, in the file's own frame
    campos_obj = M[:3, :3].T @ (camera.position - M[:3, 3])
    ref_colors = reference_colors(g, campos_obj)
    ref = rasterize(GaussianSet(placed.means, placed.quats, placed.scales, placed.opacities, ref_colors), camera,
                    backend="torch").rgb
    no_sh = rasterize(GaussianSet(placed.means, placed.quats, placed.scales, placed.opacities,
                                  g.colors.clamp_min(0)), camera, backend="torch").rgb
    assert psnr(got, ref) > 45.0, psnr(got, ref)
    assert psnr(no_sh, ref) < psnr(got, ref) - 10.0
