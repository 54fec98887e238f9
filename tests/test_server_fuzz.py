"""Fuzzing the real server: thousands of random and malformed lines, and requests of every op
with every field set to hostile values (NaN, infinities, 1e999, 70-bit integers, nesting 60
deep, wrong types), each answered with an error (or a reply), never an internal one, and the
server still answers `hello` afterwards."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import protocol as P

from .test_server_support import RawServer, shm_entries

SAFE_OPS = [op for op in P.OPS if op != "shutdown"]
FIELDS = sorted({f for spec in P.OPS.values() for f in spec} | {"transforms", "matrix", "avatar", "object"})

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-300, 300), st.integers(),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)


@st.composite
def request_like(draw) -> bytes:
    msg = {}
    if draw(st.integers(0, 9)) > 0:  # now and then no id at all
        msg["id"] = draw(st.one_of(st.integers(1, 10**6), json_leaf))
    op = draw(st.one_of(st.sampled_from(SAFE_OPS), st.text(max_size=12)))
    if op != "shutdown":
        msg["op"] = op
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        msg[name] = draw(json_value)
    if msg.get("op") == "job_start":
        msg["kind"] = "fuzz_" + draw(st.text(max_size=5))  # never start a real job
    return json.dumps(msg).encode()


def _one_line(b: bytes) -> bytes:
    return b.replace(b"\n", b" ")


lines = st.one_of(
    st.binary(max_size=120).map(_one_line),
    st.text(max_size=120).map(lambda s: _one_line(s.encode("utf-8", "surrogatepass"))),
    json_value.map(lambda v: json.dumps(v).encode()),
    request_like(),
    request_like().map(lambda b: b[: len(b) // 2]),  # truncated
)


# ---- every op's fields with hostile values ------------------------------------------------------
# Values JSON can carry that must never get past decoding or validation: non-finite numbers
# (json.dumps writes NaN / Infinity; "1e999" is valid JSON that decodes to infinity), integers
# beyond 64 bits, nesting deeper than the protocol allows, and plain wrong types.
OVERFLOW = "\u0000OVERFLOW\u0000"          # replaced by 1e999 in the text: json.dumps cannot write it
hostile_leaf = st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf"), OVERFLOW, 2 ** 64, -(2 ** 70),
                                          1e308, -0.0, 0, -1, True, None, "", "../x", "/dev/null"]),
                         st.floats(), st.integers(-(2 ** 66), 2 ** 66), st.text(max_size=6))


@st.composite
def nested(draw, leaf=hostile_leaf) -> object:
    """A value nested 1 to 60 deep in lists and objects (the protocol allows 32)."""
    value = draw(leaf)
    for _ in range(draw(st.integers(1, 60))):
        value = [value] if draw(st.booleans()) else {draw(st.text(max_size=3)): value}
    return value


hostile_value = st.one_of(hostile_leaf, nested(), st.lists(hostile_leaf, max_size=4),
                          st.dictionaries(st.sampled_from(FIELDS), hostile_leaf, max_size=3), json_value)
finite_leaf = st.one_of(st.sampled_from([2 ** 62, -(2 ** 62), 1e308, -0.0, 0, 1, -1, True, None, "", "../x", "/nope",
                                         "frame", "rgba", "depth"]),
                        st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2 ** 62), 2 ** 62))
decodable_value = st.one_of(finite_leaf, nested(finite_leaf).filter(lambda v: _depth(v) <= P.MAX_DEPTH - 1),
                            st.lists(finite_leaf, max_size=60), st.lists(st.lists(finite_leaf, max_size=5), max_size=5),
                            st.dictionaries(st.sampled_from(FIELDS + ["world_to_camera", "K", "near", "far"]),
                                            finite_leaf, max_size=4), json_value)


def _depth(v) -> int:
    return 1 + max(map(_depth, v.values() if isinstance(v, dict) else v), default=0) if isinstance(v, (list, dict)) else 0


@st.composite
def hostile_request(draw) -> dict:
    """One request of one op with every field of that op set, each to a hostile or random value."""
    op = draw(st.sampled_from(SAFE_OPS))
    msg: dict = {"op": op}
    values = hostile_value if draw(st.booleans()) else decodable_value   # half get past decoding
    for name in P.OPS[op]:
        msg[name] = draw(values)
    if op == "job_start":
        msg["kind"] = draw(st.sampled_from(["selftest", "render_motion", "fuzz_x"]))
        if msg["kind"] == "selftest" and isinstance(msg.get("params"), dict):
            msg["params"]["steps"] = 0           # a selftest that could run finishes at once
    return msg


def hostile_line(msg: dict) -> bytes:
    text = json.dumps(msg)                       # allow_nan: writes NaN / Infinity
    return text.replace(json.dumps(OVERFLOW), "1e999").encode()


_IDS = itertools.count(5_000_000)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    nowhere = tmp_path_factory.mktemp("no-models")     # a train job a fuzzed request starts finds no model
    s = RawServer(env={"DREAMWALTZ_SD_MODEL": str(nowhere / "sd"), "DREAMWALTZ_CONTROLNET": str(nowhere / "cn"),
                       "HF_HOME": str(nowhere / "hf"), "HF_HUB_OFFLINE": "1"})
    s.ok("hello")
    yield s
    s.close()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(lines, min_size=40, max_size=120))
def test_fuzz_lines_then_hello(fuzz_server, batch):
    s = fuzz_server
    with s._cond:
        before = len(s.raw)
    expected = sum(1 for b in batch if b.strip())
    s.proc.stdin.write(b"".join(b + b"\n" for b in batch))
    s.proc.stdin.flush()
    reply = s.request("hello", timeout=60)
    assert reply["ok"] and reply["protocol_version"] == P.PROTOCOL_VERSION
    deadline = time.monotonic() + 30
    while True:
        with s._cond:
            got = [json.loads(x) for x in s.raw[before:]]
        replies = [m for m in got if "event" not in m]
        if len(replies) >= expected + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(replies) == expected + 1, (expected, len(replies))  # every line answered once
    for m in replies:
        assert m["ok"] in (True, False)
        if not m["ok"]:
            assert m["error"]["code"] in P.ERROR_CODES and m["error"]["message"]
            assert m["error"]["code"] != P.INTERNAL, m
    assert s.proc.poll() is None


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(hostile_request(), min_size=10, max_size=25))
def test_fuzz_every_op_with_hostile_fields(fuzz_server, batch):
    """Each line is answered: those the protocol refuses at decoding with id null, the others
    with their id; none is an internal error, and the server serves on."""
    s = fuzz_server
    lines, expect = [], []
    for msg in batch:
        msg = {"id": next(_IDS), **msg}
        lines.append(hostile_line(msg))
        try:
            P.decode(lines[-1])
            expect.append(msg["id"])
        except P.ProtocolError:
            expect.append(None)
    with s._cond:
        s.replies.pop(None, None)
    s.proc.stdin.write(b"".join(b + b"\n" for b in lines))
    s.proc.stdin.flush()
    for rid, line in zip(expect, lines):
        reply = s.wait_reply(rid, timeout=60)
        assert reply["ok"] in (True, False)
        if not reply["ok"]:
            assert reply["error"]["code"] != P.INTERNAL, (line[:300], reply)
            assert rid is not None or reply["error"]["code"] == P.BAD_JSON, (line[:300], reply)
    assert s.request("status", timeout=60)["ok"] and s.proc.poll() is None


def test_fuzz_server_survived_and_left_no_blocks(fuzz_server):
    assert fuzz_server.ok("hello")
    fuzz_server.ok("release", all=True)
    assert shm_entries(fuzz_server.prefix) == []


# ---- every field of every op, one by one ---------------------------------------------------------
# Deterministic: each op of the protocol (shutdown included), each of its fields, the fields inside
# its objects (camera, avatars[0], objects[0], job params of every kind, TrainConfig's settings)
# and the first number of every matrix, set in turn to each hostile value while the rest of the
# request stays valid, so each check sits behind a request that reaches it.
RAW = "\u0000RAW\u0000"
REFUSED_AT_DECODE = {
    "NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity", "1e999": "1e999", "-1e400": "-1e400",
    "2**64": str(2 ** 64), "-2**70": str(-(2 ** 70)), "400 digits": "9" * 400,
    "lists too deep": "[" * P.MAX_DEPTH + "]" * P.MAX_DEPTH,
    "objects too deep": '{"a":' * P.MAX_DEPTH + "0" + "}" * P.MAX_DEPTH,
}
DECODABLE = {"2**62": 2 ** 62, "-2**62": -(2 ** 62), "1e308": 1e308, "-1e308": -1e308, "-0.0": -0.0, "true": True,
             "null": None, "empty string": "", "empty list": [], "empty object": {}}


def _nest(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _train_fields() -> list[tuple]:
    """Every setting of TrainConfig (nested dataclasses by their dotted path), as params paths."""
    import dataclasses

    from backend.train.config import TrainConfig
    from backend.train.job import JOB_KEYS

    def walk(cls, prefix: tuple) -> list[tuple]:
        out = []
        for f in dataclasses.fields(cls):
            out.append(prefix + (f.name,))
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                out += walk(type(default), prefix + (f.name,))
        return out

    return [("params", k) for k in JOB_KEYS] + walk(TrainConfig, ("params",))


def _base_requests(avatar: int, obj: int, avatar_dir: Path, motion: Path, out: Path) -> list[tuple[dict, list]]:
    """(a valid request, the paths of its fields to spoil) for every op, and for job_start one per kind."""
    from .test_server_support import front_camera, identity_transforms

    eye3 = [[[1.0 if r == c else 0.0 for c in range(3)] for r in range(3)] for _ in range(55)]
    item = {"avatar": avatar, "transforms": identity_transforms(), "expression": [0.0] * 10,
            "local_rotations": eye3, "betas": [0.0] * 10}
    cam = front_camera(8, 8)
    bases: list[tuple[dict, list]] = []
    fixed = {
        "hello": {"client": "fuzz", "protocol_version": P.PROTOCOL_VERSION},
        "shutdown": {"wait": "not a number"},            # each spoiled value must keep the server serving
        "status": {},
        "load_avatar": {"path": str(avatar_dir), "reload": False},
        "unload_avatar": {"avatar": 987_654},
        "rig": {"avatar": avatar, "slot": "fuzzrig"},
        "load_ply": {"path": str(out / "avatar.ply"), "reload": False},
        "unload": {"object": 987_654},
        "render": {"width": 8, "height": 8, "camera": cam, "avatars": [item], "objects": [{"object": obj,
                   "matrix": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]}],
                   "passes": ["rgba", "depth"], "dtype": "float16", "background": [0.0, 0.0, 0.0], "slot": "fuzzframe",
                   "flip_y": True, "depth_empty": 0.0, "rasterizer": "torch"},
        "export_ply": {"avatar": avatar, "path": str(out / "fuzz.ply"), "transforms": identity_transforms(),
                       "expression": [0.0] * 10, "local_rotations": eye3},
        "load_motion": {"path": str(motion), "fps": 30, "avatar": avatar, "slot": "fuzzmotion", "source_fps": 30,
                        "up_axis": "Z"},
        "shape": {"avatar": avatar, "betas": [0.0] * 10, "height": 1.7, "weight": 70.0, "slot": "fuzzshape"},
        "release": {"slot": "fuzz_nothing", "all": False},
        "job_cancel": {"job": 987_654},
        "job_status": {"job": 987_654},
    }
    assert set(fixed) | {"job_start"} == set(P.OPS), "a new op: give it a valid request here"
    for op, msg in fixed.items():
        paths = [(name,) for name in P.OPS[op]]
        if op == "render":
            paths += [("camera", k) for k in cam] + [("camera", "K", 0, 0), ("camera", "world_to_camera", 0, 0)]
            paths += [("avatars", 0, k) for k in item] + [("objects", 0, "object"), ("objects", 0, "matrix")]
            paths += [("avatars", 0, "transforms", 0, 0, 0), ("avatars", 0, "local_rotations", 0, 0, 0),
                      ("avatars", 0, "expression", 0), ("avatars", 0, "betas", 0), ("objects", 0, "matrix", 0, 0),
                      ("background", 0), ("passes", 0)]
        if op == "export_ply":
            paths += [("transforms", 0, 0, 0), ("local_rotations", 0, 0, 0), ("expression", 0)]
        if op == "shape":
            paths += [("betas", 0)]
        bases.append(({"op": op, **msg}, paths))
    selftest = {"steps": 0, "delay": 0.0, "fail_at": 5, "out": str(out / "selftest")}
    render_motion = {"avatar_path": str(avatar_dir), "motion": str(motion), "out": str(out / "frames"), "width": 8,
                     "height": 8, "camera": cam, "fps": 30, "start": 0, "end": 1, "background": [0.0, 0.0, 0.0],
                     "rasterizer": "torch", "resume": False}
    train = {"prompt": "a fuzzed dancer", "out": str(out / "train"), "device": "cpu", "allow_download": False,
             "sd_model": str(out / "no-sd"), "controlnet": str(out / "no-controlnet")}
    bases.append(({"op": "job_start", "kind": "selftest", "params": selftest},
                  [("kind",), ("params",)] + [("params", k) for k in selftest]))
    bases.append(({"op": "job_start", "kind": "render_motion", "params": render_motion},
                  [("params", k) for k in render_motion] + [("params", "avatar"), ("params", "camera", "K", 0, 0),
                                                            ("params", "background", 0)]))
    bases.append(({"op": "job_start", "kind": "train", "params": train}, _train_fields()))
    return bases


def _spoil(msg: dict, path: tuple, value) -> dict:
    """A deep copy of msg with the value at path replaced (missing objects on the way are added)."""
    msg = json.loads(json.dumps(msg))
    parent = msg
    for key in path[:-1]:
        parent = parent.setdefault(key, {}) if isinstance(parent, dict) else parent[key]
    parent[path[-1]] = value
    return msg


def hostile_cases(bases) -> list[tuple[str, bytes]]:
    cases = []
    for msg, paths in bases:
        for path in paths:
            where = f"{msg['op']}{'/' + msg['kind'] if 'kind' in msg else ''}.{'.'.join(map(str, path))}"
            for name, text in REFUSED_AT_DECODE.items():
                cases.append((f"{where}={name}", json.dumps(_spoil(msg, path, RAW)).replace(json.dumps(RAW), text)))
            values = dict(DECODABLE, **{"nested to the limit": _nest(P.MAX_DEPTH - len(path))})
            for name, value in values.items():
                if msg["op"] == "shutdown" and (value is None or P.type_ok(value, "number")):
                    continue                              # a valid wait: the server would (rightly) stop
                cases.append((f"{where}={name}", json.dumps(_spoil(msg, path, value))))
    return cases


def test_every_field_of_every_op_with_non_finite_and_deep_values(fuzz_server, avatar_dir, tmp_path):
    """Each line is answered once (refused at decoding: bad_json with id null; else with its id,
    never an internal error); every job it started ends; `status` answers after each op's batch
    and at the end, and the server leaves no block behind."""
    s = fuzz_server
    avatar = s.ok("load_avatar", path=str(avatar_dir))["avatar"]
    s.ok("export_ply", avatar=avatar, path=str(tmp_path / "avatar.ply"))
    obj = s.ok("load_ply", path=str(tmp_path / "avatar.ply"))["object"]
    motion = tmp_path / "walk.npz"
    np.savez(motion, poses=np.zeros((4, 156)), trans=np.zeros((4, 3)), mocap_framerate=np.array(30.0))
    bases = _base_requests(avatar, obj, avatar_dir, motion, tmp_path)
    jobs, counts = [], {"bad_json": 0, "refused": 0, "ok": 0}
    for msg, _ in bases:                                  # the unspoiled requests really are valid
        reply = s.wait_reply(_send(s, json.dumps(msg)), timeout=120)
        assert reply["ok"] or msg["op"] in ("shutdown", "unload_avatar", "unload", "job_cancel", "job_status"), \
            (msg["op"], reply)
        jobs += [reply["job"]] if msg["op"] == "job_start" else []
    cases = hostile_cases(bases)
    t0 = time.monotonic()
    for start in range(0, len(cases), 250):               # pipelined: a batch written at once
        sent, data = [], b""
        for label, line in cases[start:start + 250]:
            rid = next(_IDS)
            sent.append((label, rid, _refused(line)))
            data += line.replace('{"op"', f'{{"id": {rid}, "op"', 1).encode() + b"\n"
        with s._cond:
            s.replies.pop(None, None)
        s.proc.stdin.write(data)
        s.proc.stdin.flush()
        for label, rid, refused in sent:
            if refused:
                continue
            reply = s.wait_reply(rid, timeout=120)
            assert reply["ok"] in (True, False), (label, reply)
            if reply["ok"]:
                counts["ok"] += 1
                if label.startswith("job_start") and "job" in reply:
                    jobs.append(reply["job"])
                    s.send("job_cancel", job=reply["job"])   # a hostile value that was valid: end it now
            else:
                counts["refused"] += 1
                assert reply["error"]["code"] in P.ERROR_CODES and reply["error"]["message"], (label, reply)
                assert reply["error"]["code"] != P.INTERNAL, (label, reply)
        assert s.request("status", timeout=60)["ok"] and s.proc.poll() is None   # read after the whole batch
        with s._cond:
            nulls = s.replies.pop(None, [])
        assert len(nulls) == sum(r for _, _, r in sent), "each line refused at decoding is answered once"
        assert all(m["error"]["code"] == P.BAD_JSON for m in nulls), nulls[:3]
        counts["bad_json"] += len(nulls)
    for job in jobs:
        assert s.final_event(job, timeout=120)["event"] in P.FINAL_JOB_EVENTS
    s.ok("release", all=True)
    s.ok("unload", object=obj)
    s.ok("unload_avatar", avatar=avatar)
    status = s.ok("status")
    assert status["blocks"] == [] and s.proc.poll() is None
    print(f"{len(cases)} requests in {time.monotonic() - t0:.1f} s: {counts}, {len(jobs)} jobs started")


def _send(s: RawServer, line: str) -> int:
    rid = next(_IDS)
    s.send_line(line.replace('{"op"', f'{{"id": {rid}, "op"', 1))
    return rid


def _refused(line: str) -> bool:
    try:
        P.decode(line)
        return False
    except P.ProtocolError:
        return True
