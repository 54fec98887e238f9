"""The OpenPose skeleton condition: keypoints, visibility (camera, occlusion) and drawing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.render import Camera
from backend.train.poses import canonical_body_pose
from backend.train.skeleton import (BODY_COLORS, BODY_LIMBS, FACE_LANDMARKS, HAND_POINT_COLOR, L_EYE, LIMB_INTENSITY,
                                    NOSE, OPENPOSE_BODY, OPENPOSE_BODY_NAMES, OPENPOSE_LEFT_HAND,
                                    OPENPOSE_RIGHT_HAND, R_EYE, SkeletonConfig, SkeletonRenderer, draw_skeleton,
                                    keypoint_visibility)

SIZE = 512


@pytest.fixture(scope="module")
def posed(body):
    pose = torch.as_tensor(canonical_body_pose("apose"), dtype=torch.float32).reshape(1, 63)
    out = body.forward(body_pose=pose)
    return out.vertices[0], out.joints[0]


def orbit_camera(azimuth_deg: float, size: int = SIZE, distance: float = 3.2, height: float = -0.15) -> Camera:
    a = math.radians(azimuth_deg)
    eye = [distance * math.sin(a), height, distance * math.cos(a)]
    return Camera.look_at(eye, [0.0, height, 0.0], (0.0, 1.0, 0.0), 40.0, size, size)


def visibility(body, posed, camera, config):
    renderer = SkeletonRenderer(body, config)
    kp = renderer.keypoints(*posed)
    uv, vis = keypoint_visibility(kp, camera, posed[0], renderer.layout.faces, config, renderer.which,
                                  renderer.occlusion)
    return renderer, kp, uv, vis


def pixel(image: torch.Tensor, uv: torch.Tensor) -> np.ndarray:
    x, y = int(math.floor(float(uv[0]))), int(math.floor(float(uv[1])))
    return image[:, y, x].numpy()


def test_each_body_joint_has_its_colour_at_its_projected_pixel(body, posed):
    config = SkeletonConfig(body=True, hands=False, face=False)
    camera = orbit_camera(0.0)
    renderer, kp, uv, vis = visibility(body, posed, camera, config)
    assert all(bool(vis[k]) for k in OPENPOSE_BODY), "a front view shows every body keypoint"
    image = renderer.render(*posed, camera)
    assert image.shape == (3, SIZE, SIZE)
    radius = 4.0 * SIZE / 512 + 1.5
    for i, k in enumerate(OPENPOSE_BODY):
        later = [OPENPOSE_BODY[j] for j in range(i + 1, len(OPENPOSE_BODY))]
        if any(float(torch.linalg.norm(uv[k] - uv[m])) < radius for m in later):
            continue  # a later keypoint's disc covers this one (painter's order)
        got = pixel(image, uv[k])
        want = np.array(BODY_COLORS[i]) / 255.0
        assert np.allclose(got, want, atol=1e-6), f"{OPENPOSE_BODY_NAMES[i]}: {got} != {want}"


def test_limbs_are_drawn_at_sixty_percent(body, posed):
    config = SkeletonConfig(body=True, hands=False, face=False)
    camera = orbit_camera(0.0)
    renderer, kp, uv, vis = visibility(body, posed, camera, config)
    image = renderer.render(*posed, camera)
    # r_hip -> r_knee is limb 7 (1-based pairs (9, 10))
    limb = BODY_LIMBS.index((9, 10))
    a, b = OPENPOSE_BODY[8], OPENPOSE_BODY[9]
    mid = 0.5 * (uv[a] + uv[b])
    want = np.array(BODY_COLORS[limb]) / 255.0 * LIMB_INTENSITY
    assert np.allclose(pixel(image, mid), want, atol=1e-6)


def test_hand_keypoints_are_blue_where_visible(body, posed):
    config = SkeletonConfig(body=False, hands=True, face=False)
    camera = orbit_camera(0.0)
    renderer, kp, uv, vis = visibility(body, posed, camera, config)
    image = renderer.render(*posed, camera)
    shown = [k for k in OPENPOSE_LEFT_HAND + OPENPOSE_RIGHT_HAND if bool(vis[k])]
    assert len(shown) >= 8
    for k in shown:
        assert np.allclose(pixel(image, uv[k]), np.array(HAND_POINT_COLOR) / 255.0)


def test_face_keypoints_vanish_in_back_views(body, posed):
    config = SkeletonConfig(body=True, hands=True, face=True)
    _, _, _, front = visibility(body, posed, orbit_camera(0.0), config)
    _, _, _, back = visibility(body, posed, orbit_camera(180.0), config)
    face = list(FACE_LANDMARKS)
    assert int(front[face].sum()) >= 40
    assert int(back[face].sum()) == 0
    for k in (NOSE, R_EYE, L_EYE):
        assert bool(front[k]) and not bool(back[k])
    # the back view still shows the shoulders, hips and limbs
    assert all(bool(back[OPENPOSE_BODY[i]]) for i in (2, 5, 8, 11))


def test_limbs_behind_the_body_are_dropped(body, posed):
    """From the body's left (+X), its right arm and leg are hidden; the left ones are not."""
    config = SkeletonConfig(body=True, hands=False, face=False)
    _, _, _, vis = visibility(body, posed, orbit_camera(90.0), config)
    names = dict(zip(OPENPOSE_BODY_NAMES, OPENPOSE_BODY))
    for name in ("r_elbow", "r_wrist", "r_knee", "r_ankle", "r_ear"):
        assert not bool(vis[names[name]]), name
    for name in ("l_shoulder", "l_elbow", "l_wrist", "l_hip", "l_knee", "l_ankle", "l_ear", "nose", "neck"):
        assert bool(vis[names[name]]), name
    # without the occlusion test everything in front of the camera stays
    config.occlusion = False
    _, _, _, vis = visibility(body, posed, orbit_camera(90.0), config)
    assert all(bool(vis[k]) for k in OPENPOSE_BODY)


