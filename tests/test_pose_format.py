"""pose-format `.pose` files: export and our round trip always, reading other files' versions, point
formats and headers (COCO-WholeBody, MediaPipe Holistic full and reduced, a real reduced Holistic
file in tests/data/real-signing/); the real library as a reference when installed."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cslr_pipe.features.errors import InputError, MissingFileError
from cslr_pipe.features.pose import mediapipe_backend as mpb
from cslr_pipe.features.pose.pose_format import (COMPONENTS, POSE_FORMAT_VERSION, pose_bytes,
                                                 read_pose_file, read_pose_header, read_pose_keypoints,
                                                 write_pose_file)
from cslr_pipe.features.pose.wholebody import FACE, LEFT_HAND, NAMES, NUM_KEYPOINTS, RIGHT_HAND, SKELETON

REAL_HOLISTIC = Path(__file__).parent / "data" / "real-signing" / "test_video.mediapipe.pose"

FPS, WIDTH, HEIGHT = 29.97, 1280, 720


def sample_keypoints(frames: int = 7, seed: int = 0) -> np.ndarray:
    """Random (x, y, score) in a 1280x720 frame; some points undetected (score 0 at (0, 0))."""
    rng = np.random.default_rng(seed)
    keypoints = np.empty((frames, NUM_KEYPOINTS, 3), np.float32)
    keypoints[..., 0] = rng.uniform(0, WIDTH, (frames, NUM_KEYPOINTS))
    keypoints[..., 1] = rng.uniform(0, HEIGHT, (frames, NUM_KEYPOINTS))
    keypoints[..., 2] = rng.uniform(0.05, 1.0, (frames, NUM_KEYPOINTS))
    missing = rng.random((frames, NUM_KEYPOINTS)) < 0.2
    missing[frames // 2] = True  # a frame with nobody found
    keypoints[missing] = 0.0
    return keypoints


@pytest.fixture
def pose_file(tmp_path):
    keypoints = sample_keypoints()
    return write_pose_file(tmp_path / "clip.pose", keypoints, FPS, WIDTH, HEIGHT), keypoints


# --- always: our reader, the byte layout, the header -------------------------------------------

def test_round_trip_through_our_reader(pose_file):
    path, keypoints = pose_file
    read, fps, width, height = read_pose_file(path)
    assert read.dtype == np.float32 and read.shape == keypoints.shape
    np.testing.assert_array_equal(read, keypoints)
    assert fps == pytest.approx(FPS, rel=1e-6) and fps == float(np.float32(FPS))
    assert (width, height) == (WIDTH, HEIGHT)


def test_atomic_write_leaves_only_the_file(tmp_path):
    write_pose_file(tmp_path / "sub" / "a.pose", sample_keypoints(3), 25, 640, 480)
    write_pose_file(tmp_path / "sub" / "a.pose", sample_keypoints(4), 25, 640, 480)  # overwrite
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.pose"]
    assert read_pose_file(tmp_path / "sub" / "a.pose")[0].shape[0] == 4


def test_byte_layout(pose_file):
    path, keypoints = pose_file
    buffer = path.read_bytes()
    version, = struct.unpack_from("<f", buffer, 0)
    assert version == np.float32(POSE_FORMAT_VERSION) and round(version, 3) == 0.2
    assert struct.unpack_from("<HHH", buffer, 4) == (WIDTH, HEIGHT, 0)
    assert struct.unpack_from("<H", buffer, 10) == (4,)
    header, offset = read_pose_header(buffer)
    fps, frames, people = struct.unpack_from("<fIH", buffer, offset)
    assert (frames, people) == (len(keypoints), 1) and fps == np.float32(FPS)
    frames_bytes = len(keypoints) * NUM_KEYPOINTS * 4
    assert len(buffer) == offset + 10 + 2 * frames_bytes + frames_bytes  # xy, then confidence
    data = np.frombuffer(buffer, "<f4", len(keypoints) * NUM_KEYPOINTS * 2, offset + 10)
    np.testing.assert_array_equal(data.reshape(-1, NUM_KEYPOINTS, 2), keypoints[..., :2])


def test_header_components_cover_our_layout():
    assert [c.name for c in COMPONENTS] == ["BODY", "FACE", "LEFT_HAND", "RIGHT_HAND"]
    assert [len(c.points) for c in COMPONENTS] == [23, 68, 21, 21]
    assert [i for c in COMPONENTS for i in c.indices] == list(range(NUM_KEYPOINTS))
    assert list(COMPONENTS[0].points) == list(NAMES[:23])
    assert list(COMPONENTS[1].points) == [f"face-{i}" for i in range(68)]
    assert list(COMPONENTS[2].points) == list(COMPONENTS[3].points) == [f"hand_{i}" for i in range(21)]
    # every SKELETON edge is kept, mapped to component-local indices
    mapped = {(c.indices[a], c.indices[b]) for c in COMPONENTS for a, b in c.limbs}
    assert mapped == set(SKELETON) and sum(len(c.limbs) for c in COMPONENTS) == len(SKELETON)
    for c in COMPONENTS:
        assert c.colors and all(0 <= v <= 255 for color in c.colors for v in color)


def test_undetected_and_non_finite_points_get_confidence_zero(tmp_path):
    keypoints = sample_keypoints(2)
    keypoints[0, 5] = (np.nan, 10.0, 0.9)  # bad coordinate: masked, written as 0
    keypoints[0, 6] = (3.0, 4.0, np.nan)  # bad score: masked, coordinate kept
    keypoints[0, 7] = (3.0, 4.0, -1.0)  # negative score: masked
    keypoints[1, 8] = (5.0, 6.0, 0.0)  # score 0 with a position: masked, position kept
    read, *_ = read_pose_file(write_pose_file(tmp_path / "x.pose", keypoints, 25, 100, 100))
    assert np.isfinite(read).all()
    np.testing.assert_array_equal(read[0, 5], [0, 0, 0])
    np.testing.assert_array_equal(read[0, 6], [3, 4, 0])
    np.testing.assert_array_equal(read[0, 7], [3, 4, 0])
    np.testing.assert_array_equal(read[1, 8], [5, 6, 0])


def test_empty_clip(tmp_path):
    path = write_pose_file(tmp_path / "empty.pose", np.zeros((0, NUM_KEYPOINTS, 3)), 25, 10, 10)
    read, fps, width, height = read_pose_file(path)
    assert read.shape == (0, NUM_KEYPOINTS, 3) and (fps, width, height) == (25.0, 10, 10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(keypoints=np.zeros((3, 132, 3))), "keypoints must be"),
    (dict(keypoints=np.zeros((133, 3))), "keypoints must be"),
    (dict(fps=0), "fps"),
    (dict(fps=float("nan")), "fps"),
    (dict(width=70000), "width"),
    (dict(height=-1), "height"),
])
def test_rejects_bad_input(kwargs, message):
    args = dict(keypoints=np.zeros((3, NUM_KEYPOINTS, 3)), fps=25, width=640, height=480) | kwargs
    with pytest.raises(ValueError, match=message):
        pose_bytes(**args)


def test_reader_rejects_truncated_and_other_versions(tmp_path, pose_file):
    path, _ = pose_file
    buffer = path.read_bytes()
    (tmp_path / "cut.pose").write_bytes(buffer[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_pose_file(tmp_path / "cut.pose")
    (tmp_path / "v03.pose").write_bytes(struct.pack("<f", 0.3) + buffer[4:])
    with pytest.raises(ValueError, match="version"):
        read_pose_file(tmp_path / "v03.pose")


# --- with the real pose-format library ----------------------------------------------------------

def read_with_library(path):
    pose_format = pytest.importorskip("pose_format")
    with open(path, "rb") as handle:
        return pose_format.Pose.read(handle.read())


def test_library_reads_shape_values_confidence_and_mask(pose_file):
    path, keypoints = pose_file
    pose = read_with_library(path)
    data, confidence = pose.body.data, pose.body.confidence
    assert data.shape == (len(keypoints), 1, NUM_KEYPOINTS, 2)  # frames, people, points, dims
    assert confidence.shape == (len(keypoints), 1, NUM_KEYPOINTS)
    np.testing.assert_array_equal(np.asarray(data.data)[:, 0], keypoints[..., :2])
    np.testing.assert_array_equal(confidence[:, 0], keypoints[..., 2])
    undetected = keypoints[..., 2] == 0
    assert undetected.any() and (~undetected).any()
    mask = np.broadcast_to(np.ma.getmaskarray(data), data.shape)
    np.testing.assert_array_equal(mask[:, 0], np.repeat(undetected[..., None], 2, axis=-1))
    assert pose.body.fps == pytest.approx(FPS, rel=1e-6)
    assert round(pose.header.version, 3) == POSE_FORMAT_VERSION
    assert (pose.header.dimensions.width, pose.header.dimensions.height) == (WIDTH, HEIGHT)
    assert pose.header.dimensions.depth == 0
    assert pose.header.num_dims() == 2 and pose.header.total_points() == NUM_KEYPOINTS


def test_library_sees_its_own_coco_wholebody_133_names(pose_file):
    path, _ = pose_file
    pose = read_with_library(path)
    from pose_format.utils.cocowholebody133_header import cocowholebody_components
    from pose_format.utils.generic import (detect_known_pose_format, hands_indexes,
                                           pose_normalization_info)
    theirs = cocowholebody_components()
    assert [c.name for c in pose.header.components] == [c.name for c in theirs]
    for ours, reference in zip(pose.header.components, theirs):
        assert list(ours.points) == list(reference.points), ours.name
        assert ours.format == reference.format == "XYC"
        # limbs are our SKELETON (not the library's), but always inside the component
        assert all(0 <= int(i) < len(ours.points) for limb in ours.limbs for i in limb)
        assert len(ours.colors) > 0
    assert detect_known_pose_format(pose) == "coco_wholebody_133"
    info = pose_normalization_info(pose.header)  # shoulders found by name
    assert (info.p1, info.p2) == (NAMES.index("right_shoulder"), NAMES.index("left_shoulder"))
    assert hands_indexes(pose.header) == [NAMES.index("left_hand_middle_finger1"),
                                          NAMES.index("right_hand_middle_finger1")]


def test_library_rewrites_our_file_byte_for_byte(pose_file):
    path, _ = pose_file
    pose = read_with_library(path)
    buffer = io.BytesIO()
    pose.write(buffer)
    assert buffer.getvalue() == path.read_bytes()


def test_our_reader_reads_a_library_written_file(tmp_path):
    pytest.importorskip("pose_format")
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderDimensions
    from pose_format.utils.cocowholebody133_header import cocowholebody_components
    keypoints = sample_keypoints(5, seed=1)
    body = NumPyPoseBody(fps=24.0, data=keypoints[:, None, :, :2].copy(),
                         confidence=keypoints[:, None, :, 2].copy())
    header = PoseHeader(0.2, PoseHeaderDimensions(640, 480, 0), cocowholebody_components())
    with open(tmp_path / "lib.pose", "wb") as handle:
        Pose(header, body).write(handle)
    read, fps, width, height = read_pose_file(tmp_path / "lib.pose")
    np.testing.assert_array_equal(read, keypoints)
    assert (fps, width, height) == (24.0, 640, 480)


def test_library_visualizer_draws_a_frame(pose_file):
    path, _ = pose_file
    pose = read_with_library(path)
    from pose_format.pose_visualizer import PoseVisualizer
    frame = next(iter(PoseVisualizer(pose).draw(max_frames=1)))
    assert frame.shape == (HEIGHT, WIDTH, 3) and (frame != 255).any()


# --- reading other .pose files: versions, point formats, Holistic headers ------------------------

def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<H", len(data)) + data


def pose_file_bytes(components, data, confidence, fps=25.0, width=WIDTH, height=HEIGHT, depth=0,
                    version=0.2, stored_frames=None) -> bytes:
    """A .pose file built by hand from the format's description: ``components`` = [(name, point
    format, point names)] with no limbs or colours, ``data`` [frames, people, points, dims],
    ``confidence`` [frames, people, points]. Version 0.1 stores fps and frames as uint16 (the
    frame count modulo 65536 unless ``stored_frames`` is given)."""
    parts = [struct.pack("<fHHHH", version, width, height, depth, len(components))]
    for name, point_format, points in components:
        parts += [_str(name), _str(point_format), struct.pack("<HHH", len(points), 0, 0)]
        parts += [_str(point) for point in points]
    frames, people = np.shape(confidence)[:2]
    if round(version, 3) == 0.1:
        stored = frames % 65536 if stored_frames is None else stored_frames
        parts.append(struct.pack("<HHH", round(fps), stored, people))
    else:
        parts.append(struct.pack("<fIH", fps, frames, people))
    parts += [np.asarray(data, "<f4").tobytes(), np.asarray(confidence, "<f4").tobytes()]
    return b"".join(parts)


def as_version_0_1(buffer: bytes) -> bytes:
    """One of our version-0.2 files with a version-0.1 body (integer fps)."""
    _, offset = read_pose_header(buffer)
    fps, frames, people = struct.unpack_from("<fIH", buffer, offset)
    return (struct.pack("<f", 0.1) + buffer[4:offset] + struct.pack("<HHH", round(fps), frames, people)
            + buffer[offset + 10:])


FACE_MESH = tuple(str(i) for i in range(468))


def holistic_components(point_format="XYZC", world=True):
    """pose-format's Holistic header (``pose_format.utils.holistic.holistic_components``)."""
    components = [("POSE_LANDMARKS", point_format, mpb.POSE_LANDMARK_NAMES),
                  ("FACE_LANDMARKS", point_format, FACE_MESH),
                  ("LEFT_HAND_LANDMARKS", point_format, mpb.HAND_LANDMARK_NAMES),
                  ("RIGHT_HAND_LANDMARKS", point_format, mpb.HAND_LANDMARK_NAMES)]
    return components + [("POSE_WORLD_LANDMARKS", point_format, mpb.POSE_LANDMARK_NAMES)] * world


