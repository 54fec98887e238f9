"""3DGS interchange (issue 17, items 2, 3 and bad input): every format is read from files built
by an independent writer that follows the format's published layout (plyfile for PLY, struct
packing per nianticlabs/spz, antimatter15/splat, PlayCanvas splat-transform and the Khronos
KHR_gaussian_splatting text), round-trips through our own reader and writer, and refuses broken
files with one error naming the file and the property, leaving nothing half-written."""

from __future__ import annotations

import gzip
import json
import math
import os
import struct

import numpy as np
import pytest

from backend.gsio import GaussianFileError, Splats, detect_format, read_gaussians, write_gaussians
from backend.render.sh import C0

plyfile = pytest.importorskip("plyfile")


def sample(n=300, degree=3, seed=0, up="y") -> Splats:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = (degree + 1) ** 2 - 1
    return Splats(means=rng.uniform(-2, 2, (n, 3)), quats=q, scales=np.exp(rng.uniform(-5, -1, (n, 3))),
                  opacities=rng.uniform(0.05, 0.95, n), colors=rng.uniform(-0.1, 1.1, (n, 3)),
                  sh=rng.uniform(-0.45, 0.45, (n, k, 3)) if k else None, up=up)


def same_rotation(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert np.abs(np.abs((a * b).sum(1)) - 1).max() < tol  # q and -q are one rotation


def assert_close(a: Splats, b: Splats, pos=1e-6, rot=1e-6, log_scale=1e-5, opacity=1e-6, color=1e-6, sh=1e-6):
    assert len(a) == len(b) and a.sh_degree == b.sh_degree
    np.testing.assert_allclose(b.means, a.means, atol=pos)
    same_rotation(a.quats, b.quats, rot)
    np.testing.assert_allclose(np.log(b.scales), np.log(a.scales), atol=log_scale)
    np.testing.assert_allclose(b.opacities, a.opacities, atol=opacity)
    np.testing.assert_allclose(b.colors, a.colors, atol=color)
    if a.sh is not None:
        np.testing.assert_allclose(b.sh, a.sh, atol=sh)


# ---- INRIA PLY ------------------------------------------------------------------------------

def inria_vertex_array(s: Splats, order=None, extra=True) -> np.ndarray:
    """What INRIA's save_ply writes, built with numpy + plyfile (not our writer)."""
    k = s.sh.shape[1]
    cols = {"x": s.means[:, 0], "y": s.means[:, 1], "z": s.means[:, 2]}
    for i in range(3):
        cols[f"f_dc_{i}"] = (s.colors[:, i] - 0.5) / C0
        cols[f"scale_{i}"] = np.log(s.scales[:, i])
    rest = s.sh.transpose(0, 2, 1).reshape(len(s), 3 * k)
    for i in range(3 * k):
        cols[f"f_rest_{i}"] = rest[:, i]
    cols["opacity"] = np.log(s.opacities / (1 - s.opacities))
    for i in range(4):
        cols[f"rot_{i}"] = s.quats[:, i]
    if extra:
        cols["red"] = np.arange(len(s)) % 256
    names = order or list(cols)
    arr = np.empty(len(s), dtype=[(n, "u1" if n == "red" else "f4") for n in names])
    for n in names:
        arr[n] = cols[n]
    return arr


def test_inria_ply_from_an_independent_writer_any_order_and_encoding(tmp_path):
    """plyfile writes the INRIA properties shuffled, with extras, in binary BE and ascii."""
    s = sample(40)
    order = list(inria_vertex_array(s).dtype.names)
    np.random.default_rng(1).shuffle(order)
    arr = inria_vertex_array(s, order=order)
    for name, text, byte_order in (("be.ply", False, ">"), ("ascii.ply", True, "=")):
        el = plyfile.PlyElement.describe(arr, "vertex")
        face = plyfile.PlyElement.describe(np.zeros(0, dtype=[("vertex_indices", "O")]), "face",
                                           len_types={"vertex_indices": "u1"}, val_types={"vertex_indices": "i4"})
        plyfile.PlyData([el, face], text=text, byte_order=byte_order).write(str(tmp_path / name))
        got = read_gaussians(tmp_path / name)
        assert got.up == "-y", "a foreign PLY is taken to be in COLMAP's frame"
        assert_close(s, got, pos=1e-6, rot=1e-6, log_scale=1e-5, color=1e-6, sh=1e-6)


def test_exported_ply_passes_the_inria_loaders_checks(tmp_path):
    """A re-implementation of GaussianModel.load_ply (graphdeco-inria/gaussian-splatting) on
    plyfile: max_sh_degree 3 asserts 45 f_rest; SIBR's fixed record is 62 floats."""
    s = sample(25, degree=1)
    path = write_gaussians(tmp_path / "out.ply", s)
    ply = plyfile.PlyData.read(str(path))
    el = ply.elements[0]
    xyz = np.stack([np.asarray(el["x"]), np.asarray(el["y"]), np.asarray(el["z"])], axis=1)
    opacities = np.asarray(el["opacity"])[..., np.newaxis]
    features_dc = np.stack([np.asarray(el[f"f_dc_{i}"]) for i in range(3)], 1)[..., None]
    extra = sorted([p.name for p in el.properties if p.name.startswith("f_rest_")], key=lambda x: int(x.split("_")[-1]))
    max_sh_degree = 3
    assert len(extra) == 3 * (max_sh_degree + 1) ** 2 - 3
    features_extra = np.stack([np.asarray(el[n]) for n in extra], 1).reshape(len(xyz), 3, (max_sh_degree + 1) ** 2 - 1)
    scale_names = sorted([p.name for p in el.properties if p.name.startswith("scale_")], key=lambda x: int(x.split("_")[-1]))
    rot_names = sorted([p.name for p in el.properties if p.name.startswith("rot")], key=lambda x: int(x.split("_")[-1]))
    assert len(scale_names) == 3 and len(rot_names) == 4
    assert [p.name for p in el.properties][:6] == ["x", "y", "z", "nx", "ny", "nz"]
    assert len(el.properties) == 62 and all(p.val_dtype in ("f4", "<f4", "float32") for p in el.properties)
    np.testing.assert_allclose(xyz, s.means, atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-opacities[:, 0])), s.opacities, atol=1e-6)
    np.testing.assert_allclose(features_dc[:, :, 0] * C0 + 0.5, s.colors, atol=1e-6)
    np.testing.assert_allclose(features_extra[:, :, :3].transpose(0, 2, 1), s.sh, atol=1e-6)
    assert (features_extra[:, :, 3:] == 0).all(), "degree 1 data zero-padded to the declared degree 3"