def test_points_behind_the_camera_are_dropped(body, posed):
    config = SkeletonConfig(body=True, hands=True, face=False, occlusion=False)
    # a camera at the hips looking up: the legs are behind it
    camera = Camera.look_at([0.0, -0.05, 0.3], [0.0, 2.0, 0.3], (0.0, 0.0, 1.0), 60.0, 128, 128)
    renderer, kp, uv, vis = visibility(body, posed, camera, config)
    names = dict(zip(OPENPOSE_BODY_NAMES, OPENPOSE_BODY))
    for name in ("r_knee", "l_knee", "r_ankle", "l_ankle"):
        assert not bool(vis[names[name]])
    assert bool(vis[names["nose"]])
    image = renderer.render(*posed, camera)
    assert torch.isfinite(image).all()


def test_drawing_handles_nothing_visible_and_points_off_the_image():
    uv = torch.zeros(127, 2)
    vis = torch.zeros(127, dtype=torch.bool)
    assert draw_skeleton(uv, vis, 64, 48).abs().sum() == 0
    uv = torch.full((127, 2), -500.0)
    vis = torch.ones(127, dtype=torch.bool)
    img = draw_skeleton(uv, vis, 64, 48, SkeletonConfig(face=True))
    assert img.shape == (3, 48, 64) and img.abs().sum() == 0
    # one limb crossing the image from outside is drawn where it passes
    uv = torch.zeros(127, 2)
    uv[OPENPOSE_BODY[8]] = torch.tensor([-40.0, 24.0])
    uv[OPENPOSE_BODY[9]] = torch.tensor([100.0, 24.0])
    vis = torch.zeros(127, dtype=torch.bool)
    vis[[OPENPOSE_BODY[8], OPENPOSE_BODY[9]]] = True
    img = draw_skeleton(uv, vis, 64, 48, SkeletonConfig(hands=False))
    assert img[:, 24, 32].sum() > 0 and img[:, 5, 32].sum() == 0