def fake_holistic(frames=6, seed=0):
    """Per frame, Holistic-like results in normalised coordinates (pose with visibility, some points
    outside the frame; a frame without a face, one without each hand, one without anybody)."""
    rng = np.random.default_rng(seed)

    def landmarks(xy, visibility=None):
        if xy is None:
            return None
        visibility = np.ones(len(xy)) if visibility is None else visibility
        return SimpleNamespace(landmark=[SimpleNamespace(x=float(x), y=float(y), z=0.0, visibility=float(v))
                                         for (x, y), v in zip(xy, visibility)])

    results = []
    for t in range(frames):
        nobody = t == frames - 1
        results.append(SimpleNamespace(
            pose_landmarks=None if nobody else landmarks(rng.uniform(-0.1, 1.1, (33, 2)), rng.uniform(0, 1, 33)),
            face_landmarks=None if nobody or t == 1 else landmarks(rng.uniform(0.3, 0.7, (468, 2))),
            left_hand_landmarks=None if nobody or t == 2 else landmarks(rng.uniform(0.05, 0.5, (21, 2))),
            right_hand_landmarks=None if nobody or t == 3 else landmarks(rng.uniform(-0.05, 1.0, (21, 2)))))
    return results


def holistic_arrays(results, width, height):
    """[T, 1, 576, 3] data and [T, 1, 576] confidence as pose-format's Holistic reader stores them:
    pixels x * width, y * height (float64, then float32), z; confidence = visibility for the pose,
    1 for a face or hand found, 0 for a part not found."""
    data, confidence = [], []
    for r in results:
        frame_data, frame_confidence = [], []
        for part, count in ((r.pose_landmarks, 33), (r.face_landmarks, 468), (r.left_hand_landmarks, 21),
                            (r.right_hand_landmarks, 21), (r.pose_landmarks, 33)):
            if part is None:
                frame_data.append(np.zeros((count, 3)))
                frame_confidence.append(np.zeros(count))
                continue
            frame_data.append(np.array([(p.x * width, p.y * height, p.z) for p in part.landmark]))
            pose = count == 33
            frame_confidence.append(np.array([p.visibility if pose else 1.0 for p in part.landmark]))
        data.append(np.concatenate(frame_data))
        confidence.append(np.concatenate(frame_confidence))
    return (np.asarray(data, np.float32)[:, None], np.asarray(confidence, np.float32)[:, None])