def test_every_format_round_trips_through_our_reader_and_writer(tmp_path):
    s = sample(600)
    cases = {  # format: tolerances of its encoding
        "out.ply": dict(),
        "out.glb": dict(),
        "out.compressed.ply": dict(pos=4.0 / 1023 / 2 * 1.01, rot=2e-3, log_scale=4.0 / 1023, opacity=0.5 / 255,
                                   color=1.2 / 255, sh=8 / 256),
        "out.spz": dict(pos=0.5 / 4096, rot=3e-3, log_scale=0.5 / 16, opacity=0.5 / 255, color=0.5 / 255 / 0.15 * C0,
                        sh=0.5 / 128),
    }
    for name, tol in cases.items():
        path = write_gaussians(tmp_path / name, s)
        got = read_gaussians(path)
        assert got.up == "y", name
        assert_close(s, got, **tol)
    flat = sample(600, degree=0)
    flat.colors = np.clip(flat.colors, 0, 1)
    got = read_gaussians(write_gaussians(tmp_path / "out.splat", flat))
    order = np.argsort(-(np.prod(flat.scales, 1) * flat.opacities), kind="stable")
    flat_sorted = Splats(flat.means[order], flat.quats[order], flat.scales[order], flat.opacities[order],
                         flat.colors[order], None, "-y")
    assert_close(flat_sorted, got, pos=1e-6, rot=2e-2, log_scale=1e-6, opacity=0.5 / 255, color=0.5 / 255)


# ---- compact formats from independent writers -------------------------------------------------

def test_splat_records_packed_by_hand(tmp_path):
    rec = struct.pack("<3f3f4B4B", 1.0, -2.0, 3.0, 0.1, 0.2, 0.3, 255, 128, 0, 64, 128 + 127, 128, 128, 128)
    (tmp_path / "a.splat").write_bytes(rec * 2)
    s = read_gaussians(tmp_path / "a.splat")
    assert len(s) == 2 and s.up == "-y" and s.sh is None
    np.testing.assert_allclose(s.means[0], [1, -2, 3])
    np.testing.assert_allclose(s.scales[0], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(s.colors[0], [1.0, 128 / 255, 0.0])
    assert s.opacities[0] == pytest.approx(64 / 255)
    same_rotation(s.quats[:1], np.array([[1.0, 0, 0, 0]]), 1e-4)


def spz_payload(version: int, degree: int, means, alphas, colors_u8, scales_u8, rot_bytes, sh_u8, frac=12) -> bytes:
    """Per nianticlabs/spz README: planes after a 16-byte header (gzip for versions 1-3)."""
    fixed = np.round(np.asarray(means) * (1 << frac)).astype(np.int64)
    pos = bytes(np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], -1).astype(np.uint8).ravel())
    header = struct.pack("<IIIBBBB", 0x5053474E, version, len(means), degree, frac, 0, 0)
    return header + pos + bytes(alphas) + bytes(colors_u8) + bytes(scales_u8) + bytes(rot_bytes) + bytes(sh_u8)


