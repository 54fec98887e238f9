"""Pickled motion files must never run code, and loading must not need torch or a GPU."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from backend.motion import MotionError, load_motion
from backend.motion.safe_pickle import TorchTensorStub, safe_loads

ROOT = Path(__file__).resolve().parents[1]


def motions_dir() -> Path | None:
    env = os.environ.get("DREAMWALTZ_DATA")
    base = Path(env) if env else ROOT.parent / "shared" / "data"
    return base / "motions" if (base / "motions").is_dir() else None


class Evil:
    """Unpickling this calls func(*args): what a malicious motion file would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):       # lets an Evil stand as the callable of another Evil
        raise RuntimeError("never called while pickling")


def touch_payloads(marker: Path):
    import builtins
    import subprocess as sp

    return {
        "os.system": Evil(os.system, f"touch {marker}"),
        "subprocess.call": Evil(sp.call, ["touch", str(marker)]),
        "builtins.eval": Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "getattr": Evil(Evil(getattr, Evil(builtins.__import__, "os"), "system"), f"touch {marker}"),
    }


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.eval", "builtins.exec", "getattr"])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    payload = touch_payloads(marker)[name]
    # looks like an AIST++ file, with the payload under an unrelated key
    data = {"smpl_poses": np.zeros((4, 72)), "smpl_trans": np.zeros((4, 3)), "smpl_loss": payload}
    path = tmp_path / "dance.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    with pytest.raises(MotionError) as exc:
        load_motion(path)
    msg = str(exc.value)
    assert str(path) in msg and "refused to unpickle global" in msg
    refused = msg.split("global '")[1].split("'")[0]
    assert refused.split(".")[-1] in ("system", "call", "eval", "exec", "getattr", "__import__")
    assert not marker.exists(), "the pickle's command ran"


def test_the_marker_would_be_created_by_a_naive_loader(tmp_path):
    """Control: the crafted file really is dangerous (plain pickle runs it)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "dance.pkl"
    path.write_bytes(pickle.dumps({"x": Evil(os.system, f"touch {marker}")}))
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_malicious_npy_object_payload_is_refused(tmp_path):
    """TRAM's files are np.save'd dicts: np.load(allow_pickle=True) would run this."""
    marker = tmp_path / "pwned"
    np.save(tmp_path / "hps_track_0.npy", {"pred_rotmat": Evil(os.system, f"touch {marker}")}, allow_pickle=True)
    np.save(tmp_path / "camera.npy", {"pred_cam_R": np.zeros((1, 3, 3))}, allow_pickle=True)
    for target in (tmp_path, tmp_path / "hps_track_0.npy", tmp_path / "camera.npy"):
        with pytest.raises(MotionError, match="refused to unpickle global"):
            load_motion(target)
    assert not marker.exists()


# ---------------------------------------------------------------------------- torch without torch
def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def binbytes(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def binint(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def legacy_blob(values: np.ndarray) -> bytes:
    """torch's legacy save format for one float32 storage, written by hand."""
    out = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                               "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(obj, out, protocol=2)
    # the storage object: a persistent id ('storage', torch.FloatStorage, key, location, numel, None)
    out.write(b"\x80\x02(X\x07\x00\x00\x00storage" + g("torch", "FloatStorage") + b"X\x01\x00\x00\x00k"
              + b"X\x06\x00\x00\x00cuda:0" + binint(values.size) + b"NtQ.")
    pickle.dump(["k"], out, protocol=2)
    out.write(struct.pack("<q", values.size) + values.astype("<f4").tobytes())
    return out.getvalue()


def tensor_pickle(blob: bytes, size: tuple, stride: tuple, offset=0) -> bytes:
    tup = lambda xs: b"(" + b"".join(binint(x) for x in xs) + b"t"  # noqa: E731
    return (b"\x80\x03" + g("torch._utils", "_rebuild_tensor_v2") + b"("
            + g("torch.storage", "_load_from_bytes") + b"(" + binbytes(blob) + b"tR"
            + binint(offset) + tup(size) + tup(stride) + b"\x89" + g("collections", "OrderedDict") + b")R"
            + b"tR.")