def test_full_holistic_file_maps_as_the_mediapipe_backend(tmp_path):
    results = fake_holistic()
    data, confidence = holistic_arrays(results, WIDTH, HEIGHT)
    assert data.shape == (6, 1, 576, 3)
    path = tmp_path / "holistic.pose"
    path.write_bytes(pose_file_bytes(holistic_components(), data, confidence, fps=30.0, depth=1000))
    keypoints, fps, width, height = read_pose_keypoints(path)
    expected = np.stack([mpb.holistic_to_wholebody(r, WIDTH, HEIGHT) for r in results])
    assert keypoints.shape == expected.shape == (6, NUM_KEYPOINTS, 3) and keypoints.dtype == np.float32
    assert (fps, width, height) == (30.0, WIDTH, HEIGHT)
    np.testing.assert_array_equal(keypoints[..., 2] > 0, expected[..., 2] > 0)
    np.testing.assert_allclose(keypoints, expected, rtol=1e-6, atol=1e-6)  # float32 precision
    # the fake covers every case: found, outside the frame, a part missing, nobody
    assert (keypoints[-1] == 0).all() and (keypoints[1, FACE.start:FACE.stop] == 0).all()
    assert (keypoints[2, LEFT_HAND.start:LEFT_HAND.stop] == 0).all()
    assert (keypoints[3, RIGHT_HAND.start:RIGHT_HAND.stop] == 0).all()
    assert (keypoints[0, :17, 2] == 0).any() and (keypoints[0, :17, 2] > 0).any()
    assert (keypoints[0, RIGHT_HAND.start:RIGHT_HAND.stop, 2] == 0).any()  # a finger off the frame
    # 543 points (no world landmarks) and an XYC point format read the same
    path.write_bytes(pose_file_bytes(holistic_components("XYC", world=False), data[:, :, :543, :2],
                                     confidence[:, :, :543], fps=30.0))
    np.testing.assert_array_equal(read_pose_keypoints(path)[0], keypoints)


