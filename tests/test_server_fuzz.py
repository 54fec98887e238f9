"""Fuzzing the real server: thousands of random and malformed lines, and requests of every op
with every field set to hostile values (NaN, infinities, 1e999, 70-bit integers, nesting 60
deep, wrong types), each answered with an error (or a reply), never an internal one, and the
server still answers `hello` afterwards."""

from __future__ import annotations

import itertools
import json
import time

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
def fuzz_server():
    s = RawServer()
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
