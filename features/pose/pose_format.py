"""Whole-body keypoints as pose-format ``.pose`` files (sign-language-processing/pose).

Writes the binary format of the ``pose-format`` library, version 0.2 (the newest it reads and the
one it writes), with pure numpy + struct: the library is not needed at run time. Every number is
little-endian::

    header  float32 version (0.2)
            uint16 width, height, depth (depth 0 for 2-D points)
            uint16 number of components, then for each component:
                str name, str point format ("XYC": x, y, then a confidence)
                uint16 number of points, limbs, colours
                str point name (x points), uint16 pair per limb (component-local point
                indices), uint16 RGB triple per colour
    body    float32 fps, uint32 frames, uint16 people
            float32 data [frames, people, points, 2] (x, y), then
            float32 confidence [frames, people, points]

where ``str`` is a uint16 byte count followed by that many UTF-8 bytes. The points of all
components, in component order, make up a frame's ``points`` axis.

The header is the library's own COCO-WholeBody-133 layout (``pose_format.utils.
cocowholebody133_header``, pose-format 0.15): components ``BODY`` (17 body + 6 foot points),
``FACE`` (``face-0`` ... ``face-67``), ``LEFT_HAND`` and ``RIGHT_HAND`` (each ``hand_0`` ...
``hand_20``; the component names the side). Concatenated they are exactly our 133-point order, so
the library's helpers (``detect_known_pose_format`` -> ``"coco_wholebody_133"``, shoulder and hand
normalisation) work on our files. Limbs are our :data:`~cslr_pipe.features.pose.wholebody.SKELETON`
in component-local indices; colours are a small palette that the library's visualiser cycles over
each component's points (it draws a limb in the mean colour of its two points).

A point with score 0 (not detected) is written with confidence 0, which pose-format masks.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.files import atomic_write_bytes, inside
from cslr_pipe.features.pose.wholebody import (BODY, FACE, FEET, LEFT_HAND, NAMES, NUM_KEYPOINTS,
                                               RIGHT_HAND, SKELETON)

POSE_FORMAT_VERSION = 0.2  # stored as float32; pose-format picks its reader by round(version, 3)
POINT_FORMAT = "XYC"
MAX_USHORT = 0xFFFF
MAX_FRAMES = 0xFFFFFFFF


@dataclass(frozen=True)
class PoseComponent:
    """One header component: its points are ``indices`` of our 133-point layout."""

    name: str
    indices: tuple[int, ...]
    points: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...]  # component-local point indices
    colors: tuple[tuple[int, int, int], ...]  # RGB, cycled over the points by pose-format


def _local_limbs(indices: range) -> tuple[tuple[int, int], ...]:
    """SKELETON edges with both ends inside ``indices``, as component-local indices."""
    return tuple((a - indices.start, b - indices.start) for a, b in SKELETON
                 if a in indices and b in indices)


_HAND_POINTS = tuple(f"hand_{i}" for i in range(21))
_BODY_RANGE = range(BODY.start, FEET.stop)  # 0-22: the library's BODY holds the feet too
_CENTRE, _LEFT, _RIGHT = (0, 255, 0), (0, 128, 255), (255, 128, 0)
_BODY_COLORS = tuple(_LEFT if name.startswith("left_") else _RIGHT if name.startswith("right_")
                     else _CENTRE for name in NAMES[_BODY_RANGE.start:_BODY_RANGE.stop])
_FINGER_COLORS = ((255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (255, 0, 255))
_HAND_COLORS = ((255, 255, 255),) + tuple(c for c in _FINGER_COLORS for _ in range(4))

COMPONENTS: tuple[PoseComponent, ...] = (
    PoseComponent("BODY", tuple(_BODY_RANGE), NAMES[_BODY_RANGE.start:_BODY_RANGE.stop],
                  _local_limbs(_BODY_RANGE), _BODY_COLORS),
    PoseComponent("FACE", tuple(FACE), NAMES[FACE.start:FACE.stop], _local_limbs(FACE),
                  ((255, 255, 255),)),
    PoseComponent("LEFT_HAND", tuple(LEFT_HAND), _HAND_POINTS, _local_limbs(LEFT_HAND), _HAND_COLORS),
    PoseComponent("RIGHT_HAND", tuple(RIGHT_HAND), _HAND_POINTS, _local_limbs(RIGHT_HAND),
                  _HAND_COLORS),
)
# The components cover 0..132 in order, so a frame's points need no reordering.
assert tuple(i for c in COMPONENTS for i in c.indices) == tuple(range(NUM_KEYPOINTS))

_F32 = struct.Struct("<f")
_U16 = struct.Struct("<H")
_U16x2 = struct.Struct("<HH")
_U16x3 = struct.Struct("<HHH")
_U32 = struct.Struct("<I")


def _pack_str(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_USHORT:
        raise ValueError(f"string too long for a .pose header: {text[:40]!r}...")
    return _U16.pack(len(data)) + data


def _dimension(value, name: str) -> int:
    """Width/height as pose-format stores them: ceil'd to an integer in 0..65535."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    size = math.ceil(number)
    if not 0 <= size <= MAX_USHORT:
        raise ValueError(f"{name} must be between 0 and {MAX_USHORT}, got {value!r}")
    return size


