"""The body model API and the open template: what every other part poses."""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import numpy as np
import pytest
import torch

from backend.body import JOINT_NAMES, PARENTS, BodyModel, BodyModelError
from backend.body import template as tpl

from .conftest import run_backend


def _random_pose(batch: int, seed: int = 0, scale: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda n: torch.randn(batch, n, generator=g) * scale  # noqa: E731
    return dict(global_orient=r(3), body_pose=r(63), left_hand_pose=r(45), right_hand_pose=r(45),
                jaw_pose=r(3), leye_pose=r(3), reye_pose=r(3))


def test_template_file_loads_in_smplx_itself(body):
    import smplx
    from smplx.joint_names import JOINT_NAMES as SMPLX_NAMES

    with contextlib.redirect_stdout(io.StringIO()):
        model = smplx.SMPLX(str(body.path), ext="npz")
    out = model()
    assert out.vertices.shape[1] == body.num_vertices
    assert tuple(SMPLX_NAMES[:55]) == JOINT_NAMES
    assert tuple(model.parents.tolist()) == PARENTS
    assert body.kind == "template"


def test_template_is_deterministic():
    a, b = tpl.generate(), tpl.generate()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_rest_pose_is_an_upright_adult(body):
    v = body.shaped_vertices().numpy()
    j = body.rest_joints().numpy()
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.6 < height < 1.8
    idx = {n: i for i, n in enumerate(JOINT_NAMES)}
    assert j[idx["head"], 1] > j[idx["neck"], 1] > j[idx["pelvis"], 1] > j[idx["left_knee"], 1] > j[idx["left_ankle"], 1]
    assert j[idx["left_wrist"], 0] > 0.5 and j[idx["right_wrist"], 0] < -0.5  # T-pose, left is +X
    assert j[idx["left_eye_smplhf"], 2] > j[idx["head"], 2]                     # the face looks along +Z
    for i, p in enumerate(PARENTS[1:], start=1):
        assert np.linalg.norm(j[i] - j[p]) > 0.005, f"{JOINT_NAMES[i]} sits on its parent"


def test_skin_is_closed_and_outward(body):
    faces = body.faces
    edges = Counter()
    for a, b in ((0, 1), (1, 2), (2, 0)):
        for u, w in zip(faces[:, a], faces[:, b]):
            edges[(min(u, w), max(u, w))] += 1
    assert set(edges.values()) == {2}, "every edge of a closed surface borders exactly two triangles"
    v = body.shaped_vertices().numpy().astype(np.float64)
    tri = v[faces]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert 0.04 < volume < 0.12, f"body volume {volume:.3f} m^3 is not an adult's"


def test_five_three_segment_fingers_and_a_jaw_move_their_skin(body):
    dominant = body.skinning_weights.argmax(1).numpy()
    for side in ("left", "right"):
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            for k in (1, 2, 3):
                j = JOINT_NAMES.index(f"{side}_{finger}{k}")
                assert (dominant == j).sum() > 20, f"{side}_{finger}{k} owns no skin"
    jaw = JOINT_NAMES.index("jaw")
    assert (dominant == jaw).sum() > 50
    out = body.forward(jaw_pose=torch.tensor([[0.4, 0.0, 0.0]]))
    moved = (out.vertices[0] - body.shaped_vertices()).norm(dim=1)
    assert moved[torch.as_tensor(dominant == jaw)].mean() > 0.01
    assert moved[torch.as_tensor(dominant == 0)].max() < 1e-6


def test_skinning_weights_are_smooth_partitions_over_all_joints(body):
    w = body.skinning_weights
    torch.testing.assert_close(w.sum(1), torch.ones(len(w)), atol=1e-5, rtol=0)
    assert (w >= 0).all()
    assert ((w > 0).any(0)).all(), "every joint must influence some skin"
    blended = ((w > 0.05) & (w < 0.95)).any(1).float().mean()
    assert blended > 0.05, "weights should blend near joints, not be rigid everywhere"


def test_our_posing_matches_smplx_forward(body):
    p = _random_pose(3)
    betas = torch.randn(body.num_betas, generator=torch.Generator().manual_seed(1))
    expr = torch.randn(3, body.num_expression, generator=torch.Generator().manual_seed(2))
    transl = torch.randn(3, 3, generator=torch.Generator().manual_seed(3))
    ours = body.forward(betas=betas, expression=expr, transl=transl, **p)
    ref = body.smplx_forward(betas=betas[None].expand(3, -1), expression=expr, transl=transl, **p)
    torch.testing.assert_close(ours.vertices, ref.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.joints, ref.joints[:, :55], atol=1e-5, rtol=0)


def test_transforms_path_equals_parameter_path(body):
    p = _random_pose(1, seed=5)
    out = body.forward(**p)
    rot = body.local_rotations(body.full_pose(1, **p))
    again = body.pose_vertices(out.transforms, local_rotations=rot)
    torch.testing.assert_close(again, out.vertices, atol=1e-5, rtol=0)
    # The skinning transform of a joint maps its rest position to its posed position.
    rest = body.rest_joints()
    mapped = (out.transforms[0, :, :3, :3] @ rest[:, :, None])[..., 0] + out.transforms[0, :, :3, 3]
    torch.testing.assert_close(mapped, out.joints[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", range(10))
def test_each_shape_component_changes_the_body(body, k):
    betas = torch.zeros(body.num_betas)
    betas[k] = 2.0
    d = (body.shaped_vertices(betas) - body.shaped_vertices()).norm(dim=1)
    assert d.max() > 0.005, f"shape component {tpl.SHAPE_COMPONENTS[k]} barely moves the body"


def test_height_component_makes_a_taller_body(body):
    heights = []
    for b0 in (-2.0, 0.0, 2.0):
        v = body.shaped_vertices(torch.tensor([b0] + [0.0] * 9))
        heights.append(float(v[:, 1].max() - v[:, 1].min()))
    assert heights[0] < heights[1] < heights[2]
    assert heights[2] / heights[1] == pytest.approx(1.08, abs=0.01)


@pytest.mark.parametrize("k", range(10))
def test_each_expression_moves_only_the_face(body, k):
    e = torch.zeros(1, body.num_expression)
    e[0, k] = 2.0
    d = (body.shaped_vertices(expression=e) - body.shaped_vertices()).norm(dim=1)
    head = torch.as_tensor(body.regions()["head"])
    assert d[head].max() > 0.002, f"expression {tpl.EXPRESSION_COMPONENTS[k]} does nothing"
    assert d[~head].max() < 1e-6


def test_regions_are_where_they_belong(body):
    r = body.regions()
    v = body.shaped_vertices().numpy()
    assert v[r["left_hand"], 0].min() > 0.6 and v[r["right_hand"], 0].max() < -0.6
    assert v[r["head"], 1].min() > 0.5
    assert r["face"].sum() > 100 and (r["face"] <= r["head"]).all()
    assert v[r["face"], 2].mean() > v[r["head"], 2].mean()


def test_hand_pca_is_an_orthonormal_basis_with_a_curl(body):
    comps, mean = body.hand_pca("left")
    assert comps.shape == (45, 45) and mean.shape == (45,)
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-5)
    # The first synergy curls the fingers toward the palm (down, -Y, for a T-posed left hand).
    tip = JOINT_NAMES.index("left_index3")
    curled = body.forward(left_hand_pose=torch.as_tensor(comps[0] * 2.0, dtype=torch.float32)[None]).joints
    assert curled[0, tip, 1] < body.rest_joints()[tip, 1] - 0.01


def test_smplx_extra_joints_land_on_their_anatomy(body):
    with contextlib.redirect_stdout(io.StringIO()):
        out = body.smplx_forward()
    j = out.joints[0]
    names = __import__("smplx.joint_names", fromlist=["JOINT_NAMES"]).JOINT_NAMES
    at = lambda n: j[names.index(n)]  # noqa: E731
    assert at("nose")[2] > at("head")[2] + 0.05
    assert at("left_eye")[0] > 0 > at("right_eye")[0]
    assert at("left_big_toe")[2] > at("left_heel")[2] + 0.1
    assert at("left_index")[0] > at("left_index3")[0]


def test_bad_body_model_files_are_named(tmp_path, body):
    missing = tmp_path / "nope.npz"
    with pytest.raises(BodyModelError, match="does not exist"):
        BodyModel.load(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(BodyModelError, match="corrupt.npz"):
        BodyModel.load(corrupt)
    arrays = dict(np.load(body.path))
    no_weights = tmp_path / "no_weights.npz"
    np.savez(no_weights, **{k: v for k, v in arrays.items() if k != "weights"})
    with pytest.raises(BodyModelError, match="missing the keys weights"):
        BodyModel.load(no_weights)
    smplh_like = tmp_path / "smplh.npz"
    cut = dict(arrays, J_regressor=arrays["J_regressor"][:52], weights=arrays["weights"][:, :52])
    np.savez(smplh_like, **cut)
    with pytest.raises(BodyModelError, match="52 joints"):
        BodyModel.load(smplh_like)


def _edited(arrays: dict, key: str, change) -> dict:
    out = dict(arrays)
    out[key] = change(arrays[key].copy())
    return out


def _set(a: np.ndarray, index, value) -> np.ndarray:
    a[index] = value
    return a


CRAFTED_BODIES = {
    "face_index": ("f", lambda a: _set(a, (0, 0), 10 ** 6), "f holds indices from 0 to 1000000"),
    "negative_face": ("f", lambda a: _set(a, (5, 1), -1), "f holds indices from -1"),
    "landmark_triangle": ("lmk_faces_idx", lambda a: _set(a, 0, 999_999), "lmk_faces_idx holds indices"),
    "dynamic_landmark": ("dynamic_lmk_faces_idx", lambda a: _set(a, (0, 0), -3), "dynamic_lmk_faces_idx holds"),
    "nan_shapes": ("shapedirs", lambda a: _set(a, (0, 0, 0), np.nan), "shapedirs contains NaN"),
    "inf_weights": ("weights", lambda a: _set(a, (3, 3), np.inf), "weights contains NaN or infinite"),
    "posedirs_shape": ("posedirs", lambda a: a[:, :, :100], "posedirs has shape"),
    "faces_as_floats": ("f", lambda a: a.astype(np.float32), "f holds float32 values; expected integer"),
    "hierarchy": ("kintree_table", lambda a: _set(a, (0, 20), 3), "another joint hierarchy"),
    "hands": ("hands_componentsl", lambda a: a[:, :40], "hands_componentsl has shape"),
    "too_few_vertices": ("v_template", lambda a: a[:5000], "v_template has 5000 vertices"),
    "scalar_regressor": ("J_regressor", lambda a: np.float64(1.0), "J_regressor has shape ()"),
    "scalar_weights": ("weights", lambda a: np.float64(1.0), "weights has shape ()"),
    "scalar_template": ("v_template", lambda a: np.float64(1.0), "v_template has shape ()"),
}


@pytest.mark.parametrize("name", list(CRAFTED_BODIES))
def test_crafted_body_models_are_refused_naming_the_key(tmp_path, body, name):
    """Each array is checked before smplx or posing sees it (an index beyond the mesh would
    otherwise fail in posing, on CUDA as a device-side assert that poisons the process)."""
    key, change, message = CRAFTED_BODIES[name]
    arrays = dict(np.load(body.path))
    if key == "v_template":   # keep the file self-consistent except for the vertex count
        n = 5000
        arrays = dict(arrays, weights=arrays["weights"][:n], shapedirs=arrays["shapedirs"][:n],
                      posedirs=arrays["posedirs"][:n], J_regressor=arrays["J_regressor"][:, :n],
                      f=np.clip(arrays["f"], 0, n - 1))
    path = tmp_path / f"{name}.npz"
    np.savez(path, **_edited(arrays, key, change))
    with pytest.raises(BodyModelError) as exc:
        BodyModel.load(path)
    assert str(path) in str(exc.value) and message in str(exc.value)


class _Planted:
    """Unpickling this creates a marker file: what a planted cache file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cache_and_model_files_never_run_code(tmp_path, monkeypatch, body):
    """smplx unpickles whatever .npz it is handed (np.load(allow_pickle=True)). The old loader
    handed it cache files by path; now it gets the checked arrays, never a path to read."""
    import hashlib

    marker = tmp_path / "code-ran"
    evil = np.array([_Planted(marker)], dtype=object)
    arrays = dict(np.load(body.path))
    user_file = tmp_path / "SMPLX_USER.npz"
    np.savez(user_file, **arrays)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("DREAMWALTZ_CACHE", str(cache))
    # what the old loader reused for this file, planted by whoever can write the cache
    digest = hashlib.sha256(user_file.read_bytes()).hexdigest()
    np.savez(cache / f"smplx_{digest[:16]}.npz", **dict(arrays, kintree_table=evil))
    # and the open template's cache file, with code in a key the model needs and one it does not
    template = tpl.cached_template_path()
    np.savez(template, **dict(arrays, kintree_table=evil, extra=evil))
    loaded = BodyModel.load(user_file)
    torch.testing.assert_close(loaded.rest_joints(), body.rest_joints())
    with pytest.raises(BodyModelError, match="key kintree_table holds an object array"):
        BodyModel.load()
    np.savez(template, **dict(arrays, extra=evil))        # code only where nothing reads
    assert BodyModel.load().num_vertices == body.num_vertices
    assert not marker.exists(), "a planted file ran code"
    np.load(template, allow_pickle=True)["extra"]          # control: a naive reader runs it
    assert marker.exists()


def test_smplx_never_reads_the_model_file_itself(body, monkeypatch):
    """smplx is handed the checked arrays; a smplx that read a file anyway would get an empty
    placeholder (an error, never an unpickled object), and one that took no arrays is refused."""
    import backend.body.model as model

    monkeypatch.setattr(model._NumpyHandingArrays, "load", lambda self, *a, **k: self._real.load(*a, **k))
    with pytest.raises((EOFError, ValueError, OSError)):
        BodyModel.load(body.path)
    monkeypatch.setattr(model._NumpyHandingArrays, "load",
                        lambda self, *a, **k: dict(self._arrays))           # takes them, but says nothing
    with pytest.raises(BodyModelError, match="did not take the checked arrays"):
        BodyModel.load(body.path)


def test_nan_pose_is_refused(body):
    with pytest.raises(BodyModelError, match="body_pose"):
        body.forward(body_pose=torch.full((1, 63), float("nan")))
    with pytest.raises(BodyModelError, match="betas"):
        body.shaped_vertices(torch.tensor([float("inf")]))


def test_env_var_selects_a_real_smplx_file(tmp_path, monkeypatch, body):
    # A user-supplied file goes through the same loader; here the template stands in for it.
    user_file = tmp_path / "SMPLX_NEUTRAL.npz"
    with np.load(body.path) as z:
        np.savez(user_file, **{k: z[k] for k in z.files if k != "template_kind"})
    monkeypatch.setenv("DREAMWALTZ_SMPLX", str(user_file))
    other = BodyModel.load()
    assert other.kind == "smplx" and other.path == user_file
    torch.testing.assert_close(other.rest_joints(), body.rest_joints())


def test_template_command_writes_a_loadable_model(tmp_path):
    out = tmp_path / "template.npz"
    run_backend("template", "--out", str(out), check=True)
    model = BodyModel.load(out)
    assert model.num_betas == 10 and model.num_expression == 10
    assert not list(tmp_path.glob(".*tmp"))