def test_torch_tensor_decoded_without_torch():
    blob = legacy_blob(np.arange(6, dtype=np.float32))
    t = safe_loads(tensor_pickle(blob, (2, 2), (3, 1), offset=1))
    assert isinstance(t, TorchTensorStub) and t.device == "cuda:0" and t.shape == (2, 2)
    np.testing.assert_array_equal(t.array, [[1, 2], [4, 5]])


@pytest.mark.parametrize("size,stride,offset", [((10 ** 6,), (1,), 0), ((2,), (6,), 0), ((3,), (1,), 4),
                                                ((2,), (-1,), 1)])
def test_crafted_tensor_cannot_read_outside_its_storage(size, stride, offset):
    blob = legacy_blob(np.arange(6, dtype=np.float32))
    t = safe_loads(tensor_pickle(blob, size, stride, offset))
    assert isinstance(t, TorchTensorStub) and t.array is None


def test_malicious_global_inside_a_torch_blob_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    out = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(obj, out, protocol=2)
    pickle.dump(Evil(os.system, f"touch {marker}"), out, protocol=2)
    path = tmp_path / "talk.pkl"
    path.write_bytes(b"\x80\x03" + g("torch.storage", "_load_from_bytes") + b"(" + binbytes(out.getvalue()) + b"tR.")
    with pytest.raises(MotionError, match="refused to unpickle global"):
        load_motion(path)
    assert not marker.exists()


NO_TORCH = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.modules["torch"] = None          # any `import torch` now raises ImportError
    from backend.motion import NpzBody, load_motion

    body = NpzBody(sys.argv[1])          # the same SMPL-X file, read with numpy
    out = {}
    for path in sys.argv[2:]:
        m = load_motion(path, body_model=body)
        out[path] = [m.source_format, m.num_frames, m.full_pose.astype(float).sum(), m.transl.astype(float).sum()]
    out["torch_imported"] = sys.modules.get("torch") is not None
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def bm():
    from backend.body import BodyModel

    return BodyModel.load()


def run_without_torch(bm, *paths) -> dict:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(bm.path), *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_talkshow_cuda_tensors_are_skipped_without_torch_or_gpu(bm):
    folder = motions_dir()
    if folder is None:
        pytest.skip("the real motion files (../shared/data/motions) are not on this machine")
    files = sorted((folder / "talkshow_pkl").glob("*.pkl")) + sorted((folder / "aist_pkl").glob("*.pkl")) \
        + sorted((folder / "smplx265_npy").glob("*.npy"))[:1] + sorted((folder / "amass_npz").glob("*.npz"))[:1]
    out = run_without_torch(bm, *files)
    assert out.pop("torch_imported") is False
    assert {v[0] for v in out.values()} == {"talkshow", "aist", "smplx265", "amass"}
    for f in files:                       # same motion as with the torch BodyModel
        m = load_motion(f, body_model=bm)
        fmt, n, pose_sum, transl_sum = out[str(f)]
        assert (fmt, n) == (m.source_format, m.num_frames)
        assert pose_sum == pytest.approx(m.full_pose.astype(float).sum(), rel=1e-5, abs=1e-3)
        assert transl_sum == pytest.approx(m.transl.astype(float).sum(), rel=1e-5, abs=1e-3)


