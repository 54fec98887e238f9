"""A body model is identified by a content hash of its arrays (issue 17, item 4): an explicit
template file is the template, the same model in another container is the same model, and an
avatar refuses a different model even when its vertex count matches. Git LFS pointers given in
place of a file get a sentence that says so."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from backend.avatar import AvatarFileError, init_template_avatar, load_avatar, save_avatar
from backend.body import BodyModel, BodyModelError

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 167733290\n"


def arrays_of(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_explicit_template_path_is_the_template(body, tmp_path):
    copy = tmp_path / "my_template.npz"
    shutil.copy(body.path, copy)
    other = BodyModel.load(copy)
    assert other.kind == "template", "an explicit template file was recorded as 'smplx'"
    assert other.identity["content_sha256"] == body.identity["content_sha256"]


def test_the_hash_is_of_the_arrays_not_the_container(body, tmp_path):
    wide = tmp_path / "wide.npz"  # uncompressed, floats widened to float64, ints to int64
    np.savez(wide, **{k: (v.astype(np.float64) if v.dtype.kind == "f" else v.astype(np.int64) if v.dtype.kind in "iu"
                          else v) for k, v in arrays_of(body.path).items()})
    from backend.body.model import _validate_file, content_hash

    assert content_hash(_validate_file(wide)) == body.identity["content_sha256"]


def _smplx_like(body, path, nudge: float = 0.0):
    """The template without its marker: stands in for a user's SMPL-X file; `nudge` moves one
    vertex, giving a different model with the same 10,475-style vertex count."""
    arrays = {k: v for k, v in arrays_of(body.path).items() if k != "template_kind"}
    arrays["v_template"] = arrays["v_template"].copy()
    arrays["v_template"][0, 0] += nudge
    np.savez(path, **arrays)
    return path


def test_an_avatar_refuses_a_different_model_with_equal_vertex_count(body, tmp_path):
    a = BodyModel.load(_smplx_like(body, tmp_path / "SMPLX_A.npz"))
    b = BodyModel.load(_smplx_like(body, tmp_path / "SMPLX_B.npz", nudge=0.01))
    assert a.kind == b.kind == "smplx" and a.num_vertices == b.num_vertices
    assert a.identity["content_sha256"] != b.identity["content_sha256"]
    folder = save_avatar(init_template_avatar(a, 300, seed=0), tmp_path / "av",
                         preview=np.zeros((4, 4, 3), np.uint8))
    meta = json.loads((folder / "avatar.json").read_text())
    assert meta["body_model"]["content_sha256"] == a.identity["content_sha256"]
    assert load_avatar(folder, body=a).num_gaussians == 300
    with pytest.raises(AvatarFileError, match=r"SMPLX_A\.npz.*SMPLX_B\.npz.*different model"):
        load_avatar(folder, body=b)


def test_git_lfs_pointers_are_named_as_such(tmp_path, avatar_dir):
    pointer = tmp_path / "SMPLX_NEUTRAL_2020.npz"
    pointer.write_bytes(LFS)
    with pytest.raises(BodyModelError, match=r"SMPLX_NEUTRAL_2020\.npz is a Git LFS pointer.*167,733,290 bytes"):
        BodyModel.load(pointer)

    from backend.motion import load_motion
    from backend.motion.errors import MotionError

    motion = tmp_path / "dance.pkl"
    motion.write_bytes(LFS)
    with pytest.raises(MotionError, match=r"dance\.pkl: this is a Git LFS pointer") as info:
        load_motion(motion)
    assert "pickle" not in str(info.value)

    copy = tmp_path / "avatar"
    shutil.copytree(avatar_dir, copy)
    (copy / "gaussians.safetensors").write_bytes(LFS)
    with pytest.raises(AvatarFileError, match=r"gaussians\.safetensors is a Git LFS pointer"):
        load_avatar(copy)