def test_spz_versions_2_3_and_4_packed_by_hand(tmp_path):
    means = [[0.5, -1.25, 2.0], [-3.0, 0.0, 0.25]]
    alphas = [255, 51]
    colors = [127, 127, 127, 165, 90, 127]           # f_dc = (c/255 - .5) / .15
    scales = [160, 160, 160, 96, 112, 128]            # ln s = c/16 - 10
    sh = [128] * 9 + [128 + 64, 128, 128 - 64] + [128] * 6  # degree 1: coefficient outer, channel inner
    # version 2: rotation as x y z u8 (q·127.5 + 127.5), w derived
    rot2 = [128, 128, 128, 255, 128, 128]             # identity; 180° about x
    data = gzip.compress(spz_payload(2, 1, means, alphas, colors, scales, rot2, sh))
    (tmp_path / "v2.spz").write_bytes(data)
    # version 3: smallest three; identity = largest w (index 3), others 0
    # 1st: w=0.8, x=0.6 (mag round(511·0.6/√½) = 434 in the first of the three slots); 2nd: largest x
    rot3 = list(struct.pack("<I", (3 << 30) | (434 << 20))) + list(struct.pack("<I", 0 << 30))
    (tmp_path / "v3.spz").write_bytes(gzip.compress(spz_payload(3, 1, means, alphas, colors, scales, rot3, sh)))
    for name in ("v2.spz", "v3.spz"):
        s = read_gaussians(tmp_path / name)
        assert s.up == "y" and s.sh_degree == 1
        np.testing.assert_allclose(s.means, means, atol=1 / 4096)
        np.testing.assert_allclose(s.opacities, [1.0, 0.2])
        np.testing.assert_allclose(s.colors[1], 0.5 + C0 * (np.array([165, 90, 127]) / 255 - 0.5) / 0.15)
        np.testing.assert_allclose(np.log(s.scales[1]), [96 / 16 - 10, 112 / 16 - 10, -2.0])
        first = [1.0, 0, 0, 0] if name == "v2.spz" else [0.8, 0.6, 0, 0]
        same_rotation(s.quats, np.array([first, [0, 1.0, 0, 0]]), 2e-3)
        np.testing.assert_allclose(s.sh[1, 0], [0.5, 0.0, -0.5])
    # version 4: plain NGSP header, TOC, one zstd stream per plane
    zstandard = pytest.importorskip("zstandard")
    body = spz_payload(3, 1, means, alphas, colors, scales, rot3, sh)[16:]
    sizes = [9 * 2, 2, 6, 6, 8, 18]
    planes, at = [], 0
    for size in sizes:
        planes.append(body[at: at + size])
        at += size
    comp = [zstandard.ZstdCompressor().compress(p) for p in planes]
    header = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, 2, 1, 12, 0, len(planes), 32)
    toc = b"".join(struct.pack("<QQ", len(c), len(p)) for c, p in zip(comp, planes))
    (tmp_path / "v4.spz").write_bytes(header + toc + b"".join(comp))
    v4 = read_gaussians(tmp_path / "v4.spz")
    v3 = read_gaussians(tmp_path / "v3.spz")
    for f in ("means", "quats", "scales", "opacities", "colors", "sh"):
        np.testing.assert_array_equal(getattr(v4, f), getattr(v3, f))