def test_holistic_components_are_matched_by_name(tmp_path):
    """Components and points in another order, some missing, iris points: each point by its name."""
    results = fake_holistic(seed=3)
    data, confidence = holistic_arrays(results, WIDTH, HEIGHT)
    full = read_pose_keypoints(_write(tmp_path / "full.pose", holistic_components(), data, confidence))
    rng = np.random.default_rng(1)
    pose_points = rng.permutation(33)[:20]
    face_points = rng.permutation(468)[:200]
    right_points = rng.permutation(21)[:15]
    components = [("RIGHT_HAND_LANDMARKS", "XYZC", [mpb.HAND_LANDMARK_NAMES[i] for i in right_points]),
                  ("FACE_LANDMARKS", "XYZC", [str(i) for i in face_points] + ["468", "477"]),
                  ("POSE_LANDMARKS", "XYZC", [mpb.POSE_LANDMARK_NAMES[i] for i in pose_points])]
    columns = np.concatenate([543 - 21 + right_points, 33 + face_points, [0, 0], pose_points])
    reduced = read_pose_keypoints(_write(tmp_path / "reduced.pose", components,
                                         data[:, :, columns], confidence[:, :, columns]))
    assert reduced[1:] == full[1:]
    kept = np.zeros(NUM_KEYPOINTS, bool)
    kept[[i for i, source in enumerate(mpb.BODY_FROM_POSE) if source in pose_points]] = True
    kept[[17 + k for k, source in enumerate(mpb.FEET_FROM_POSE) if source in pose_points]] = True
    kept[[FACE.start + k for k, vertex in enumerate(mpb.FACE68_FROM_MESH) if vertex in face_points]] = True
    kept[RIGHT_HAND.start + right_points] = True
    assert 0 < kept[FACE].sum() < 68
    np.testing.assert_array_equal(reduced[0][:, kept], full[0][:, kept])
    assert (reduced[0][:, ~kept] == 0).all()


