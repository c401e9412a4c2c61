"""Tests for features/video.py: video files and frame folders, chunking, resizing, errors.

Every input is built in a temporary directory. A frame's content identifies its index: a
bright vertical bar whose horizontal position is the index, wide enough to survive lossy
(mp4v) compression and resizing.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cslr_pipe.features.video import (
    VideoError,
    iter_frames,
    list_frame_files,
    probe_video,
    read_video,
)

NUM_FRAMES = 12
BAR = 8  # bar width in pixels: frame i has its bar at columns [i*BAR, (i+1)*BAR)
HEIGHT, WIDTH = 48, NUM_FRAMES * BAR  # 48 x 96, non-square
FPS = 25.0


def bar_frame(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A dark frame (BGR or RGB alike) with a white bar at the index's position."""
    frame = np.full((height, width, 3), 20, np.uint8)
    frame[:, index * BAR:(index + 1) * BAR] = 235
    return frame


def decode_index(frame: np.ndarray) -> int:
    """The index a bar_frame encodes, whatever the frame's width (tolerant of compression)."""
    columns = frame.astype(np.float64).mean(axis=(0, 2))
    center = (np.argmax(columns) + 0.5) * WIDTH / frame.shape[1]
    return int(center // BAR)


def decode_indices(frames: np.ndarray) -> list[int]:
    return [decode_index(frame) for frame in frames]


def write_mp4(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened(), "cv2.VideoWriter cannot write mp4v in this environment"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def assert_one_line_error(excinfo: pytest.ExceptionInfo, path: Path, reason: str) -> None:
    error = excinfo.value
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    assert reason in message
    assert error.video == str(path)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mp4_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mp4")
    return write_mp4(folder / "bars.mp4", [bar_frame(i) for i in range(NUM_FRAMES)])


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory) -> Path:
    """images0001.png ... images0012.png (zero-padded), frame i+1 has the bar of index i."""
    folder = tmp_path_factory.mktemp("frames_padded")
    for i in range(NUM_FRAMES):
        assert cv2.imwrite(str(folder / f"images{i + 1:04d}.png"), bar_frame(i))
    return folder


@pytest.fixture(scope="module")
def natural_folder(tmp_path_factory) -> Path:
    """images1.png ... images12.png: a plain string sort would put images10 before images2."""
    folder = tmp_path_factory.mktemp("frames_natural")
    for i in range(NUM_FRAMES):
        assert cv2.imwrite(str(folder / f"images{i + 1}.png"), bar_frame(i))
    return folder


# ----------------------------------------------------------------------- count and order


def test_mp4_frame_count_and_order(mp4_video):
    frames = read_video(mp4_video)
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert frames.dtype == np.uint8
    assert decode_indices(frames) == list(range(NUM_FRAMES))


def test_padded_folder_count_and_order(frame_folder):
    frames = read_video(frame_folder)
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert decode_indices(frames) == list(range(NUM_FRAMES))


def test_natural_order_folder(natural_folder):
    names = [p.name for p in list_frame_files(natural_folder)]
    assert names == [f"images{i + 1}.png" for i in range(NUM_FRAMES)]
    assert sorted(names) != names  # the case is real: string order differs
    frames = read_video(natural_folder)
    assert decode_indices(frames) == list(range(NUM_FRAMES))


def test_folder_ignores_non_images(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), bar_frame(i))
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub.png").mkdir()  # a directory with an image suffix is no frame
    assert decode_indices(read_video(tmp_path)) == [0, 1, 2]


# ------------------------------------------------------------------------------ chunking


