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

:func:`read_pose_keypoints` reads such files back, and other pose-format files: versions 0.1 and
0.2 (the same header; 0.1's body stores fps and the frame count as uint16, then people as 0.2
does), any point format ending in C (XYC, XYZC: ``dims`` = its length - 1 in the data array),
with a COCO-WholeBody 133 header (taken as it is) or a MediaPipe Holistic one (mapped to 133
points exactly as the MediaPipe backend maps Holistic results).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cslr_pipe.features.errors import InputError, MissingFileError
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

    def need(self, size: int) -> None:
        if self.offset + size > len(self.buffer):
            raise InputError(f"truncated .pose file: it ends at byte {len(self.buffer)}, "
                             f"{self.offset + size - len(self.buffer)} bytes short")

    def unpack(self, fmt: struct.Struct):
        self.need(fmt.size)
        values = fmt.unpack_from(self.buffer, self.offset)
        self.offset += fmt.size
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        length = self.unpack(_U16)
        self.need(length)
        raw = self.buffer[self.offset:self.offset + length]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"not a .pose file: a header string at byte {self.offset} is not "
                             f"UTF-8") from None
        self.offset += length
        return text

    def floats(self, shape: tuple[int, ...]) -> np.ndarray:
        count = math.prod(shape)
        self.need(4 * count)
        array = np.frombuffer(self.buffer, dtype="<f4", count=count, offset=self.offset)
        self.offset += 4 * count
        return array.reshape(shape).astype(np.float32)


READ_VERSIONS = (0.1, 0.2)  # the same header; the body's fps and frame count differ


def read_pose_header(buffer: bytes) -> tuple[dict, int]:
    """Parse a version-0.1 or 0.2 header: ({version, width, height, depth, components}, body offset).

    ``version`` is the stored float32 rounded to 3 decimals (0.1 or 0.2), as pose-format picks
    its reader. ``components`` is a list of dicts with ``name``, ``format``, ``points``,
    ``limbs``, ``colors``.
    """
    reader = _Reader(buffer)
    version = reader.unpack(_F32)
    if not (math.isfinite(version) and round(version, 3) in READ_VERSIONS):
        read = f"versions {' and '.join(map(str, READ_VERSIONS))} are read"
        if not (math.isfinite(version) and 0 <= version < 100):
            raise InputError(f"not a .pose file: its first 4 bytes are no pose-format version ({read})")
        raise InputError(f"unsupported .pose version {version:.3f} ({read})")
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
    header = {"version": round(version, 3), "width": width, "height": height, "depth": depth,
              "components": components}
    return header, reader.offset


def point_dims(header: dict) -> int:
    """Coordinates per point (2 for XYC, 3 for XYZC): as pose-format, the longest point format
    less its confidence. Every format must be coordinates starting with X, Y and end with C."""
    formats = [c["format"] for c in header["components"]]
    bad = sorted({f for f in formats if not (f.startswith("XY") and f.endswith("C") and len(f) >= 3)})
    if bad:
        raise InputError(f"unsupported point format {', '.join(map(repr, bad))} (formats like XYC "
                         f"or XYZC, ending in a confidence C, are read)")
    return max(map(len, formats), default=1) - 1


