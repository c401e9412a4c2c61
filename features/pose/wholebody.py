"""The COCO-WholeBody 133-point layout, its left-right flip, a skeleton, and TwoStream's 79 points.

Index ranges: 0-16 body (COCO-17), 17-22 feet, 23-90 face (68 points, iBUG 300-W order),
91-111 left hand, 112-132 right hand (21 each: wrist, then 4 joints per finger from thumb to
little finger). "Left" is the person's left, seen on the image's right for a signer facing the
camera.
"""

from __future__ import annotations

import numpy as np

NUM_KEYPOINTS = 133
BODY = range(0, 17)
FEET = range(17, 23)
FACE = range(23, 91)
LEFT_HAND = range(91, 112)
RIGHT_HAND = range(112, 133)

BODY_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
FEET_NAMES = ("left_big_toe", "left_small_toe", "left_heel",
              "right_big_toe", "right_small_toe", "right_heel")
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
_HAND = ("root",) + tuple(f"{finger}{joint}" for finger in _FINGERS for joint in range(1, 5))
NAMES = (BODY_NAMES + FEET_NAMES + tuple(f"face-{i}" for i in range(68))
         + tuple(f"left_hand_{j}" for j in _HAND) + tuple(f"right_hand_{j}" for j in _HAND))


def _face_flip_pairs() -> list[tuple[int, int]]:
    """Mirror pairs of the 68 iBUG face points (jaw, brows, nose, eyes, mouth), as face indices."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw line
    pairs += [(17 + i, 26 - i) for i in range(5)]  # eyebrows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lip
    pairs += [(60, 64), (61, 63), (67, 65)]  # inner lip
    return pairs


FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple(
    [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
    + [(17, 20), (18, 21), (19, 22)]
    + [(23 + a, 23 + b) for a, b in _face_flip_pairs()]
    + [(91 + i, 112 + i) for i in range(21)])


def flip_permutation() -> np.ndarray:
    """Index array that swaps left and right points: ``mirrored = keypoints[..., perm, :]``."""
    perm = np.arange(NUM_KEYPOINTS)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    return perm


def _hand_edges(offset: int) -> list[tuple[int, int]]:
    edges = []
    for finger in range(5):
        chain = [0] + [1 + 4 * finger + joint for joint in range(4)]
        edges += [(offset + a, offset + b) for a, b in zip(chain, chain[1:])]
    return edges


BODY_EDGES = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
              (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
              (15, 17), (15, 18), (15, 19), (16, 20), (16, 21), (16, 22))
FACE_EDGES = tuple((23 + a, 23 + a + 1) for start, stop in
                   ((0, 16), (17, 21), (22, 26), (27, 30), (31, 35), (36, 41), (42, 47), (48, 59), (60, 67))
                   for a in range(start, stop)) + tuple(
    (23 + a, 23 + b) for a, b in ((41, 36), (47, 42), (59, 48), (67, 60)))
HAND_EDGES = tuple(_hand_edges(LEFT_HAND.start) + _hand_edges(RIGHT_HAND.start))
SKELETON = BODY_EDGES + FACE_EDGES + HAND_EDGES  # for drawing

# TwoStream-SLR's 79 points: 11 upper body, 42 hands, 10 mouth (every other outer-lip point),
# 16 face (every third point of the other face points).
KEYPOINT_PARTS_79 = {
    "face_others": tuple(range(23, 69, 3)),  # 16
    "hand": tuple(range(91, 133)),  # 42
    "mouth_half": tuple(range(71, 91, 2)),  # 10
    "pose": tuple(range(0, 11)),  # 11 upper-body points
}
# TwoStream-SLR names the parts as above and concatenates them in sorted name order (face_others,
# hand, mouth_half, pose); models trained with its code expect their heatmap channels so.
TWOSTREAM_79 = tuple(i for part in sorted(KEYPOINT_PARTS_79) for i in KEYPOINT_PARTS_79[part])
SORTED_79 = tuple(sorted(TWOSTREAM_79))  # the same points in COCO-WholeBody order
KEYPOINT_ORDERS = {"twostream": TWOSTREAM_79, "wholebody": SORTED_79}