@pytest.mark.parametrize("chunk_size", [1, 5, NUM_FRAMES, NUM_FRAMES + 50])
@pytest.mark.parametrize("source", ["mp4_video", "frame_folder"])
def test_chunks_cover_the_video(request, source, chunk_size):
    video = request.getfixturevalue(source)
    chunks = list(iter_frames(video, chunk_size=chunk_size))
    assert all(1 <= len(chunk) <= chunk_size for chunk in chunks)
    # every chunk but the last is full
    assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
    assert len(chunks) == -(-NUM_FRAMES // chunk_size)
    whole = np.concatenate(chunks)
    np.testing.assert_array_equal(whole, read_video(video))
    assert decode_indices(whole) == list(range(NUM_FRAMES))


def test_chunk_size_must_be_positive(frame_folder):
    with pytest.raises(ValueError):
        list(iter_frames(frame_folder, chunk_size=0))


# -------------------------------------------------------------------------------- resize


@pytest.mark.parametrize("size", [(30, 50), (64, 40), (HEIGHT, WIDTH)])
@pytest.mark.parametrize("source", ["mp4_video", "frame_folder"])
def test_resize_gives_height_width(request, source, size):
    video = request.getfixturevalue(source)
    chunks = list(iter_frames(video, chunk_size=5, size=size))
    for chunk in chunks:
        assert chunk.shape[1:] == (size[0], size[1], 3)
        assert chunk.dtype == np.uint8
    frames = np.concatenate(chunks)
    assert len(frames) == NUM_FRAMES
    assert decode_indices(frames) == list(range(NUM_FRAMES))


# ------------------------------------------------------------------------------ RGB order


def test_png_red_pixel_is_rgb(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    bgr[0, 0] = (255, 0, 0)  # one pure-blue pixel
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    frames = read_video(tmp_path)
    assert frames.shape == (1, 4, 6, 3)
    assert frames[0, 1, 1].tolist() == [255, 0, 0]
    assert frames[0, 0, 0].tolist() == [0, 0, 255]


def test_mp4_red_frame_is_rgb(tmp_path):
    bgr = np.zeros((32, 32, 3), np.uint8)
    bgr[..., 2] = 255
    video = write_mp4(tmp_path / "red.mp4", [bgr] * 3)
    frames = read_video(video).astype(int)
    red, green, blue = frames[..., 0].mean(), frames[..., 1].mean(), frames[..., 2].mean()
    assert red > 200 and green < 60 and blue < 60


# ---------------------------------------------------------------------------------- probe


def test_probe_mp4(mp4_video):
    info = probe_video(mp4_video)
    assert info.num_frames == NUM_FRAMES
    assert (info.height, info.width) == (HEIGHT, WIDTH)
    assert info.fps == pytest.approx(FPS, rel=1e-3)


def test_probe_folder(frame_folder):
    info = probe_video(frame_folder)
    assert info.num_frames == NUM_FRAMES
    assert (info.height, info.width) == (HEIGHT, WIDTH)
    assert info.fps is None


def test_probe_accepts_str(frame_folder):
    assert probe_video(str(frame_folder)) == probe_video(frame_folder)


# --------------------------------------------------------------------------------- errors


def _errors(video: Path) -> list[pytest.ExceptionInfo]:
    """The VideoError of probe_video, iter_frames and read_video on one input."""
    infos = []
    for call in (probe_video, lambda v: list(iter_frames(v)), read_video):
        with pytest.raises(VideoError) as excinfo:
            call(video)
        infos.append(excinfo)
    return infos


def test_missing_path(tmp_path):
    video = tmp_path / "no_such_video.mp4"
    for excinfo in _errors(video):
        assert_one_line_error(excinfo, video, "not found")


def test_random_bytes_mp4(tmp_path):
    video = tmp_path / "garbage.mp4"
    video.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, np.uint8).tobytes())
    for excinfo in _errors(video):
        assert_one_line_error(excinfo, video, "cannot open as a video")


def test_zero_byte_mp4(tmp_path):
    video = tmp_path / "empty.mp4"
    video.write_bytes(b"")
    for excinfo in _errors(video):
        assert_one_line_error(excinfo, video, "cannot open as a video")


def test_empty_folder(tmp_path):
    video = tmp_path / "empty_folder"
    video.mkdir()
    (video / "readme.txt").write_text("no frames here")
    for excinfo in _errors(video):
        assert_one_line_error(excinfo, video, "no images")


def test_corrupt_png_in_folder(tmp_path):
    video = tmp_path / "corrupt"
    video.mkdir()
    for i in range(4):
        cv2.imwrite(str(video / f"images{i + 1:04d}.png"), bar_frame(i))
    (video / "images0003.png").write_bytes(os.urandom(512))
    with pytest.raises(VideoError) as excinfo:
        read_video(video)
    assert_one_line_error(excinfo, video, "cannot decode frame image images0003.png")
    # the frames before the corrupt one still stream out before the error
    stream = iter_frames(video, chunk_size=1)
    assert decode_indices(next(stream)) == [0]
    assert decode_indices(next(stream)) == [1]
    with pytest.raises(VideoError):
        next(stream)


@pytest.fixture
def mixed_size_folder(tmp_path) -> Path:
    video = tmp_path / "mixed"
    video.mkdir()
    for i in range(4):
        height = HEIGHT + 16 if i == 2 else HEIGHT
        cv2.imwrite(str(video / f"images{i + 1:04d}.png"), bar_frame(i, height=height))
    return video


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 64])
def test_mixed_frame_sizes_without_size(mixed_size_folder, chunk_size):
    # a mismatch must be caught whatever the chunking, also across chunk boundaries
    with pytest.raises(VideoError) as excinfo:
        list(iter_frames(mixed_size_folder, chunk_size=chunk_size))
    assert_one_line_error(excinfo, mixed_size_folder, f"frame 2 is {WIDTH}x{HEIGHT + 16}")
    assert f"earlier frames {WIDTH}x{HEIGHT}" in str(excinfo.value)


def test_mixed_frame_sizes_with_size(mixed_size_folder):
    frames = read_video(mixed_size_folder, size=(HEIGHT, WIDTH))
    assert frames.shape == (4, HEIGHT, WIDTH, 3)
    assert decode_indices(frames) == [0, 1, 2, 3]


# ------------------------------------------------------------------- exactness of folders


def test_folder_equals_cv2_imread(frame_folder, tmp_path):
    # noisy content, so any channel swap, interpolation or off-by-one would show
    rng = np.random.default_rng(1)
    video = tmp_path / "noise"
    video.mkdir()
    for i in range(5):
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
        cv2.imwrite(str(video / f"frame_{i}.png"), image)
    for folder in (frame_folder, video):
        expected = np.stack([
            cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            for path in list_frame_files(folder)
        ])
        np.testing.assert_array_equal(read_video(folder), expected)