def test_compressed_ply_packed_by_hand(tmp_path):
    """One chunk, two Gaussians, words packed per splat-transform's layout."""
    chunk = np.array([(0, 0, 0, 2, 4, 8, -5, -5, -5, -1, -1, -1, 0, 0, 0, 1, 1, 1)],
                     dtype=[(n, "<f4") for n in ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "min_scale_x",
                                                 "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y",
                                                 "max_scale_z", "min_r", "min_g", "min_b", "max_r", "max_g", "max_b")])
    pos = [(2047 << 21) | (0 << 11) | 1023, 0]
    scl = [(2047 << 21) | (1023 << 11) | 2047, 0]
    col = [(255 << 24) | (0 << 16) | (255 << 8) | 128, (0 << 24) | (255 << 16) | (0 << 8) | 255]
    rot = [(3 << 30) | (512 << 20) | (512 << 10) | 512, (0 << 30) | (512 << 20) | (512 << 10) | 512]
    vertex = np.array(list(zip(pos, rot, scl, col)), dtype=[(n, "<u4") for n in
                                                           ("packed_position", "packed_rotation", "packed_scale", "packed_color")])
    sh = np.array([tuple([255] + [128] * 8), tuple([0] + [128] * 8)], dtype=[(f"f_rest_{i}", "u1") for i in range(9)])
    plyfile.PlyData([plyfile.PlyElement.describe(chunk, "chunk"), plyfile.PlyElement.describe(vertex, "vertex"),
                     plyfile.PlyElement.describe(sh, "sh")]).write(str(tmp_path / "c.ply"))
    assert detect_format(tmp_path / "c.ply") == "compressed-ply"
    s = read_gaussians(tmp_path / "c.ply")
    np.testing.assert_allclose(s.means[0], [2.0, 0.0, 8 * 1023 / 2047], atol=1e-6)
    np.testing.assert_allclose(np.log(s.scales[0]), [-1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(s.colors[0], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(s.opacities, [128 / 255, 1.0])
    assert abs(abs(s.quats[0, 3]) - 1) < 1e-2 and abs(abs(s.quats[1, 0]) - 1) < 1e-2
    assert s.sh_degree == 1 and s.sh[0, 0, 0] == pytest.approx(4.0) and s.sh[1, 0, 0] == pytest.approx(-4.0)


def test_glb_written_by_hand(tmp_path):
    n = 3
    pos = np.arange(9, dtype="<f4").reshape(3, 3)
    rot = np.tile(np.array([0, 0, 0, 1], "<f4"), (n, 1))
    attrs = {"POSITION": pos, "KHR_gaussian_splatting:ROTATION": rot,
             "KHR_gaussian_splatting:SCALE": np.full((n, 3), 0.1, "<f4"),
             "KHR_gaussian_splatting:OPACITY": np.full((n, 1), 0.5, "<f4"),
             "KHR_gaussian_splatting:SH_DEGREE_0_COEF_0": np.zeros((n, 3), "<f4")}
    blob, views, accs, names = b"", [], [], {}
    for i, (k, v) in enumerate(attrs.items()):
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": v.nbytes})
        accs.append({"bufferView": i, "componentType": 5126, "count": n, "type": {1: "SCALAR", 3: "VEC3", 4: "VEC4"}[v.shape[1]]})
        names[k] = i
        blob += v.tobytes()
    t = math.sqrt(0.5)
    doc = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}],
           "nodes": [{"mesh": 0, "rotation": [t, 0, 0, t], "translation": [0, 1, 0], "scale": [2, 2, 2]}],
           "meshes": [{"primitives": [{"attributes": names, "mode": 0, "extensions": {
               "KHR_gaussian_splatting": {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}}}]}],
           "buffers": [{"byteLength": len(blob)}], "bufferViews": views, "accessors": accs}
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    glb = struct.pack("<III", 0x46546C67, 2, 28 + len(text) + len(blob)) + struct.pack("<II", len(text), 0x4E4F534A) + text
    glb += struct.pack("<II", len(blob), 0x004E4942) + blob
    (tmp_path / "a.glb").write_bytes(glb)
    s = read_gaussians(tmp_path / "a.glb")
    # the node turns 90° about x, doubles and lifts by 1: (x, y, z) -> (2x, 1 - 2z, 2y)
    np.testing.assert_allclose(s.means, np.c_[2 * pos[:, 0], 1 - 2 * pos[:, 2], 2 * pos[:, 1]], atol=1e-5)
    np.testing.assert_allclose(s.scales, 0.2, atol=1e-6)
    same_rotation(s.quats, np.tile([t, t, 0, 0], (n, 1)), 1e-6)
    np.testing.assert_allclose(s.colors, 0.5)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.ply", "a.compressed.ply", "a.spz", "a.glb", "a.splat"])
def test_truncated_files_are_named(tmp_path, name):
    s = sample(300, degree=0 if name.endswith(".splat") else 3)
    data = write_gaussians(tmp_path / name, s).read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[: len(data) - 37])
    with pytest.raises(GaussianFileError, match=f"cut_{name}.*(truncated|runs past|corrupt)"):
        read_gaussians(cut)