def header_bytes(width, height, components: tuple[PoseComponent, ...] = COMPONENTS) -> bytes:
    """The version-0.2 header for 2-D (XYC) points of ``components`` in a ``width`` x ``height`` frame."""
    parts = [_F32.pack(POSE_FORMAT_VERSION),
             _U16x3.pack(_dimension(width, "width"), _dimension(height, "height"), 0),
             _U16.pack(len(components))]
    for component in components:
        parts += [_pack_str(component.name), _pack_str(POINT_FORMAT),
                  _U16x3.pack(len(component.points), len(component.limbs), len(component.colors))]
        parts += [_pack_str(point) for point in component.points]
        parts += [_U16x2.pack(a, b) for a, b in component.limbs]
        parts += [_U16x3.pack(*color) for color in component.colors]
    return b"".join(parts)


def pose_bytes(keypoints, fps: float, width, height) -> bytes:
    """The whole ``.pose`` file for ``keypoints`` [T, 133, 3] (x, y, score) as bytes (one person).

    ``fps`` is stored as float32. Points with score <= 0, or with a non-finite score, get
    confidence 0 (masked by pose-format); non-finite coordinates are written as 0 with confidence 0.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be [T, {NUM_KEYPOINTS}, 3] (x, y, score), "
                         f"got shape {keypoints.shape}")
    frames = keypoints.shape[0]
    if frames > MAX_FRAMES:
        raise ValueError(f"too many frames for a .pose file: {frames}")
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be a positive number, got {fps!r}")

    xy = keypoints[..., :2]
    score = keypoints[..., 2]
    finite_xy = np.isfinite(xy).all(axis=-1)
    valid = finite_xy & np.isfinite(score) & (score > 0)
    confidence = np.where(valid, score, np.float32(0)).astype("<f4")
    data = np.where(finite_xy[..., None], xy, np.float32(0)).astype("<f4")

    body = [_F32.pack(fps), _U32.pack(frames), _U16.pack(1),
            data[:, None].tobytes(), confidence[:, None].tobytes()]  # [T, people=1, ...]
    return header_bytes(width, height) + b"".join(body)


def write_pose_file(path: str | Path, keypoints, fps: float, width, height) -> Path:
    """Write ``keypoints`` [T, 133, 3] (x, y, score) in frame pixels as a pose-format ``.pose`` file.

    ``width``/``height`` are the frame size in pixels (0..65535). The write is atomic: readers see
    the old file or the new one. Returns the path.
    """
    path = Path(path)
    atomic_write_bytes(path, pose_bytes(keypoints, fps, width, height))
    return path


class _Reader:
    def __init__(self, buffer: bytes):
        self.buffer = buffer
        self.offset = 0

    def unpack(self, fmt: struct.Struct):
        if self.offset + fmt.size > len(self.buffer):
            raise InputError("truncated .pose file")
        values = fmt.unpack_from(self.buffer, self.offset)
        self.offset += fmt.size
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        length = self.unpack(_U16)
        if self.offset + length > len(self.buffer):
            raise InputError("truncated .pose file")
        text = self.buffer[self.offset:self.offset + length].decode("utf-8")
        self.offset += length
        return text

    def floats(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        if self.offset + 4 * count > len(self.buffer):
            raise InputError("truncated .pose file")
        array = np.frombuffer(self.buffer, dtype="<f4", count=count, offset=self.offset)
        self.offset += 4 * count
        return array.reshape(shape).astype(np.float32)


def read_pose_header(buffer: bytes) -> tuple[dict, int]:
    """Parse a version-0.2 header: ({version, width, height, depth, components}, body offset).

    ``components`` is a list of dicts with ``name``, ``format``, ``points``, ``limbs``, ``colors``.
    """
    reader = _Reader(buffer)
    version = reader.unpack(_F32)
    if round(version, 3) != POSE_FORMAT_VERSION:
        raise InputError(f"unsupported .pose version {version:.3f} (only {POSE_FORMAT_VERSION} is read)")
    width, height, depth = reader.unpack(_U16x3)
    components = []
    for _ in range(reader.unpack(_U16)):
        name, point_format = reader.string(), reader.string()
        n_points, n_limbs, n_colors = reader.unpack(_U16x3)
        points = [reader.string() for _ in range(n_points)]
        limbs = [reader.unpack(_U16x2) for _ in range(n_limbs)]
        colors = [reader.unpack(_U16x3) for _ in range(n_colors)]
        components.append({"name": name, "format": point_format, "points": points,
                           "limbs": limbs, "colors": colors})
    header = {"version": version, "width": width, "height": height, "depth": depth,
              "components": components}
    return header, reader.offset


def read_pose_file(path: str | Path) -> tuple[np.ndarray, float, int, int]:
    """Read a 133-point 2-D ``.pose`` file (version 0.2): (keypoints [T, 133, 3] float32, fps, width, height).

    A minimal reader of :func:`write_pose_file`'s output (and of other XYC files with 133 points
    in our order, such as the library's COCO-WholeBody ones): keypoints are (x, y, confidence) of
    the first person; ``fps`` is the stored float32 value.
    """
    buffer = Path(path).read_bytes()
    header, offset = read_pose_header(buffer)
    formats = {c["format"] for c in header["components"]}
    if formats != {POINT_FORMAT}:
        raise InputError(f"only {POINT_FORMAT} points are read, the file has {sorted(formats)}")
    n_points = sum(len(c["points"]) for c in header["components"])
    if n_points != NUM_KEYPOINTS:
        raise InputError(f"expected {NUM_KEYPOINTS} points, the file has {n_points}")

    reader = _Reader(buffer)
    reader.offset = offset
    fps = reader.unpack(_F32)
    frames = reader.unpack(_U32)
    people = reader.unpack(_U16)
    data = reader.floats((frames, people, n_points, 2))
    confidence = reader.floats((frames, people, n_points))
    if reader.offset != len(buffer):
        raise InputError(f".pose file has {len(buffer) - reader.offset} unexpected trailing bytes")
    keypoints = np.zeros((frames, n_points, 3), dtype=np.float32)
    if people:
        keypoints[..., :2] = data[:, 0]
        keypoints[..., 2] = confidence[:, 0]
    return keypoints, float(fps), header["width"], header["height"]


def export_pose_files(cache, folder: Path) -> int:
    """Write ``<id>.pose`` into ``folder`` for every video with keypoints in ``cache`` (a
    :class:`~cslr_pipe.features.store.Cache`); returns how many were written."""
    ids = cache.ids("keypoints")
    for video_id in ids:
        attrs = cache.attrs(video_id, "keypoints")
        write_pose_file(inside(folder, f"{video_id}.pose"), cache.read(video_id, ["keypoints"])["keypoints"],
                        fps=float(attrs.get("fps") or 25.0), width=int(attrs["width"]), height=int(attrs["height"]))
    return len(ids)