def test_pillow_and_torch_drawers_agree(body, posed):
    """The batch workers draw with Pillow on the CPU, the GPU path with torch: same images."""
    config = SkeletonConfig(body=True, hands=True, face=True)
    for azimuth in (0.0, 60.0, 180.0):
        camera = orbit_camera(azimuth)
        _, _, uv, vis = visibility(body, posed, camera, config)
        a = draw_skeleton(uv, vis, SIZE, SIZE, config, method="pil")
        b = draw_skeleton(uv, vis, SIZE, SIZE, config, method="torch")
        area_a, area_b = float((a.sum(0) > 0).float().mean()), float((b.sum(0) > 0).float().mean())
        assert area_b > 0.01 and abs(area_a - area_b) < 0.2 * area_b, (azimuth, area_a, area_b)
        # they differ only at edges: every painted pixel of one has its colour within a pixel in the other
        for x, y in ((a, b), (b, a)):
            padded = torch.nn.functional.pad(y, (1, 1, 1, 1))
            near = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            for dy in (0, 1, 2):
                for dx in (0, 1, 2):
                    near |= (x == padded[:, dy:dy + SIZE, dx:dx + SIZE]).all(0)
            painted = x.sum(0) > 0
            assert near[painted].float().mean() > 0.99, (azimuth, float(near[painted].float().mean()))
    far = torch.zeros(127, 2)
    far[OPENPOSE_BODY[8]] = torch.tensor([-3.0e7, 24.0])   # beyond Pillow's range: torch draws it
    far[OPENPOSE_BODY[9]] = torch.tensor([100.0, 24.0])
    vis = torch.zeros(127, dtype=torch.bool)
    vis[[OPENPOSE_BODY[8], OPENPOSE_BODY[9]]] = True
    cfg = SkeletonConfig(hands=False)
    assert torch.equal(draw_skeleton(far, vis, 64, 48, cfg), draw_skeleton(far, vis, 64, 48, cfg, method="torch"))


def test_dreamwaltz_g_rule_keeps_body_joints_and_hides_face_and_hands(body, posed):
    """The original's occlusion rule: body joints are never hidden by the body itself; face
    points go behind more than 2 cm of surface, hand points behind more than 20 cm."""
    config = SkeletonConfig(body=True, hands=True, face=False, occlusion_rule="gap")
    renderer, kp, uv, vis = visibility(body, posed, orbit_camera(90.0), config)
    names = dict(zip(OPENPOSE_BODY_NAMES, OPENPOSE_BODY))
    for name in ("r_shoulder", "r_elbow", "r_wrist", "r_hip", "r_knee", "r_ankle", "l_elbow", "neck"):
        assert bool(vis[names[name]]), name
    assert not bool(vis[names["r_ear"]]) and bool(vis[names["l_ear"]])
    assert not any(bool(vis[k]) for k in OPENPOSE_RIGHT_HAND[1:]), "the far hand is behind the torso"
    assert sum(bool(vis[k]) for k in OPENPOSE_LEFT_HAND) >= 15
    # the far wrist is drawn as the body's wrist, not as the far hand's (hidden) wrist point
    hand_vis = renderer._hand_wrists(kp, vis, orbit_camera(90.0), posed[0])
    assert not bool(hand_vis[OPENPOSE_RIGHT_HAND[0]]) and bool(hand_vis[OPENPOSE_LEFT_HAND[0]])
    _, _, _, back = visibility(body, posed, orbit_camera(180.0), SkeletonConfig(face=True, occlusion_rule="gap"))
    assert not any(bool(back[k]) for k in (NOSE, R_EYE, L_EYE) + FACE_LANDMARKS)
    with pytest.raises(ValueError, match="occlusion_rule"):
        SkeletonConfig(occlusion_rule="raycast")