def test_sh_degree_above_3_nan_and_inconsistency_are_named(tmp_path):
    s = sample(10, degree=3)
    arr = inria_vertex_array(s, extra=False)
    deg4 = np.empty(10, dtype=arr.dtype.descr + [(f"f_rest_{i}", "f4") for i in range(45, 72)])
    for n in arr.dtype.names:
        deg4[n] = arr[n]
    plyfile.PlyData([plyfile.PlyElement.describe(deg4, "vertex")]).write(str(tmp_path / "deg4.ply"))
    with pytest.raises(GaussianFileError, match=r"deg4\.ply: f_rest has 72 properties \(SH degree 4\); at most SH degree 3"):
        read_gaussians(tmp_path / "deg4.ply")
    arr["scale_1"][3] = np.nan
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "nan.ply"))
    with pytest.raises(GaussianFileError, match=r"nan\.ply: scale_1 holds NaN.*vertex 3"):
        read_gaussians(tmp_path / "nan.ply")
    spz4 = gzip.compress(spz_payload(3, 4, [[0, 0, 0]], [1], [1, 1, 1], [1, 1, 1], [0, 0, 0, 0xC0], [128] * 72))
    (tmp_path / "deg4.spz").write_bytes(spz4)
    with pytest.raises(GaussianFileError, match=r"deg4\.spz: shDegree 4 .*at most SH degree 3"):
        read_gaussians(tmp_path / "deg4.spz")
    path = write_gaussians(tmp_path / "c.compressed.ply", sample(300, degree=0))
    text = path.read_bytes().replace(b"element chunk 2", b"element chunk 1")
    (tmp_path / "bad_chunks.ply").write_bytes(text)
    with pytest.raises(GaussianFileError, match=r"bad_chunks\.ply: chunk count 1 is inconsistent with 300"):
        read_gaussians(tmp_path / "bad_chunks.ply")
    (tmp_path / "odd.ply").write_bytes(b"\x89PNG....")
    with pytest.raises(GaussianFileError, match=r"odd\.ply: is not a PLY file"):
        read_gaussians(tmp_path / "odd.ply")
    (tmp_path / "what.bin").write_bytes(b"hello world")
    with pytest.raises(GaussianFileError, match=r"what\.bin: is not an INRIA or compressed 3DGS PLY, \.splat, \.spz"):
        read_gaussians(tmp_path / "what.bin")


def test_bad_gaussians_are_refused_before_anything_is_written(tmp_path):
    s = sample(20)
    target = write_gaussians(tmp_path / "keep.spz", s)
    before = target.read_bytes()
    s.means[4, 2] = np.inf
    for name in ("keep.spz", "new.ply", "new.glb"):
        with pytest.raises(GaussianFileError, match=rf"{name}: means holds NaN or infinite values \(first at Gaussian 4\)"):
            write_gaussians(tmp_path / name, s)
    far = sample(5)
    far.means[0, 0] = 5000.0
    with pytest.raises(GaussianFileError, match="keep.spz: means lie beyond"):
        write_gaussians(tmp_path / "keep.spz", far)
    with pytest.raises(GaussianFileError, match="keep.spz: up .*Y-up"):
        write_gaussians(tmp_path / "keep.spz", sample(5, up="-y"))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.spz"]



def test_turning_to_another_up_axis_turns_positions_orientations_and_sh_together(tmp_path):
    """What `export-ply --up -y` does: the file is the same scene seen in COLMAP's frame."""
    import torch

    from backend.render.sh import view_colors

    s = sample(50, degree=3, up="y")
    t = s.turned("-y")
    np.testing.assert_allclose(t.means, s.means * [1, -1, -1])  # 180° about x
    assert_close(s, t.turned("y"), pos=1e-12, rot=1e-9, log_scale=1e-12, sh=1e-9)
    d = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    seen = view_colors(-d, torch.as_tensor(s.colors), torch.as_tensor(s.sh), np.zeros(3))
    seen_turned = view_colors(-d * flip, torch.as_tensor(t.colors), torch.as_tensor(t.sh), np.zeros(3))
    torch.testing.assert_close(seen, seen_turned)
    z = s.turned("z")
    np.testing.assert_allclose(z.means, np.c_[s.means[:, 0], -s.means[:, 2], s.means[:, 1]], atol=1e-12)
    assert read_gaussians(write_gaussians(tmp_path / "colmap.ply", t)).up == "-y", "the frame is recorded in the file"
