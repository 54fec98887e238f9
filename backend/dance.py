"""A dance the project generates itself, so the demo and the tests need no outside motion file.

It is a looping groove built from sinusoids on SMPL-X joint rotations: a bounce in the knees,
hip sway and a turn of the pelvis, arms swinging in counter-phase, a nodding head, curling
fingers, a smile and a jaw on the beat. Deterministic for a given length and rate.
"""

from __future__ import annotations

import numpy as np

from .motion.types import Motion

BODY = {name: i for i, name in enumerate((
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar",
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist"))}


def dance(seconds: float = 4.0, fps: float = 30.0, bpm: float = 110.0, num_expression: int = 10) -> Motion:
    """A `Motion` of `seconds` at `fps`; one bounce per beat at `bpm`."""
    n = max(1, int(round(seconds * fps)))
    t = np.arange(n) / fps
    beat = 2 * np.pi * bpm / 60.0 * t
    bar = beat / 4.0
    bounce = 0.5 * (1 - np.cos(beat))

    body = np.zeros((n, 21, 3))
    body[:, BODY["left_hip"], 0] = -0.25 * bounce - 0.15 * np.maximum(np.sin(bar), 0)
    body[:, BODY["right_hip"], 0] = -0.25 * bounce - 0.15 * np.maximum(-np.sin(bar), 0)
    body[:, BODY["left_knee"], 0] = 0.5 * bounce + 0.3 * np.maximum(np.sin(bar), 0)
    body[:, BODY["right_knee"], 0] = 0.5 * bounce + 0.3 * np.maximum(-np.sin(bar), 0)
    body[:, BODY["left_ankle"], 0] = -0.25 * bounce
    body[:, BODY["right_ankle"], 0] = -0.25 * bounce
    body[:, BODY["spine1"], 2] = 0.08 * np.sin(bar)
    body[:, BODY["spine2"], 1] = 0.15 * np.sin(bar + 0.5)
    body[:, BODY["spine3"], 0] = 0.05 * bounce
    body[:, BODY["neck"], 0] = 0.08 * np.sin(beat)
    body[:, BODY["head"], 1] = 0.2 * np.sin(bar)
    swing = np.sin(beat / 2)
    body[:, BODY["left_shoulder"], 2] = -0.9 + 0.5 * swing
    body[:, BODY["right_shoulder"], 2] = 0.9 + 0.5 * swing
    body[:, BODY["left_shoulder"], 1] = -0.3 * swing
    body[:, BODY["right_shoulder"], 1] = -0.3 * swing
    body[:, BODY["left_elbow"], 1] = -0.9 - 0.5 * np.maximum(swing, 0)
    body[:, BODY["right_elbow"], 1] = 0.9 + 0.5 * np.maximum(-swing, 0)

    orient = np.zeros((n, 3))
    orient[:, 1] = 0.35 * np.sin(bar)
    transl = np.zeros((n, 3))
    transl[:, 0] = 0.06 * np.sin(bar)
    transl[:, 1] = -0.05 * bounce

    curl = 0.6 * (0.5 + 0.5 * np.sin(beat / 2))
    left_hand = np.zeros((n, 15, 3))
    right_hand = np.zeros((n, 15, 3))
    left_hand[:, :12, 2] = -curl[:, None]
    right_hand[:, :12, 2] = curl[:, None]

    expression = np.zeros((n, num_expression))
    if num_expression > 1:
        expression[:, 1] = 1.5 + 0.5 * np.sin(bar)
    jaw = np.zeros((n, 3))
    jaw[:, 0] = 0.15 * np.maximum(np.sin(beat), 0)

    zeros = np.zeros((n, 3))
    return Motion(
        fps=float(fps), global_orient=orient.astype(np.float32), body_pose=body.astype(np.float32),
        left_hand_pose=left_hand.astype(np.float32), right_hand_pose=right_hand.astype(np.float32),
        jaw_pose=jaw.astype(np.float32), leye_pose=zeros.astype(np.float32),
        reye_pose=zeros.astype(np.float32), expression=expression.astype(np.float32),
        transl=transl.astype(np.float32), source_format="dreamwaltz-dance", source_up_axis="Y",
    )
