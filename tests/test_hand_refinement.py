"""Tests for the MediaPipe backend's hand refinement (option ``refine_hands``).

The crop geometry (:func:`hand_crop_box`, :func:`crop_square`, :func:`hand_from_crop`) is checked
analytically without MediaPipe. The backend is checked on the real signing video
``tests/data/real-signing/test_video.mp4`` (540x720, 58 frames, hands raised and motion-blurred in
about frames 14-45). No reference annotation of its hands exists, so the refined hands are only
checked for consistency with the body: each added hand's wrist lies near the pose's wrist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.pose import mediapipe_backend as mpb
from cslr_pipe.features.pose.wholebody import LEFT_HAND, RIGHT_HAND

VIDEO = Path(__file__).parent / "data" / "real-signing" / "test_video.mp4"


def test_crop_box_reaches_from_the_wrist_along_the_forearm():
    # forearm pointing down, 100 px: side 1.8 x 100, centre 0.3 x 100 below the wrist
    x0, y0, side = mpb.hand_crop_box((100, 200), (100, 100), 540, 720,
                                     side_per_forearm=1.8, shift_per_forearm=0.3)
    assert (x0, y0, side) == pytest.approx((100 - 90, 230 - 90, 180))
    # forearm pointing left (image), 3-4-5 lengths
    x0, y0, side = mpb.hand_crop_box((300, 400), (330, 440), 540, 720,
                                     side_per_forearm=1.2, shift_per_forearm=0.5, min_side=32)
    assert (x0 + side / 2, y0 + side / 2, side) == pytest.approx((285, 380, 60))


def test_crop_box_minimum_maximum_and_outside_wrist():
    # no forearm (elbow on the wrist, or not finite): the minimum square, centred on the wrist
    assert mpb.hand_crop_box((50, 60), (50, 60), 540, 720, min_side=64) == pytest.approx((18, 28, 64))
    assert mpb.hand_crop_box((50, 60), (np.nan, 0), 540, 720, min_side=64) == pytest.approx((18, 28, 64))
    # a huge forearm: at most the frame's larger side; the square may reach beyond the frame
    assert mpb.hand_crop_box((10, 10), (-5000, 10), 540, 720)[2] == 720
    # the wrist outside the frame (or not finite): no box
    for wrist in ((-1, 100), (540, 100), (100, 720), (100, -0.5), (np.nan, 3), (np.inf, 3)):
        assert mpb.hand_crop_box(wrist, (100, 100), 540, 720) is None
    assert mpb.hand_crop_box((539, 719), (500, 700), 540, 720) is not None  # the last pixel is inside


def test_crop_and_back_mapping_are_inverse():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    # side == size: the crop is the frame's pixels shifted; beyond the frame it is black
    box = (37.0, -11.0, 64.0)
    crop = mpb.crop_square(frame, box, size=64)
    assert np.array_equal(crop[11:], frame[0:53, 37:101])
    assert not crop[:11].any()
    # 2x upscale: crop pixel (u, v) = (2k, 2m) samples frame pixel (x0 + k, y0 + m) exactly
    box = (20.0, 30.0, 40.0)
    crop = mpb.crop_square(frame, box, size=80)
    for k, m in ((0, 0), (3, 7), (19, 25), (39, 39)):
        u, v = 2 * k, 2 * m
        x, y, score = mpb.hand_from_crop(np.array([[u, v, 0.7]]), box, size=80)[0]
        assert (x, y) == (20 + k, 30 + m) and score == pytest.approx(0.7)
        assert np.array_equal(crop[v, u], frame[int(y), int(x)])
    # and for any box, mapping back undoes the crop's scaling: frame -> crop -> frame
    box = (-12.5, 40.25, 173.0)
    points = rng.uniform(0, 256, (21, 2))
    back = mpb.hand_from_crop(points, box, size=256)
    assert np.allclose((back - [box[0], box[1]]) * 256 / box[2], points, atol=1e-3)


@pytest.mark.parametrize("value", ["true", "yes", 1, 0, None, 0.5])
def test_refine_hands_must_be_a_bool(value):
    from cslr_pipe.features.pose import build_pose_backend

    with pytest.raises(InputError, match="refine_hands"):
        build_pose_backend("mediapipe", refine_hands=value)


@pytest.fixture(scope="module")
def real_video_keypoints():
    pytest.importorskip("mediapipe")
    from cslr_pipe.features.pose import build_pose_backend
    from cslr_pipe.features.video import read_video

    frames = read_video(VIDEO)
    assert frames.shape == (58, 720, 540, 3)
    out = {}
    for name, options in (("default", {}), ("off", {"refine_hands": False}), ("on", {"refine_hands": True})):
        backend = build_pose_backend("mediapipe", **options)
        try:
            out[name] = backend(frames)
        finally:
            backend.close()
    return out


def _hand_found(keypoints: np.ndarray, hand: slice) -> np.ndarray:
    return (keypoints[:, hand, 2] > 0).any(axis=1)


@pytest.mark.slow
def test_real_video_refinement_adds_hands_near_the_body_s_wrists(real_video_keypoints):
    plain, refined = real_video_keypoints["off"], real_video_keypoints["on"]
    assert np.array_equal(real_video_keypoints["default"], plain)  # off by default, output unchanged
    any_plain = _hand_found(plain, LEFT_HAND) | _hand_found(plain, RIGHT_HAND)
    any_refined = _hand_found(refined, LEFT_HAND) | _hand_found(refined, RIGHT_HAND)
    assert any_refined.sum() >= any_plain.sum() >= 15  # Holistic alone: a hand in 20 of 58 frames
    assert np.array_equal(refined[:, :91], plain[:, :91])  # body, feet and face untouched
    shoulder_width = np.linalg.norm(plain[:, 5, :2] - plain[:, 6, :2], axis=1)
    added = 0
    for hand, wrist in ((LEFT_HAND, 9), (RIGHT_HAND, 10)):
        kept = _hand_found(plain, hand)
        assert np.array_equal(refined[kept][:, hand], plain[kept][:, hand])  # Holistic's hands stay
        new = _hand_found(refined, hand) & ~kept
        assert not (_hand_found(refined, hand) < _hand_found(plain, hand)).any()
        for t in np.flatnonzero(new):
            added += 1
            assert refined[t, wrist, 2] > 0 and refined[t, hand.start, 2] > 0
            scores = refined[t, hand, 2]
            assert ((scores == 0) | (scores == scores.max())).all() and scores.max() <= 1
            distance = np.linalg.norm(refined[t, hand.start, :2] - refined[t, wrist, :2])
            assert distance < 0.5 * shoulder_width[t], (t, distance, shoulder_width[t])
    assert added >= any_refined.sum() - any_plain.sum()