def read_pose_body(buffer: bytes, header: dict, offset: int
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """The body after ``offset``: (fps, data [frames, people, points, dims], confidence
    [frames, people, points]), float32, for :func:`read_pose_header`'s ``header``.

    Version 0.2 stores fps as float32 and the frame count as uint32. Version 0.1 stores both as
    uint16; as pose-format does, its frame count is taken from the bytes left (the uint16
    overflows on long videos). Either way the body must end exactly at the end of the file.
    """
    reader = _Reader(buffer)
    reader.offset = offset
    points = sum(len(c["points"]) for c in header["components"])
    dims = point_dims(header)
    if header["version"] == 0.1:
        fps, stored_frames = reader.unpack(_U16x2)
        people = reader.unpack(_U16)
        frame_bytes = 4 * people * points * (dims + 1)
        left = len(buffer) - reader.offset
        if frame_bytes:
            frames, extra = divmod(left, frame_bytes)
            if extra:
                raise InputError(f"truncated .pose file or trailing bytes: its {left}-byte body is "
                                 f"not a whole number of {frame_bytes}-byte frames")
        else:
            frames = stored_frames
    else:
        fps = reader.unpack(_F32)
        frames = reader.unpack(_U32)
        people = reader.unpack(_U16)
    data = reader.floats((frames, people, points, dims))
    confidence = reader.floats((frames, people, points))
    if reader.offset != len(buffer):
        raise InputError(f".pose file has {len(buffer) - reader.offset} unexpected trailing bytes")
    return float(fps), data, confidence


# MediaPipe Holistic files (pose-format's ``holistic_components``): these components, each
# matched to MediaPipe's landmarks by point name; POSE_WORLD_LANDMARKS (metres) is ignored.
HOLISTIC_COMPONENTS = ("POSE_LANDMARKS", "FACE_LANDMARKS", "LEFT_HAND_LANDMARKS",
                       "RIGHT_HAND_LANDMARKS")
HOLISTIC_IGNORED = ("POSE_WORLD_LANDMARKS",)
HOLISTIC_IRIS_POINTS = tuple(str(i) for i in range(468, 478))  # refined face mesh; not mapped


def _holistic_names() -> dict[str, tuple[str, ...]]:
    from cslr_pipe.features.pose.mediapipe_backend import (FACE_LANDMARK_NAMES, HAND_LANDMARK_NAMES,
                                                           POSE_LANDMARK_NAMES)
    return dict(zip(HOLISTIC_COMPONENTS, (POSE_LANDMARK_NAMES, FACE_LANDMARK_NAMES,
                                          HAND_LANDMARK_NAMES, HAND_LANDMARK_NAMES)))


def header_layout(header: dict) -> str:
    """``"wholebody"`` for a COCO-WholeBody 133 header (ours, which is pose-format's
    ``cocowholebody_components``, or 133 points named as :data:`~cslr_pipe.features.pose.
    wholebody.NAMES`), ``"holistic"`` for a MediaPipe Holistic one (full or reduced); otherwise
    an InputError that lists the components found."""
    components = header["components"]
    named = [(c["name"], tuple(c["points"])) for c in components]
    flat = tuple(point for c in components for point in c["points"])
    if named == [(c.name, c.points) for c in COMPONENTS] or flat == NAMES:
        return "wholebody"
    names = [c["name"] for c in components]
    if (set(names) & set(HOLISTIC_COMPONENTS) and len(set(names)) == len(names)
            and set(names) <= set(HOLISTIC_COMPONENTS + HOLISTIC_IGNORED)):
        return "holistic"
    found = ", ".join(f"{name} ({len(c['points'])} points)" for name, c in zip(names, components))
    raise InputError(f"not a COCO-WholeBody 133 or MediaPipe Holistic .pose file; components "
                     f"found: {found or 'none'}")


def _holistic_sources(header: dict) -> dict[str, tuple[list[int], list[int]]]:
    """For each Holistic component of ``header``: (the file's point columns, the MediaPipe landmark
    index of each), matched by name; iris points and POSE_WORLD_LANDMARKS are left out."""
    names = _holistic_names()
    sources: dict[str, tuple[list[int], list[int]]] = {}
    offset = 0
    for component in header["components"]:
        name, points = component["name"], component["points"]
        if name in names:
            index = {point: i for i, point in enumerate(names[name])}
            unknown = [p for p in points if p not in index and not (
                name == "FACE_LANDMARKS" and p in HOLISTIC_IRIS_POINTS)]
            if unknown:
                raise InputError(f"{name} has points that are not MediaPipe landmarks: "
                                 f"{', '.join(map(repr, unknown[:5]))}"
                                 f"{' ...' if len(unknown) > 5 else ''}")
            if len(set(points)) != len(points):
                raise InputError(f"{name} names a point twice")
            sources[name] = ([offset + j for j, p in enumerate(points) if p in index],
                             [index[p] for p in points if p in index])
        offset += len(points)
    return sources


def _map_holistic(sources: dict[str, tuple[list[int], list[int]]], xy: np.ndarray,
                  confidence: np.ndarray, width: int, height: int, chunk: int = 2048) -> np.ndarray:
    """[T, points, 2] + [T, points] of a Holistic file -> [T, 133, 3] by the backend's mapping:
    the file's points are scattered into full Holistic arrays (score 0 where the file has no
    point), ``chunk`` frames at a time (a full face mesh is 468 points a frame)."""
    from cslr_pipe.features.pose.mediapipe_backend import wholebody_from_holistic
    names = _holistic_names()
    frames = xy.shape[0]
    out = np.zeros((frames, NUM_KEYPOINTS, 3), np.float32)
    for start in range(0, frames, chunk):
        stop = min(start + chunk, frames)
        parts = []
        for name in HOLISTIC_COMPONENTS:
            part = np.zeros((stop - start, len(names[name]), 3), np.float32)
            if name in sources:
                source, target = sources[name]
                part[:, target, :2] = xy[start:stop, source]
                part[:, target, 2] = confidence[start:stop, source]
            parts.append(part)
        out[start:stop] = wholebody_from_holistic(*parts, width, height)
    return out


def read_pose_keypoints(path: str | Path) -> tuple[np.ndarray, float, int, int]:
    """Read a pose-format ``.pose`` file as COCO-WholeBody keypoints.

    Returns (keypoints [T, 133, 3] float32 (x, y, score) in pixels of the first person, fps,
    width, height). Versions 0.1 and 0.2 are read, with any point format ending in a confidence
    (XYC, XYZC, ...; only x and y are kept). The header decides the mapping:

    * COCO-WholeBody 133 (as :func:`write_pose_file` and pose-format's
      ``cocowholebody_components`` write it): taken as it is (score = the stored confidence);
      only a point with a non-finite value becomes (0, 0, 0).
    * MediaPipe Holistic (pose-format's ``holistic_components``: 33 pose, 468 face (+10 iris),
      21 + 21 hand landmarks, or a reduced set of them, with or without POSE_WORLD_LANDMARKS):
      mapped exactly as the MediaPipe backend maps Holistic results
      (:func:`~cslr_pipe.features.pose.mediapipe_backend.wholebody_from_holistic`), matching
      points by name; landmarks the file lacks, points outside the frame and non-finite ones get
      score 0 at (0, 0).

    A file with no person gives score 0 everywhere. Any other header, an unknown version, a
    truncated file or trailing bytes raise a one-line :class:`InputError` naming the file.
    """
    path = Path(path)
    try:
        buffer = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such .pose file") from None
    try:
        header, offset = read_pose_header(buffer)
        sources = _holistic_sources(header) if header_layout(header) == "holistic" else None
        fps, data, confidence = read_pose_body(buffer, header, offset)
        frames, people = data.shape[:2]
        if not people:
            return (np.zeros((frames, NUM_KEYPOINTS, 3), np.float32), fps, header["width"],
                    header["height"])
        xy, confidence = data[:, 0, :, :2], confidence[:, 0]
        if sources is not None:
            keypoints = _map_holistic(sources, xy, confidence, header["width"], header["height"])
        else:
            keypoints = np.concatenate([xy, confidence[..., None]], axis=-1)
            keypoints[~np.isfinite(keypoints).all(axis=-1)] = 0.0
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    return keypoints, fps, header["width"], header["height"]


read_pose_file = read_pose_keypoints  # the earlier name, kept for its callers


def export_pose_files(cache, folder: Path) -> int:
    """Write ``<id>.pose`` into ``folder`` for every video with keypoints in ``cache`` (a
    :class:`~cslr_pipe.features.store.Cache`); returns how many were written."""
    ids = cache.ids("keypoints")
    for video_id in ids:
        attrs = cache.attrs(video_id, "keypoints")
        write_pose_file(inside(folder, f"{video_id}.pose"), cache.read(video_id, ["keypoints"])["keypoints"],
                        fps=float(attrs.get("fps") or 25.0), width=int(attrs["width"]), height=int(attrs["height"]))
    return len(ids)
