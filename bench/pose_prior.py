"""How the random training poses compare with real motion: the project's pose prior (the
stand-in for VPoser in --recipe dreamwaltz-g), the fast recipe's joint-limit box, and the real
motion files in ../shared/data (AMASS, AIST++, TalkSHOW, DreamWaltz-G's demos).

    python bench/pose_prior.py [--samples 4000] [--out bench/results/pose_prior_cpu.txt]

Per joint group: the mean and 90th percentile of each joint's rotation angle (degrees), and the
share of the real frames' axis values inside the joint-limit table the priors draw from. The
real motions are test input (non-commercial terms); nothing of them is kept, only this table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.report import emit  # noqa: E402

from backend.train.poses import BODY_INDEX, LIMITS, PoseConfig, PoseSampler, normal_prior  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "motions"
GROUPS = {
    "hips": ("left_hip", "right_hip"), "knees": ("left_knee", "right_knee"),
    "ankles+feet": ("left_ankle", "right_ankle", "left_foot", "right_foot"),
    "spine": ("spine1", "spine2", "spine3"), "neck+head": ("neck", "head"),
    "collars": ("left_collar", "right_collar"), "shoulders": ("left_shoulder", "right_shoulder"),
    "elbows": ("left_elbow", "right_elbow"), "wrists": ("left_wrist", "right_wrist"),
}


def real_poses() -> tuple[np.ndarray, list[str]]:
    from backend.body import BodyModel
    from backend.motion import load_motion

    body = BodyModel.load()
    poses, names = [], []
    for path in sorted(p for p in DATA.rglob("*") if p.suffix in (".npz", ".pkl", ".npy")):
        try:
            motion = load_motion(path, body_model=body)
        except Exception as exc:  # noqa: BLE001 - a file this loader refuses is reported, not fatal
            print(f"skipped {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        poses.append(np.asarray(motion.body_pose, np.float64).reshape(-1, 21, 3))
        names.append(f"{path.parent.name}/{path.name} ({motion.num_frames} frames)")
    return np.concatenate(poses), names


def angles(poses: np.ndarray) -> np.ndarray:
    return np.degrees(np.linalg.norm(poses, axis=-1))   # (N, 21)


def group_stats(poses: np.ndarray) -> dict[str, tuple[float, float]]:
    a = angles(poses)
    out = {}
    for group, joints in GROUPS.items():
        g = a[:, [BODY_INDEX[j] for j in joints]].reshape(-1)
        out[group] = (float(g.mean()), float(np.percentile(g, 90)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not DATA.exists():
        print(f"{DATA} is absent: no real motion to compare with", file=sys.stderr)
        return 1
    real, names = real_poses()
    rng = np.random.default_rng(0)
    prior = np.stack([normal_prior(rng) for _ in range(args.samples)])
    box = PoseSampler(PoseConfig(library=None))
    limits = np.stack([box.from_limits(rng)["body_pose"].reshape(21, 3) for _ in range(args.samples)])
    columns = {"real motion": real, "own prior (dwg)": prior, "joint box (fast)": limits}
    stats = {k: group_stats(v) for k, v in columns.items()}
    inside = (real >= LIMITS[..., 0] - 1e-6) & (real <= LIMITS[..., 1] + 1e-6)
    lines = ["# random training poses against real motion: joint rotation angle per group, degrees (mean / p90)",
             f"real motion: {len(real)} frames of {len(names)} files in ../shared/data/motions:"]
    lines += [f"  {n}" for n in names]
    lines += [f"priors: {args.samples} samples each; own prior = poses.normal_prior (--recipe dreamwaltz-g "
              "without VPoser weights), joint box = the fast recipe's joint-limit sampling", ""]
    head = f"{'group':<12}" + "".join(f"{k:>20}" for k in columns)
    lines += [head, "-" * len(head)]
    for group in GROUPS:
        lines.append(f"{group:<12}" + "".join(f"{stats[k][group][0]:>12.1f} / {stats[k][group][1]:>5.1f}"
                                             for k in columns))
    lines += ["", f"real frames' axis values inside the joint-limit table: {100 * inside.mean():.1f} % "
                  f"(whole frames with every axis inside: {100 * inside.all(axis=(1, 2)).mean():.1f} %)"]
    worst = sorted(BODY_INDEX, key=lambda j: inside[:, BODY_INDEX[j]].mean())[:5]
    lines.append("least covered joints: " + ", ".join(f"{j} {100 * inside[:, BODY_INDEX[j]].mean():.0f} %"
                                                       for j in worst))
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