def _write(path, components, data, confidence, **kwargs):
    path.write_bytes(pose_file_bytes(components, data, confidence, **kwargs))
    return path


def test_library_holistic_header_has_our_names():
    holistic = pytest.importorskip("pose_format.utils.holistic")  # needs mediapipe too
    theirs = [(c.name, c.format, tuple(c.points)) for c in holistic.holistic_components("XYZC")]
    assert theirs == [(name, f, tuple(points)) for name, f, points in holistic_components()]


def test_library_reads_our_hand_built_holistic_file_alike(tmp_path):
    """The hand-built files above are what pose-format reads (checks the test's own writer)."""
    results = fake_holistic(seed=5)
    data, confidence = holistic_arrays(results, WIDTH, HEIGHT)
    for version in (0.1, 0.2):
        path = _write(tmp_path / f"v{version}.pose", holistic_components(), data, confidence,
                      fps=24.0, version=version)
        pose = read_with_library(path)
        assert [c.name for c in pose.header.components] == [c[0] for c in holistic_components()]
        np.testing.assert_array_equal(np.asarray(pose.body.data.data), data)
        np.testing.assert_array_equal(np.asarray(pose.body.confidence), confidence)
        assert pose.body.fps == 24.0 and round(pose.header.version, 3) == version


def test_round_trip_and_both_body_versions(tmp_path, pose_file):
    path, keypoints = pose_file
    assert read_pose_file is read_pose_keypoints
    read, fps, width, height = read_pose_keypoints(path)
    np.testing.assert_array_equal(read, keypoints)
    assert fps == float(np.float32(FPS)) and (width, height) == (WIDTH, HEIGHT)
    old = tmp_path / "v01.pose"
    old.write_bytes(as_version_0_1(path.read_bytes()))
    read, fps, width, height = read_pose_keypoints(old)
    np.testing.assert_array_equal(read, keypoints)
    assert (fps, width, height) == (30.0, WIDTH, HEIGHT)  # 0.1 stores fps as an integer


