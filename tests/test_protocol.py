"""The protocol module: stdlib-only, loadable by file path, and its encoding and checks; and
docs/protocol.md agrees with the server (every documented op exists and vice versa)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend import protocol as P

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"


def test_protocol_is_stdlib_only_and_loads_by_path():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(ROOT / 'backend' / 'protocol.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "bad = [n for n in ('numpy', 'torch', 'backend') if n in sys.modules]\n"
        "assert not bad, bad\n"
        "print(m.PROTOCOL_VERSION)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(P.PROTOCOL_VERSION)
    source = (ROOT / "backend" / "protocol.py").read_text()
    imports = re.findall(r"^(?:from|import) +([\w.]+)", source, re.M)
    assert all(name.split(".")[0] in sys.stdlib_module_names or name == "__future__" for name in imports), imports


def test_encode_decode_round_trip():
    msg = {"id": 3, "op": "render", "camera": {"K": [[1.5, 0, 2], [0, 1.5, 2], [0, 0, 1]]}, "name": "é✓"}
    line = P.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert P.decode(line) == msg
    assert P.decode(line.decode()) == msg
    with pytest.raises(ValueError):
        P.encode({"x": float("nan")})


@pytest.mark.parametrize("line", [b"", b"nope", b"[1]", b"12", b'"s"', b"\xff", b'{"a": NaN}', b'{"a": Infinity}',
                                  b"[" * 100000])
def test_decode_rejects(line):
    with pytest.raises(P.ProtocolError) as e:
        P.decode(line)
    assert e.value.code == P.BAD_JSON


def test_validate_request():
    assert P.validate_request({"id": 1, "op": "hello"}) == (1, "hello")
    assert P.validate_request({"id": 2, "op": "load_avatar", "path": "x", "future_field": 1}) == (2, "load_avatar")
    cases = [
        ({"op": "hello"}, P.BAD_REQUEST, None),
        ({"id": 1.0, "op": "hello"}, P.BAD_REQUEST, None),
        ({"id": True, "op": "hello"}, P.BAD_REQUEST, None),
        ({"id": 4, "op": None}, P.BAD_REQUEST, 4),
        ({"id": 4, "op": "x" * 1000}, P.UNKNOWN_OP, 4),
        ({"id": 4, "op": "load_avatar"}, P.BAD_REQUEST, 4),
        ({"id": 4, "op": "load_avatar", "path": None}, P.BAD_REQUEST, 4),
        ({"id": 4, "op": "load_avatar", "path": 1}, P.BAD_REQUEST, 4),
        ({"id": 4, "op": "load_avatar", "path": "p", "reload": 1}, P.BAD_REQUEST, 4),
        ({"id": 4, "op": "rig", "avatar": True}, P.BAD_REQUEST, 4),
        ({"id": 4, "op": "rig", "avatar": 1.0}, P.BAD_REQUEST, 4),
        ({"id": 4, "op": "shutdown", "wait": float("inf")}, P.BAD_REQUEST, 4),
    ]
    for msg, code, rid in cases:
        with pytest.raises(P.ProtocolError) as e:
            P.validate_request(msg)
        assert e.value.code == code and e.value.request_id == rid, msg
        assert len(e.value.message) < 400


def test_every_op_field_type_is_known():
    for op, spec in P.OPS.items():
        for field, (kind, required) in spec.items():
            assert kind in ("int", "number", "str", "bool", "list", "dict", "any"), (op, field)
            assert isinstance(required, bool)


def test_layout_alignment_and_names():
    specs, size = P.layout([("a", "float32", (3, 5)), ("b", "int32", (7,)), ("c", "float16", (2, 2, 4))])
    assert specs["a"]["offset"] == 0 and specs["b"]["offset"] == 64 and specs["c"]["offset"] == 128
    assert size == 128 + 2 * 16
    assert all(s["offset"] % P.ARRAY_ALIGN == 0 for s in specs.values())
    assert P.block_name(42, 3).startswith(P.block_prefix(42)) and P.block_prefix(42) == "dw_42_"
    assert not P.block_name(42, 3).startswith(P.block_prefix(4))  # pid 4 is not a prefix of pid 42's names
    assert P.check_slot("view-port_2") == "view-port_2"
    for bad in ("", "a/b", "x" * 33, "dw slot"):
        with pytest.raises(P.ProtocolError):
            P.check_slot(bad)


def test_block_prefix_does_not_collide():
    # "dw_4_" must not match blocks of pid 42 ("dw_42_...")
    assert not "dw_42_1".startswith(P.block_prefix(4))


# ---- the documentation ----------------------------------------------------------------------
def documented_ops() -> list[str]:
    text = DOC.read_text()
    ops_section = text.split("\n## Ops\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^### `(\w+)`\s*$", ops_section, re.M)


def test_doc_ops_match_server_and_protocol():
    from backend.server.core import Server

    documented = documented_ops()
    assert len(documented) == len(set(documented))
    assert sorted(documented) == sorted(P.OPS), "docs/protocol.md and protocol.OPS disagree"
    assert sorted(documented) == Server.list_ops(), "docs/protocol.md and the server's op_* handlers disagree"


def test_doc_examples_are_valid_requests():
    """Every example request line in the Ops section parses and passes the request checks (with
    '...' placeholders, which the examples use for long arrays, removed)."""
    text = DOC.read_text().split("\n## Ops\n", 1)[1]
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    seen_ops = set()
    for block in blocks:
        first = block.split("\n{\"id\"", 1)[0] if block.startswith("{\"id\"") else None
        if first is None:
            continue
        try:
            msg = json.loads(first.replace("\n", " "))
        except ValueError:
            continue  # examples with "…" placeholders inside arrays
        rid, op = P.validate_request(msg)
        seen_ops.add(op)
    assert len(seen_ops) >= 12, seen_ops


def test_doc_lists_every_error_code_and_event():
    text = DOC.read_text()
    for code in P.ERROR_CODES:
        assert f"`{code}`" in text, code
    for name in P.EVENTS:
        assert f"`{name}`" in text, name
