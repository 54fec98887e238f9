"""`motion info` and `motion convert`, called in-process (main) and as a user would (subprocess)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.motion import load_motion
from backend.motion.cli import main

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"format", "frames", "fps", "duration", "joints", "has_expression", "has_camera"}


def motions_dir() -> Path:
    env = os.environ.get("DREAMWALTZ_DATA")
    base = Path(env) if env else ROOT.parent / "shared" / "data"
    if not (base / "motions").is_dir():
        pytest.skip("the real motion files (../shared/data/motions) are not on this machine")
    return base / "motions"


def real(folder, part):
    hits = [f for f in (motions_dir() / folder).glob("*") if part in f.name]
    assert len(hits) == 1
    return hits[0]


def info(capsys, *args):
    rc = main(["info", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_prints_one_json_object(capsys):
    path = real("amass_npz", "dmpl_sample")
    rc, out, err = info(capsys, path)
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert REQUIRED <= set(d)
    assert d["format"] == "amass" and d["frames"] == 235 and d["joints"] == 55
    assert d["fps"] == pytest.approx(120.00004577636719)
    assert d["duration"] == pytest.approx(235 / 120.00004577636719)
    assert d["has_expression"] is False and d["has_camera"] is False


def test_info_with_fps_reports_the_resampled_motion(capsys):
    path = real("aist_pkl", "transflower")                       # 398 frames at 60 fps
    rc, out, _ = info(capsys, path, "--fps", "24")
    d = json.loads(out)
    assert rc == 0 and d["fps"] == 24.0 and d["frames"] == round(398 * 24 / 60)
    assert abs(d["duration"] - 398 / 60) <= 1 / 24


def test_info_loads_a_body_model_when_the_hands_need_one(capsys):
    rc, out, err = info(capsys, real("talkshow_pkl", "SHOW__all"))
    assert rc == 0, err
    d = json.loads(out)
    assert d["format"] == "talkshow" and d["has_expression"] is True and d["frames"] == 300 and d["fps"] == 30.0


def test_info_accepts_the_motion_word_as_the_integrator_passes_it(capsys):
    rc = main(["motion", "info", str(real("amass_npz", "stand"))])
    assert rc == 0 and json.loads(capsys.readouterr().out)["frames"] == 360


def test_refused_file_exits_nonzero_with_the_error_on_stderr(capsys, tmp_path):
    bad = tmp_path / "evil.pkl"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    bad.write_bytes(pickle.dumps({"smpl_poses": Evil()}))
    rc, out, err = info(capsys, bad)
    assert rc != 0 and out == ""
    assert "refused to unpickle global" in err and str(bad) in err
    assert not marker.exists()
    rc, out, err = info(capsys, tmp_path / "nothing.npz")
    assert rc != 0 and "no such file" in err


def test_repair_flag(capsys, tmp_path):
    raw = dict(np.load(real("amass_npz", "stand")))
    raw["trans"] = raw["trans"].copy()
    raw["trans"][5] = np.nan
    p = tmp_path / "holes.npz"
    np.savez(p, **raw)
    rc, out, err = info(capsys, p)
    assert rc == 1 and "transl" in err and "repair" in err
    rc, out, err = info(capsys, p, "--repair")
    assert rc == 0 and "repaired 3 NaN/inf" in err and json.loads(out)["frames"] == 360


def test_convert_writes_the_project_file(capsys, tmp_path):
    src = real("amass_npz", "C17")
    out = tmp_path / "run.npz"
    rc = main(["convert", str(src), "--out", str(out), "--fps", "30", "--start", "10", "--end", "40"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "dreamwaltz" and summary["frames"] == 30
    m = load_motion(out)
    assert m.source_format == "dreamwaltz" and m.fps == 30.0 and m.num_frames == 30
    from backend.body import BodyModel

    expected = load_motion(src, fps=30, body_model=BodyModel.load()).trim(10, 40)
    np.testing.assert_allclose(m.full_pose, expected.full_pose, atol=1e-6)
    np.testing.assert_allclose(m.transl, expected.transl, atol=1e-6)
    rc = main(["info", str(out)])
    assert rc == 0 and json.loads(capsys.readouterr().out)["frames"] == 30


def test_convert_trims_in_seconds(capsys, tmp_path):
    out = tmp_path / "dance.npz"
    rc = main(["convert", str(real("aist_pkl", "transflower")), "--out", str(out), "--fps", "25",
               "--start", "1", "--end", "3", "--unit", "seconds"])
    assert rc == 0
    m = load_motion(out)
    assert m.num_frames == 50 and m.duration == pytest.approx(2.0)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "backend.motion.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_subprocess_info_and_refusal(tmp_path):
    proc = run_cli("info", real("smplx265_npy", "DreamWaltz-G__aist"), "--source-fps", "60", "--fps", "30")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout.strip())
    assert d["format"] == "smplx265" and d["frames"] == 120 and d["duration"] == pytest.approx(4.0)
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((5, 7)))
    proc = run_cli("info", bad)
    assert proc.returncode == 1 and proc.stdout == "" and "(5, 7)" in proc.stderr