def test_version_0_1_frame_count_comes_from_the_bytes_left(tmp_path):
    """A 0.1 file's uint16 frame count overflows past 65535 frames: the body's size decides."""
    frames = 65537
    xy = np.zeros((frames, 1, 1, 2), np.float32)
    xy[..., 0] = np.arange(frames)[:, None, None] % 1000
    xy[..., 1] = 50
    confidence = np.full((frames, 1, 1), 0.75, np.float32)
    path = _write(tmp_path / "long.pose", [("POSE_LANDMARKS", "XYC", ["LEFT_SHOULDER"])], xy, confidence,
                  version=0.1)
    assert struct.unpack_from("<HH", path.read_bytes(), len(path.read_bytes()) - frames * 12 - 6) == (25, 1)
    keypoints, fps, *_ = read_pose_keypoints(path)
    assert keypoints.shape == (frames, NUM_KEYPOINTS, 3) and fps == 25.0
    np.testing.assert_array_equal(keypoints[:, 5, 0], xy[:, 0, 0, 0])
    assert (keypoints[:, 5, 1:] == (50, 0.75)).all()
    assert (np.delete(keypoints, 5, axis=1) == 0).all()


def test_wholebody_named_points_xyzc_non_finite_and_nobody(tmp_path):
    """133 points named as our NAMES in one component, with a depth; NaN points and no person."""
    keypoints = sample_keypoints(4, seed=2)
    data = np.concatenate([keypoints[..., :2], np.full((4, NUM_KEYPOINTS, 1), 7.0, np.float32)], axis=-1)
    data[1, 3, 0] = np.nan
    confidence = keypoints[..., 2].copy()
    confidence[2, 4] = np.inf
    path = _write(tmp_path / "xyz.pose", [("WHOLEBODY", "XYZC", NAMES)], data[:, None], confidence[:, None])
    read, *_ = read_pose_keypoints(path)
    expected = keypoints.copy()
    expected[1, 3] = expected[2, 4] = 0
    np.testing.assert_array_equal(read, expected)
    nobody = _write(tmp_path / "nobody.pose", [("WHOLEBODY", "XYZC", NAMES)], np.zeros((3, 0, 133, 3)),
                    np.zeros((3, 0, 133)))
    read, fps, *_ = read_pose_keypoints(nobody)
    assert read.shape == (3, NUM_KEYPOINTS, 3) and (read == 0).all() and fps == 25.0


