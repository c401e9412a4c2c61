"""Importing features and keypoints made elsewhere into the cache, as stage ``features.<stream>`` or
``keypoints``.

Imported features are written exactly like computed ones: the manifest's shard plan
(:func:`~cslr_pipe.pipeline.runner.plan_shards`), one :class:`ShardWriter` per shard (atomic file,
then its commit record), one group per video holding a [T, D] dataset named like the stage, and
an ``index.json``. Trainers therefore read imported and computed features alike::

    from cslr_pipe.pipeline.imports import import_features
    count, failures = import_features(rows, "slrt/head_rgb_input/train.pkl", "CACHE", stream="rgb")

The readers (``.npy`` folders, SLRT's gzip pickles through a restricted unpickler) are in
:mod:`cslr_pipe.features.imported`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.files import inside
from cslr_pipe.features.imported import (FeatureFileError, check_features, check_keypoints, list_feature_dir, load_npy,
                                         read_slrt_features, read_slrt_keypoints, slrt_name_to_id)
from cslr_pipe.features.manifest import ManifestRow, check_id
from cslr_pipe.features.store import Provenance, ShardWriter, load_records, sha256_file, write_index
from cslr_pipe.features.video import VideoError, probe_video
from cslr_pipe.pipeline.runner import check_reusable, plan_shards, video_path

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}


class ImportResult(tuple):
    """``(imported, failures)``; unpacks as that pair.

    ``unmatched`` lists the ids of features that have no manifest row (not written).
    """

    def __new__(cls, imported: int, failures: dict[str, str], unmatched: list[str]):
        self = super().__new__(cls, (imported, failures))
        self.unmatched = unmatched
        return self

    @property
    def imported(self) -> int:
        return self[0]

    @property
    def failures(self) -> dict[str, str]:
        return self[1]


def stage_name(stream: str) -> str:
    """The stage (and dataset) name of imported features: ``features.<stream>``."""
    if not isinstance(stream, str) or check_id(stream) or "." in stream:
        raise InputError(f"stream must be a simple name such as 'rgb' or 'pose', got {stream!r}")
    return f"features.{stream}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def import_features(rows: list[ManifestRow], source: str | Path, out: str | Path, stream: str,
                    shard_size: int = 32, dtype=np.float16, compression: str = "gzip",
                    force: bool = False,
                    name_to_id: Callable[[str], str] = slrt_name_to_id) -> ImportResult:
    """Write features from ``source`` for the videos of ``rows`` into the cache ``out``.

    ``source`` is a folder of ``<id>.npy`` files or an SLRT feature file (gzip pickle; names
    mapped to ids by ``name_to_id``, by default dropping the ``train/`` ... split folder).
    Every row is imported or becomes a failure (id -> one-line reason: no features in the
    source, not a 2-D [T, D] numeric array, NaN/inf, outside the float16 range, duplicated in the
    source); the other rows import regardless. Features whose id has no row are counted and
    logged (``result.unmatched``) but not written.

    Shards that exist from another import (other source name, stream or dtype) or another shard
    plan raise CacheConflict unless ``force``; an import with the same provenance rewrites them.
    Returns ``(imported count, failures)``.
    """
    dtype = np.dtype(dtype)
    if dtype.name not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype.name}")
    source = Path(source)
    stage = stage_name(stream)
    stage_dir = inside(out, stage)
    provenance = Provenance(stage=stage, backend="imported", weights_sha256="none",
                            config={"source": source.name, "stream": stream, "dtype": dtype.name})

    wanted = {row.id for row in rows}
    failures: dict[str, str] = {}
    if source.is_dir():
        files = list_feature_dir(source)
        if not files:
            raise FeatureFileError(f"{source}: no .npy files")
        available: dict[str, object] = dict(files)  # id -> path, loaded shard by shard

        def load(video_id: str) -> np.ndarray:
            return load_npy(files[video_id])
    elif source.is_file():
        available, failures = index_entries(read_slrt_features(source, name_to_id), wanted, source)

        def load(video_id: str) -> np.ndarray:
            return available[video_id]
    else:
        raise FeatureFileError(f"{source}: no such feature file or folder")

    unmatched = sorted(set(available) - wanted)
    if unmatched:
        log.warning("%s: %d feature(s) have no manifest row and were not imported (e.g. %s)",
                    source, len(unmatched), ", ".join(unmatched[:3]))

    def prepare(row: ManifestRow) -> tuple[str | None, dict, dict]:
        reason = failures.get(row.id)
        if reason is None and row.id not in available:
            reason = f"no features for {row.id} in {source.name}"
        if reason is not None:
            return reason, {}, {}
        try:
            reason, array = _prepare(load(row.id), dtype)
        except FeatureFileError as error:
            return str(error), {}, {}
        return reason, {stage: array}, {} if array is None else {"dim": array.shape[1]}

    imported, failed = write_stage(rows, stage_dir, provenance, prepare, shard_size, compression, force)
    return ImportResult(imported, {**failures, **failed}, unmatched)


def index_entries(entries, wanted: set[str], source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """id -> array of a file's (id, array) entries, and a failure for each wanted id that several
    entries map to (SLRT names with and without their split folder may collide)."""
    available: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for video_id, array in entries:
        counts[video_id] = counts.get(video_id, 0) + 1
        available[video_id] = array
    failures = {video_id: f"{source.name}: {count} entries map to this id"
                for video_id, count in counts.items() if count > 1 and video_id in wanted}
    return available, failures


def _prepare(array: np.ndarray, dtype: np.dtype) -> tuple[str | None, np.ndarray | None]:
    """(reason, None) for unusable features, else (None, the array in ``dtype``)."""
    reason = check_features(array)
    if reason is not None:
        return reason, None
    with np.errstate(over="ignore", invalid="ignore"):
        stored = np.ascontiguousarray(array, dtype=dtype)
    if not np.isfinite(stored).all():
        peak = float(np.abs(array.astype(np.float64)).max())
        return f"features exceed the {dtype.name} range (max |value| {peak:.4g})", None
    return None, stored


def write_stage(rows: list[ManifestRow], stage_dir: Path, provenance: Provenance,
                prepare: Callable[[ManifestRow], tuple[str | None, dict, dict]], shard_size: int,
                compression: str, force: bool) -> tuple[int, dict[str, str]]:
    """Write imported results shard by shard, as the runner writes computed ones: ``prepare(row)``
    gives (reason it failed or None, arrays, group attributes). Shards made differently raise
    CacheConflict unless ``force``, before anything is written. Returns (written, failures)."""
    plan = plan_shards(rows, shard_size)
    previous = {} if force else load_records(stage_dir)
    for shard, shard_rows in enumerate(plan):  # check everything before writing anything
        if shard in previous:
            check_reusable(previous[shard], provenance, [row.id for row in shard_rows])
    written, failures = 0, {}
    for shard, shard_rows in enumerate(tqdm(plan, desc=provenance.stage, unit="shard", leave=False,
                                            disable=len(plan) < 2)):
        with ShardWriter(stage_dir, shard, [row.id for row in shard_rows], provenance, compression) as writer:
            for row in shard_rows:
                reason, arrays, group_attrs = prepare(row)
                if reason is not None:
                    writer.fail(row.id, reason)
                    failures[row.id] = _one_line(reason)
                    continue
                writer.write(row.id, arrays, group_attrs=group_attrs)
                written += 1
            writer.commit()
    write_index(stage_dir)
    return written, failures


# ---------------------------------------------------------------------------------------------
# Keypoints


KEYPOINT_FORMATS = ("slrt", "pose", "npy")


@dataclass
class KeypointImport:
    """What :func:`import_keypoints` did: videos written, failures and frame-count disagreements
    (id -> one line each), ids in the source without a manifest row (not written)."""

    imported: int
    failures: dict[str, str]
    frame_counts: dict[str, str]
    unmatched: list[str]


def source_digest(source: Path, suffix: str) -> str:
    """sha256 of an import source: the file's, or one over the names and sha256 of a folder's files."""
    if source.is_file():
        return sha256_file(source)
    digest = hashlib.sha256()
    for path in sorted(source.glob(f"*{suffix}")):
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def import_keypoints(rows: list[ManifestRow], source: str | Path, out: str | Path, fmt: str,
                     root: str | Path, shard_size: int = 32, compression: str = "gzip", force: bool = False,
                     frame_size: tuple[int, int] | None = None) -> KeypointImport:
    """Write released keypoints as the ordinary ``keypoints`` stage ([T, 133, 3] in source pixels).

    ``fmt``: ``slrt`` (SLRT's keypoint pickle, read through the restricted unpickler; names with or
    without their split folder match manifest ids), ``pose`` (a folder of ``<id>.pose``: COCO-WholeBody
    headers as they are, MediaPipe Holistic ones mapped to 133 points as the MediaPipe backend maps
    them) or ``npy`` (a folder of ``<id>.npy``). The frame size and rate come from the ``.pose`` header
    or else from the video (``root`` / row.video), or ``frame_size`` (height, width) where the video is
    not at hand. A keypoint frame count that differs from the video's is reported in ``frame_counts``
    and kept as it is. The provenance names the source and its sha256.
    """
    if fmt not in KEYPOINT_FORMATS:
        raise InputError(f"keypoint format must be one of {', '.join(KEYPOINT_FORMATS)}, got {fmt!r}")
    source, root = Path(source), Path(root)
    wanted = {row.id for row in rows}
    failures: dict[str, str] = {}
    suffix = {"pose": ".pose", "npy": ".npy"}.get(fmt, "")
    if fmt == "slrt":
        if not source.is_file():
            raise FeatureFileError(f"{source}: no such SLRT keypoint file")
        available, failures = index_entries(read_slrt_keypoints(source), wanted, source)
    else:
        if not source.is_dir():
            raise FeatureFileError(f"{source}: not a folder of <id>{suffix} files")
        available = {path.stem: path for path in sorted(source.glob(f"*{suffix}")) if path.is_file()}
        if not available:
            raise FeatureFileError(f"{source}: no {suffix} files")
    unmatched = sorted(set(available) - wanted)
    provenance = Provenance(stage="keypoints", backend=f"imported-{fmt}", weights_sha256=source_digest(source, suffix),
                            config={"source": source.name, "format": fmt})
    frame_counts: dict[str, str] = {}

    def prepare(row: ManifestRow) -> tuple[str | None, dict, dict]:
        if row.id in failures:
            return failures[row.id], {}, {}
        if row.id not in available:
            return f"no keypoints for {row.id} in {source.name}", {}, {}
        fps = height = width = None
        try:
            if fmt == "pose":
                from cslr_pipe.features.pose.pose_format import read_pose_keypoints

                keypoints, fps, width, height = read_pose_keypoints(available[row.id])
            elif fmt == "npy":
                keypoints = load_npy(available[row.id])
            else:
                keypoints = available[row.id]
        except InputError as error:
            return str(error), {}, {}
        reason = check_keypoints(keypoints)
        if reason is not None:
            return reason, {}, {}
        video = video_path(row, root)
        try:
            info = probe_video(video)
        except VideoError as error:
            info = None
            if not (width and height) and frame_size is None:
                return f"{error}: the frame size is needed (give --frame-size H W)", {}, {}
        if info is not None:
            if info.num_frames != len(keypoints):
                frame_counts[row.id] = f"{len(keypoints)} keypoint frames, the video has {info.num_frames} (kept as is)"
            height, width, fps = height or info.height, width or info.width, fps or info.fps
        height, width = (height, width) if height and width else frame_size
        return None, {"keypoints": keypoints.astype(np.float32)}, {
            "height": int(height), "width": int(width), "fps": float(fps or row.fps or 0.0),
            "num_frames": len(keypoints), "source": f"{source.name} ({fmt})"}

    imported, failed = write_stage(rows, inside(out, "keypoints"), provenance, prepare, shard_size, compression, force)
    return KeypointImport(imported, {**failures, **failed}, frame_counts, unmatched)