def test_tram_torch_tensors_are_read_without_torch(tmp_path, bm):
    import torch

    n = 8
    rng = np.random.default_rng(1)
    rot = np.tile(np.eye(3, dtype=np.float32), (n, 24, 1, 1))
    rot[:, 0] = np.diag([1.0, -1.0, -1.0])                 # upright in a y-down camera
    trans = rng.normal(0, 0.1, (n, 1, 3)).astype(np.float32) + [0, 0, 4]
    np.save(tmp_path / "hps_track_0.npy", {"pred_rotmat": torch.from_numpy(rot), "pred_shape": torch.zeros(n, 10),
                                           "pred_trans": torch.from_numpy(trans), "frame": torch.arange(n)},
            allow_pickle=True)
    np.save(tmp_path / "camera.npy", {"pred_cam_R": np.tile(np.eye(3), (n, 1, 1)), "pred_cam_T": np.zeros((n, 3)),
                                      "img_focal": 1000.0, "img_center": np.array([640.0, 360.0])}, allow_pickle=True)
    out = run_without_torch(bm, tmp_path)
    assert out.pop("torch_imported") is False
    assert out[str(tmp_path)][:2] == ["tram", n]
    m = load_motion(tmp_path)                               # and in-process: the values survive
    np.testing.assert_allclose(m.transl, (trans[:, 0] * [1, -1, -1]), atol=1e-6)


def test_importing_the_package_does_not_import_torch():
    code = "import sys; import backend.motion, backend.motion.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_numpy2_spellings_are_admitted():
    """Pickles written by numpy 2 name numpy._core.multiarray; they must load on numpy 1.x too."""
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    for protocol in (0, 2, 4):
        data = pickle.dumps({"a": arr, "s": np.float64(2.5)}, protocol=protocol)
        if protocol < 4:     # GLOBAL opcode: newline-terminated text
            data2 = data.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
        else:                # SHORT_BINUNICODE: length-prefixed
            data2 = data.replace(b"\x8c\x15numpy.core.multiarray", b"\x8c\x16numpy._core.multiarray")
        assert data2 != data
        out = safe_loads(data2)
        np.testing.assert_array_equal(out["a"], arr)
        assert out["s"] == 2.5


# ---------------------------------------------------------------------------- hostile files: bounds
# Each input below is built byte by byte. The safe loader runs them in a child process under an
# address-space cap (RLIMIT_AS), so a crash or a memory bomb shows as a failed child, not a
# dead test run. Controls show that each input really is dangerous to a naive reader.
AS_CAP = 768 << 20


def aist_pickle(extra: bytes, key: str = "smpl_loss") -> bytes:
    """A valid AIST++ dict (protocol 2) with `extra` (a pickled value) under one more key."""
    base = pickle.dumps({"smpl_poses": np.zeros((4, 72)), "smpl_trans": np.zeros((4, 3)),
                         "smpl_scaling": np.ones(1)}, protocol=2)
    assert base.endswith(b"u.")   # ...SETITEMS STOP: insert one more SETITEM before the STOP
    k = key.encode()
    return base[:-1] + b"X" + struct.pack("<I", len(k)) + k + extra + b"s."


def deep_tuple(levels: int) -> bytes:
    return b"N" + b"\x85" * levels                 # TUPLE1 around None, `levels` deep


def tuple_key_pickle(levels: int) -> bytes:
    """{deep tuple: None}: hashing the key recurses once per level (SIGSEGV in C)."""
    return b"\x80\x02}" + deep_tuple(levels) + b"Ns."


_NP_HEAD = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01cnumpy\ndtype\nq\x02"
            b"h\x02X\x02\x00\x00\x00O8\x89\x88\x87Rq\x03(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xff"
            b"J\xff\xff\xff\xffK?tb")
_NP_LEVEL = b"h\x00h\x01K\x00\x85C\x01b\x87R(K\x01K\x01\x85h\x03\x89]"   # a 1-item object array of...


def nested_object_arrays(levels: int) -> bytes:
    """Object arrays inside object arrays, `levels` deep, around None (numpy frees them recursively)."""
    return _NP_HEAD + _NP_LEVEL * levels + b"N" + b"atb" * levels + b"."


def body_of(data: bytes) -> bytes:
    """A complete pickle's value without its PROTO and STOP, to embed in another pickle."""
    assert data.startswith(b"\x80\x02") and data.endswith(b".")
    return data[2:-1]


