"""pose-format `.pose` export: our own round trip always; the real library's reader when installed."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from cslr_pipe.features.pose.pose_format import (COMPONENTS, POSE_FORMAT_VERSION, pose_bytes,
                                                 read_pose_file, read_pose_header, write_pose_file)
from cslr_pipe.features.pose.wholebody import NAMES, NUM_KEYPOINTS, SKELETON

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
    (tmp_path / "v01.pose").write_bytes(struct.pack("<f", 0.1) + buffer[4:])
    with pytest.raises(ValueError, match="version"):
        read_pose_file(tmp_path / "v01.pose")


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
