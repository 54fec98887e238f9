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
