"""Fuzzing the real server: thousands of random and malformed lines, each answered with an
error (or a reply), and the server still answers `hello` afterwards."""

from __future__ import annotations

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


def test_fuzz_server_survived_and_left_no_blocks(fuzz_server):
    assert fuzz_server.ok("hello")
    fuzz_server.ok("release", all=True)
    assert shm_entries(fuzz_server.prefix) == []
