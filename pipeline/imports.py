"""Importing features made elsewhere into the cache, as stage ``features.<stream>``.

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

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.files import inside
from cslr_pipe.features.imported import (FeatureFileError, check_features, list_feature_dir, load_npy,
                                         read_slrt_features, slrt_name_to_id)
from cslr_pipe.features.manifest import ManifestRow, check_id
from cslr_pipe.features.store import Provenance, ShardWriter, load_records, write_index
from cslr_pipe.pipeline.runner import check_reusable, plan_shards

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
        available = {}
        names: dict[str, int] = {}
        for video_id, array in read_slrt_features(source, name_to_id):
            names[video_id] = names.get(video_id, 0) + 1
            available[video_id] = array
        for video_id, count in names.items():
            if count > 1 and video_id in wanted:
                failures[video_id] = f"{source.name}: {count} entries map to this id"

        def load(video_id: str) -> np.ndarray:
            return available[video_id]
    else:
        raise FeatureFileError(f"{source}: no such feature file or folder")

    unmatched = sorted(set(available) - wanted)
    if unmatched:
        log.warning("%s: %d feature(s) have no manifest row and were not imported (e.g. %s)",
                    source, len(unmatched), ", ".join(unmatched[:3]))

    plan = plan_shards(rows, shard_size)
    previous = {} if force else load_records(stage_dir)
    for shard, shard_rows in enumerate(plan):  # check everything before writing anything
        if shard in previous:
            check_reusable(previous[shard], provenance, [row.id for row in shard_rows])

    imported = 0
    for shard, shard_rows in enumerate(plan):
        planned = [row.id for row in shard_rows]
        with ShardWriter(stage_dir, shard, planned, provenance, compression) as writer:
            for row in shard_rows:
                reason = failures.get(row.id)
                if reason is None and row.id not in available:
                    reason = f"no features for {row.id} in {source.name}"
                if reason is None:
                    try:
                        reason, array = _prepare(load(row.id), dtype)
                    except FeatureFileError as error:
                        reason = str(error)
                if reason is not None:
                    writer.fail(row.id, reason)
                    failures[row.id] = _one_line(reason)
                    continue
                writer.write(row.id, {stage: array},
                             group_attrs={"dim": array.shape[1]})
                imported += 1
            writer.commit()
    write_index(stage_dir)
    return ImportResult(imported, failures, unmatched)


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
