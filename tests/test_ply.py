"""Tests of backend.ply: the standard 3DGS PLY layout, round trips, foreign files, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from backend.ply import PROPERTIES, SH_C0, PlyError, read_ply, write_ply
from backend.render import GaussianSet


def sample_set(n=50, seed=0) -> GaussianSet:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return GaussianSet(
        means=t(rng.normal(size=(n, 3))),
        quats=t(q),
        scales=t(np.exp(rng.uniform(-6, 0, (n, 3)))),
        opacities=t(rng.uniform(0.01, 0.99, n)),
        colors=t(rng.uniform(0, 1, (n, 3))),
    )


def header_of(path) -> list[str]:
    lines = []
    with open(path, "rb") as f:
        while True:
            line = f.readline().decode("ascii").rstrip("\n")
            lines.append(line)
            if line == "end_header":
                return lines


def assert_same(a: GaussianSet, b: GaussianSet, tol=1e-5):
    for name in ("means", "quats", "scales", "opacities", "colors"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert torch.allclose(x, y, rtol=tol, atol=tol), (name, float((x - y).abs().max()))


def test_round_trip_preserves_values(tmp_path):
    g = sample_set()
    p = write_ply(tmp_path / "a.ply", g)
    h = read_ply(p)
    assert len(h) == len(g) and h.means.dtype == torch.float32
    assert_same(g, h)


def test_header_has_exact_3dgs_property_order_and_binary_body(tmp_path):
    g = sample_set(7)
    normals = torch.tensor(np.random.default_rng(1).normal(size=(7, 3)), dtype=torch.float32)
    p = tmp_path / "b.ply"
    write_ply(p, g, normals=normals)
    lines = header_of(p)
    assert lines[0] == "ply"
    assert lines[1] == "format binary_little_endian 1.0"
    assert lines[2] == "comment dreamwaltz up_axis=y"
    assert lines[3] == "element vertex 7"
    assert lines[4:-1] == [f"property float {n}" for n in PROPERTIES]
    rest = [f"f_rest_{i}" for i in range(45)]
    assert [*PROPERTIES] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
                             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    raw = p.read_bytes()
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n"):]
    assert len(body) == 7 * 62 * 4
    data = np.frombuffer(body, dtype="<f4").reshape(7, 62)
    # stored encodings: logit opacity, log scales, wxyz rotation, SH DC colour, zero f_rest
    o = g.opacities.double().numpy()
    assert np.allclose(data[:, 54], np.log(o / (1 - o)), atol=1e-5)
    assert np.allclose(data[:, 55:58], np.log(g.scales.double().numpy()), atol=1e-5)
    assert np.allclose(data[:, 58:62], g.quats.numpy(), atol=1e-6)
    assert np.allclose(data[:, 6:9], (g.colors.double().numpy() - 0.5) / SH_C0, atol=1e-5)
    assert (data[:, 9:54] == 0).all()
    assert np.allclose(data[:, 3:6], normals.numpy())
    assert np.allclose(data[:, 0:3], g.means.numpy())


def test_empty_set_round_trips(tmp_path):
    p = write_ply(tmp_path / "e.ply", GaussianSet.empty())
    assert len(read_ply(p)) == 0


def test_reads_foreign_files_with_extra_properties_ascii_and_big_endian(tmp_path):
    g = sample_set(5, seed=3)
    o = g.opacities.double().numpy()
    cols = {
        "x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2],
        "f_dc_0": (g.colors[:, 0] - 0.5) / SH_C0, "f_dc_1": (g.colors[:, 1] - 0.5) / SH_C0,
        "f_dc_2": (g.colors[:, 2] - 0.5) / SH_C0,
        "opacity": np.log(o / (1 - o)),
        "scale_0": g.scales[:, 0].log(), "scale_1": g.scales[:, 1].log(), "scale_2": g.scales[:, 2].log(),
        "rot_0": g.quats[:, 0], "rot_1": g.quats[:, 1], "rot_2": g.quats[:, 2], "rot_3": g.quats[:, 3],
    }
    rng = np.random.default_rng(0)
    for i in range(45):
        cols[f"f_rest_{i}"] = rng.normal(size=5)
    cols["red"] = np.arange(5)  # a uchar, to vary the types
    # a foreign order: rot first, then f_rest in the middle, no normals
    order = ["rot_0", "rot_1", "rot_2", "rot_3", "x", "y", "z"] + [f"f_rest_{i}" for i in range(45)] + [
        "f_dc_0", "f_dc_1", "f_dc_2", "red", "opacity", "scale_0", "scale_1", "scale_2"]
    types = {n: ("uchar" if n == "red" else "double" if n.startswith("scale") else "float") for n in order}
    npt = {"uchar": "u1", "float": "f4", "double": "f8"}
    arrs = {n: np.asarray(cols[n], dtype=np.float64) for n in order}

    def header(fmt):
        h = f"ply\nformat {fmt} 1.0\ncomment written by some other tool\nelement camera 1\nproperty float fov\n"
        h += "element vertex 5\n" + "".join(f"property {types[n]} {n}\n" for n in order)
        h += "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
        return h

    # ascii
    pa = tmp_path / "ascii.ply"
    body = "0.7\n" + "".join(" ".join(repr(float(arrs[n][i])) if types[n] != "uchar" else str(int(arrs[n][i]))
                                      for n in order) + "\n" for i in range(5))
    pa.write_text(header("ascii") + body)
    assert_same(g, read_ply(pa), tol=1e-5)
    # binary big endian, with a fixed-size element before the vertices
    pb = tmp_path / "be.ply"
    rec = np.empty(5, dtype=[(n, ">" + npt[types[n]]) for n in order])
    for n in order:
        rec[n] = arrs[n]
    pb.write_bytes(header("binary_big_endian").encode() + np.array([0.7], ">f4").tobytes() + rec.tobytes())
    assert_same(g, read_ply(pb), tol=1e-5)


def test_dc_colour_is_clamped_at_zero_only_and_a_lone_f_rest_is_refused(tmp_path):
    """INRIA clamps colour at 0 after SH evaluation and never at 1 (issue 17); a file with one
    f_rest property is inconsistent (SH needs 3, 8 or 15 per channel) and named as such."""
    p = tmp_path / "c.ply"
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    vals = [0, 0, 0, 10.0, -10.0, 0.0, 0.0, 0, 0, 0, 2.0, 0, 0, 0]
    p.write_text("ply\nformat ascii 1.0\nelement vertex 1\n" + "".join(f"property float {n}\n" for n in names)
                 + "end_header\n" + " ".join(map(str, vals)) + "\n")
    g = read_ply(p)
    assert torch.allclose(g.colors, torch.tensor([[0.5 + SH_C0 * 10.0, 0.0, 0.5]]))
    assert torch.allclose(g.opacities, torch.tensor([0.5])) and torch.allclose(g.scales, torch.ones(1, 3))
    assert torch.allclose(g.quats, torch.tensor([[2.0, 0, 0, 0]]))  # stored as read; renderers normalise
    q = tmp_path / "lone.ply"
    q.write_text("ply\nformat ascii 1.0\nelement vertex 1\n" + "".join(f"property float {n}\n" for n in names)
                 + "property float f_rest_0\nend_header\n" + " ".join(map(str, vals + [5.0])) + "\n")
    with pytest.raises(PlyError, match="lone.ply: f_rest has 1 properties"):
        read_ply(q)


def test_not_a_ply_missing_property_and_truncation_raise_ply_error_naming_the_file(tmp_path):
    bad = tmp_path / "notply.ply"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nrest")
    with pytest.raises(PlyError, match="notply.ply.*not a PLY"):
        read_ply(bad)

    missing = tmp_path / "missing.ply"
    missing.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                       "property float z\nend_header\n0 0 0\n")
    with pytest.raises(PlyError, match="missing.ply.*f_dc_0.*opacity"):
        read_ply(missing)

    good = write_ply(tmp_path / "good.ply", sample_set(20))
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.ply"
    trunc.write_bytes(raw[:-10])
    with pytest.raises(PlyError, match="trunc.ply.*truncated"):
        read_ply(trunc)
    head_only = tmp_path / "head.ply"
    head_only.write_bytes(raw[:40])
    with pytest.raises(PlyError, match="head.ply.*truncated"):
        read_ply(head_only)
    with pytest.raises(PlyError, match="nothere.ply"):
        read_ply(tmp_path / "nothere.ply")
    assert issubclass(PlyError, ValueError)

    nan = tmp_path / "nan.ply"
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    nan.write_text("ply\nformat ascii 1.0\nelement vertex 1\n" + "".join(f"property float {n}\n" for n in names)
                   + "end_header\nnan" + " 0" * 13 + "\n")
    with pytest.raises(PlyError, match="nan.ply.*x.*NaN"):
        read_ply(nan)


def test_write_is_atomic_and_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.ply"
    write_ply(target, sample_set(10, seed=1))
    before = target.read_bytes()

    # invalid Gaussians: refused, old file untouched, nothing else written
    g = sample_set(10, seed=2)
    g.means[3, 1] = float("nan")
    with pytest.raises(PlyError, match="out.ply.*NaN"):
        write_ply(target, g)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.ply"]

    # failure half-way through writing: the temp file is removed, the old file stays
    import backend.files as files_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(files_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_ply(target, sample_set(10, seed=3))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.ply"]
    monkeypatch.undo()

    # success replaces the file whole
    write_ply(target, sample_set(12, seed=4))
    assert len(read_ply(target)) == 12
    assert sorted(os.listdir(tmp_path)) == ["out.ply"]


def test_extreme_values_stay_finite(tmp_path):
    g = sample_set(3)
    g.opacities[:] = torch.tensor([0.0, 1.0, 0.5])
    g.scales[0] = 0.0
    h = read_ply(write_ply(tmp_path / "x.ply", g))
    assert torch.isfinite(h.opacities).all() and torch.isfinite(h.scales).all()
    assert float(h.opacities[0]) < 1e-5 and float(h.opacities[1]) > 1 - 1e-5
    assert float(h.scales[0].max()) < 1e-9