def test_real_reduced_holistic_file():
    """tests/data/real-signing: a real version-0.1 file, 8 pose + 128 face + 2 x 21 hand landmarks."""
    buffer = REAL_HOLISTIC.read_bytes()
    assert round(struct.unpack_from("<f", buffer)[0], 3) == 0.1
    keypoints, fps, width, height = read_pose_keypoints(REAL_HOLISTIC)
    assert keypoints.shape == (170, NUM_KEYPOINTS, 3) and keypoints.dtype == np.float32
    assert (fps, width, height) == (24.0, 1250, 1250)
    found = keypoints[..., 2] > 0
    assert (keypoints[~found] == 0).all() and (keypoints[..., 2] <= 1).all()
    assert ((keypoints[found][:, :2] >= 0) & (keypoints[found][:, :2] <= 1249)).all()
    assert found[:, 5:9].all()  # shoulders and elbows in every frame
    assert not found[:, list(range(0, 5)) + list(range(13, 23))].any()  # no head, knee, foot landmarks
    # the 68-point mapping's mesh vertices among the file's 128: all but the nose (iBUG 27-35)
    face = found[:, FACE.start:FACE.stop]
    assert np.flatnonzero(~face.any(axis=0)).tolist() == list(range(27, 36))
    assert face[:, :27].all() and face[:, 36:].all()
    assert not found[:, LEFT_HAND].any() and found[:, RIGHT_HAND].all(axis=1).mean() > 0.8


def test_real_file_matches_the_library_point_by_point():
    pose = read_with_library(REAL_HOLISTIC)
    keypoints, *_ = read_pose_keypoints(REAL_HOLISTIC)
    data = np.asarray(pose.body.data.data)[:, 0]
    confidence = np.asarray(pose.body.confidence)[:, 0]
    assert data.shape == (170, 178, 3)
    columns, start = {}, 0
    for component in pose.header.components:
        columns.update({(component.name, point): start + j for j, point in enumerate(component.points)})
        start += len(component.points)

    def reference(component, point):
        """The library's (x, y, confidence); (0, 0, 0) where not found or outside the 1250 x 1250 frame."""
        column = columns[component, point]
        x, y, c = data[:, column, 0], data[:, column, 1], confidence[:, column]
        keep = (c > 0) & (x >= 0) & (x <= 1249) & (y >= 0) & (y <= 1249)
        return np.where(keep[:, None], np.stack([x, y, c], axis=-1), 0).astype(np.float32)

    expected = np.zeros_like(keypoints)
    coco = dict(LEFT_SHOULDER=5, RIGHT_SHOULDER=6, LEFT_ELBOW=7, RIGHT_ELBOW=8, LEFT_WRIST=9,
                RIGHT_WRIST=10, LEFT_HIP=11, RIGHT_HIP=12)
    assert list(pose.header.components[0].points) == list(coco)
    for name, index in coco.items():
        expected[:, index] = reference("POSE_LANDMARKS", name)
    for component, target in (("LEFT_HAND_LANDMARKS", LEFT_HAND), ("RIGHT_HAND_LANDMARKS", RIGHT_HAND)):
        for j, name in enumerate(mpb.HAND_LANDMARK_NAMES):  # MediaPipe's order is COCO-WholeBody's
            expected[:, target.start + j] = reference(component, name)
    mesh = set(pose.header.components[1].points)
    assert len(mesh) == 128
    present = [k for k, vertex in enumerate(mpb.FACE68_FROM_MESH) if str(vertex) in mesh]
    assert 0 < len(present) < 68
    for k in present:
        expected[:, FACE.start + k] = reference("FACE_LANDMARKS", str(mpb.FACE68_FROM_MESH[k]))
    np.testing.assert_array_equal(keypoints, expected)
    assert (expected[:, 5:9, 2] > 0).all() and (expected[:, RIGHT_HAND, 2] > 0).any()
    # and the library's own 0.2 rewrite of it reads the same
    rewritten = io.BytesIO()
    pose.write(rewritten)
    assert round(struct.unpack_from("<f", rewritten.getvalue())[0], 3) == 0.2