def object_pointer_pickle() -> bytes:
    """An object array whose dtype state clears the "holds objects" flags, with 8 bytes of data:
    numpy then takes the bytes 0x4141414141414141 for a pointer to a Python object."""
    head = _NP_HEAD.replace(b"K?tb", b"K\x00tb")
    return head + b"h\x00h\x01K\x00\x85C\x01b\x87R(K\x01K\x01\x85h\x03\x89C\x08AAAAAAAAtb."


def memo_bomb() -> bytes:
    return b"\x80\x02Nr\xff\xff\xff\x0f."          # LONG_BINPUT 268,435,455: 9 bytes, 2.3 GB of memo in C


HOSTILE_PICKLES = {
    "tuple_key": (aist_pickle(body_of(tuple_key_pickle(300_000))), "nested more than"),
    "deep_tuple": (aist_pickle(deep_tuple(300_000)), "nested more than"),
    "deep_object_arrays": (aist_pickle(body_of(nested_object_arrays(50_000))), "nested more than"),
    "object_array_of_arrays": (aist_pickle(body_of(nested_object_arrays(2))), "object array whose items are arrays"),
    "memo_index": (memo_bomb(), "memo index"),
    "bytes8_prefix": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"x.", "expected 1099511627776 bytes"),
    "unicode8_prefix": (b"\x80\x04\x8d" + struct.pack("<Q", 1 << 62) + b"x.", "bytes in a unicodestring8"),
    "frame_prefix": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.", "a frame of"),
    "object_count": (b"\x80\x02(" + b"N" * 1_000_001 + b"l.", "more than 1,000,000 objects"),
    "bytearray_size": (b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x7f\x85R.", "bytearray is admitted only"),
    "ndarray_call": (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40J\x00\x00\x00\x40\x86\x85R.", "not callable"),
    "reconstruct_shape": (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x40\x85"
                          b"C\x01b\x87R.", "_reconstruct with shape"),
    "array_state_size": (_NP_HEAD.replace(b"O8", b"f8").replace(b"K?tb", b"K\x00tb") + b"h\x00h\x01K\x00\x85C\x01b"
                         b"\x87R(K\x01J\x00\xe1\xf5\x05\x85h\x03\x89C\x08\x00\x00\x00\x00\x00\x00\x00\x00tb.",
                         "comes with 8 bytes"),
    "object_pointers": (object_pointer_pickle(), "refused the numpy dtype"),
    "object_flags_on_floats": (_NP_HEAD.replace(b"O8", b"f8") + b"h\x00h\x01K\x00\x85C\x01b\x87R(K\x01K\x01\x85h\x03"
                               b"\x89]NatbN.", "refused the numpy dtype"),
    "build_on_function": (b"\x80\x02c_codecs\nencode\n}X\x01\x00\x00\x00aK\x01sb.", "refused to set the state of a function"),
    "build_on_class": (b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00aK\x01sb.", "refused to set the state"),
}

CHILD = textwrap.dedent("""
    import json, resource, sys
    cap = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from backend.motion import MotionError, load_motion
    for path in sys.argv[2:]:
        try:
            load_motion(path)
            out = {"loaded": True}
        except MotionError as exc:
            out = {"error": str(exc)}
        except BaseException as exc:
            out = {"other": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"path": path, **out}), flush=True)
    status = open("/proc/self/status").read()       # VmHWM: this process's peak (ru_maxrss
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024   # would include the parent's before exec)
    print(json.dumps({"peak_rss": peak}), flush=True)
""")


def load_in_child(paths, cap: int = AS_CAP) -> tuple[dict, int]:
    """load_motion on each path in one child under an address-space cap: {path: outcome}, peak RSS."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cap), *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = {d["path"]: d for d in lines if "path" in d}
    missing = [str(p) for p in paths if str(p) not in done]
    assert proc.returncode == 0 and not missing, \
        f"the loader died (exit {proc.returncode}) on {missing[:1]}:\n{proc.stderr[-2000:]}"
    return done, lines[-1]["peak_rss"]


def test_hostile_pickles_are_refused_without_crash_or_memory(tmp_path):
    paths = {}
    for name, (data, _) in HOSTILE_PICKLES.items():
        paths[name] = tmp_path / f"{name}.pkl"
        paths[name].write_bytes(data)
    done, peak = load_in_child(paths.values())
    for name, (_, expected) in HOSTILE_PICKLES.items():
        out = done[str(paths[name])]
        assert "error" in out, (name, out)                   # one MotionError, not MemoryError / a crash
        assert str(paths[name]) in out["error"] and expected in out["error"], (name, out["error"])
    assert peak < 400 << 20, f"peak RSS {peak / 2**20:.0f} MiB"


CRASHERS = {"tuple_key": lambda: tuple_key_pickle(300_000), "deep_object_arrays": lambda: nested_object_arrays(100_000),
            "object_pointers": object_pointer_pickle}


@pytest.mark.parametrize("name", list(CRASHERS))
def test_control_naive_unpickling_of_the_crashing_pickles_crashes(tmp_path, name):
    """These pickles really kill a process that unpickles them with pickle.loads (and the old
    allow-list admitted every global they use)."""
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(CRASHERS[name]())
    code = "import pickle, sys; x = pickle.loads(open(sys.argv[1], 'rb').read()); print(repr(x)); del x"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120)
    assert proc.returncode < 0, proc.returncode          # killed by a signal (SIGSEGV)


def test_control_naive_memo_bomb_exceeds_the_cap():
    code = textwrap.dedent(f"""
        import pickle, resource
        resource.setrlimit(resource.RLIMIT_AS, ({AS_CAP}, {AS_CAP}))
        try:
            pickle.loads({memo_bomb()!r})
        except MemoryError:
            print("MemoryError")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "MemoryError" in proc.stdout


def legit_tensor_pickle() -> bytes:
    return tensor_pickle(legacy_blob(np.arange(6, dtype=np.float32)), (2, 3), (3, 1))


def test_a_pickle_cannot_change_how_later_files_decode():
    """BUILD on a torch storage stand-in would rewrite its dtype for every later file."""
    evil = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypecnumpy\nfloat16\nsb."
    evil_np = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x08\x00\x00\x00bfloat16sb."
    for data in (evil, evil_np):
        with pytest.raises(MotionError, match="refused"):
            safe_loads(data)
    t = safe_loads(legit_tensor_pickle())
    np.testing.assert_array_equal(t.array, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_numpy_dtypes_built_from_pickles_are_private_copies():
    before = np.dtype("f8").str
    data = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x89\x87R(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb."
    d = safe_loads(data)
    assert d == np.dtype(">f8") and np.dtype("f8").str == before == "<f8"


def test_torch_strides_cannot_repeat_a_storage_into_a_memory_bomb():
    blob = legacy_blob(np.arange(6, dtype=np.float32))
    t = safe_loads(tensor_pickle(blob, (100_000, 100_000), (0, 0)))   # 40 GB from 24 bytes
    assert isinstance(t, TorchTensorStub) and t.array is None and t.shape == (100_000, 100_000)


# ---------------------------------------------------------------------------- hostile .npy / .npz
def npy_bytes(header_shape: tuple, dtype: str = "<f8", payload: bytes = b"") -> bytes:
    from numpy.lib import format as npformat

    out = io.BytesIO()
    npformat.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False, "shape": header_shape})
    return out.getvalue() + payload


BOMB_BYTES = 216 << 24        # 3.6 GB of float64 zeros
LIE = 120_000_000             # float64 values a header claims (960 MB, under the 1 GiB limit) without them


def zip_bomb_member() -> tuple[bytes, int, int]:
    """poses.npy as a deflated member declaring BOMB_BYTES: one compressed block of zeros repeated."""
    import zlib

    head = npy_bytes((BOMB_BYTES // 8,))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(1 << 24)) + c.flush(zlib.Z_FULL_FLUSH)
    return first + block * (BOMB_BYTES >> 24) + c.flush(), 8, len(head) + BOMB_BYTES


def zip_with(members: dict[str, tuple[bytes, int, int]]) -> bytes:
    """A zip archive written by hand: name -> (stored data, method, declared uncompressed size)."""
    import zlib

    out, central = io.BytesIO(), b""
    for name, (data, method, size) in members.items():
        n = name.encode()
        crc = zlib.crc32(data) if method == 0 else 0
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(n), 0)
                  + n + data)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    start = out.tell()
    out.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                                    start, 0))
    return out.getvalue()