def test_real_file_as_version_0_2_reads_the_same(tmp_path):
    pose = read_with_library(REAL_HOLISTIC)
    path = tmp_path / "v02.pose"
    with open(path, "wb") as handle:
        pose.write(handle)
    assert round(struct.unpack_from("<f", path.read_bytes())[0], 3) == 0.2
    ours, theirs = read_pose_keypoints(REAL_HOLISTIC), read_pose_keypoints(path)
    np.testing.assert_array_equal(ours[0], theirs[0])
    assert ours[1:] == theirs[1:] == (24.0, 1250, 1250)


def _errors(tmp_path, ours: bytes):
    """name -> (file bytes, message pattern) for files that must be refused."""
    old = as_version_0_1(ours)
    unknown = pose_file_bytes([("BODY_25", "XYC", [f"p{i}" for i in range(25)])],
                              np.zeros((2, 1, 25, 2)), np.zeros((2, 1, 25)))
    holistic_typo = pose_file_bytes([("POSE_LANDMARKS", "XYC", ["LEFT_SHOULDER", "LEFT_SHOLDER"])],
                                    np.zeros((2, 1, 2, 2)), np.zeros((2, 1, 2)))
    no_confidence = pose_file_bytes([("WHOLEBODY", "XYZ", NAMES)], np.zeros((2, 1, 133, 2)),
                                    np.zeros((2, 1, 133)))
    return {
        "header-cut": (ours[:300], "truncated"),
        "body-cut": (ours[:-3], "truncated"),
        "trailing": (ours + b"\0" * 4, "trailing"),
        "v01-partial-frame": (old + b"\0" * 4, "trailing"),
        "v01-cut": (old[:-4], "truncated"),
        "version-0.3": (struct.pack("<f", 0.3) + ours[4:], "version 0.300"),
        "version-0": (struct.pack("<f", 0.0) + ours[4:], "version 0.000"),
        "not-a-pose-file": (b"just some text, not a pose file", "not a .pose file"),
        "unknown-components": (unknown, r"components found: BODY_25 \(25 points\)"),
        "holistic-typo": (holistic_typo, "not MediaPipe landmarks: 'LEFT_SHOLDER'"),
        "no-confidence": (no_confidence, "point format 'XYZ'"),
    }


@pytest.mark.parametrize("case", ["header-cut", "body-cut", "trailing", "v01-partial-frame", "v01-cut",
                                  "version-0.3", "version-0", "not-a-pose-file", "unknown-components",
                                  "holistic-typo", "no-confidence"])
def test_bad_files_are_one_line_input_errors(tmp_path, pose_file, case):
    data, pattern = _errors(tmp_path, pose_file[0].read_bytes())[case]
    path = tmp_path / f"{case}.pose"
    path.write_bytes(data)
    with pytest.raises(InputError, match=pattern) as error:
        read_pose_keypoints(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ")


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="nothing.pose"):
        read_pose_keypoints(tmp_path / "nothing.pose")