def stored(data: bytes) -> tuple[bytes, int, int]:
    return data, 0, len(data)


def amass_members() -> dict[str, tuple[bytes, int, int]]:
    members = {}
    for k, v in {"poses": np.zeros((4, 156)), "trans": np.zeros((4, 3)), "mocap_framerate": np.array(30.0)}.items():
        buf = io.BytesIO()
        np.save(buf, v)
        members[f"{k}.npy"] = stored(buf.getvalue())
    return members


def hostile_array_files(folder: Path) -> dict[str, Path]:
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files = {
        "zip_bomb.npz": zip_with({**amass_members(), "poses.npy": zip_bomb_member()}),
        "header_lies.npz": zip_with({**amass_members(), "poses.npy": stored(npy_bytes((LIE // 156, 156)))}),
        "header_lies.npy": npy_bytes((LIE // 322, 322)),
        "object_member.npz": zip_with({**amass_members(), "trans.npy": stored(obj.getvalue())}),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_hostile_npz_and_npy_are_refused_within_bounds(tmp_path):
    paths = hostile_array_files(tmp_path)
    assert paths["zip_bomb.npz"].stat().st_size < 4 << 20
    done, peak = load_in_child(paths.values())
    expect = {"zip_bomb.npz": ("key 'poses'", "zip bomb"), "header_lies.npz": ("key 'poses'", "truncated or crafted"),
              "header_lies.npy": ("", "truncated or crafted"), "object_member.npz": ("key 'trans'", "object array")}
    for name, (key, words) in expect.items():
        out = done[str(paths[name])]
        assert "error" in out and key in out["error"] and words in out["error"], (name, out)
    assert peak < 400 << 20


def test_control_numpy_load_of_the_array_bombs_exceeds_the_cap(tmp_path):
    paths = hostile_array_files(tmp_path)
    code = textwrap.dedent(f"""
        import resource, sys, numpy as np
        resource.setrlimit(resource.RLIMIT_AS, ({AS_CAP}, {AS_CAP}))
        for path in sys.argv[1:]:
            try:
                z = np.load(path)
                z["poses"] if path.endswith(".npz") else z
            except MemoryError:
                print("MemoryError", path)
    """)
    targets = [paths["zip_bomb.npz"], paths["header_lies.npz"], paths["header_lies.npy"]]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, targets)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("MemoryError") == 3, proc.stdout + proc.stderr


def test_resampling_cannot_make_a_memory_bomb(tmp_path):
    m = load_motion(_tiny_amass(tmp_path))
    with pytest.raises(MotionError, match="at most 2,097,152 frames"):
        m.resample(1e9)
    with pytest.raises(MotionError, match="at most 2,097,152 frames"):
        load_motion(_tiny_amass(tmp_path), fps=30, source_fps=1e-6)


def _tiny_amass(folder: Path) -> Path:
    path = folder / "tiny.npz"
    np.savez(path, poses=np.zeros((4, 156)), trans=np.zeros((4, 3)), mocap_framerate=np.array(30.0))
    return path
