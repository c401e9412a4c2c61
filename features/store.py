"""The HDF5 shard store: every stage's results, cached so they can be trusted or recomputed.

Layout (contract in docs/formats.md)::

    CACHE/<stage>/shard-00000.h5     one group per video id, datasets chunked along time
    CACHE/<stage>/shard-00000.json   the shard's commit record: ids, failures, provenance
    CACHE/<stage>/index.json         id -> shard for the whole stage, rebuilt after each run

A shard is written under a temporary name, flushed, fsynced and renamed; its JSON record is
written (atomically) only after that. A shard without its record is not trusted by anyone,
so a job killed at any moment leaves nothing half-written that a reader would use.

Read API for notebooks and later stages::

    from cslr_pipe.features.store import open_cache
    cache = open_cache("CACHE")
    cache.ids()              # ids with results in any stage
    cache.read("video-id")   # {"keypoints": array, "flow": array, ...} in physical units
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from cslr_pipe.features.codecs import decode_values
from cslr_pipe.features.errors import InputError, MissingFileError
from cslr_pipe.features.files import atomic_write_text, fsync_dir, temporary_name

SCHEMA_VERSION = 1
SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.json$")
COMPRESSIONS = ("gzip", "lzf", "none")
CHUNK_BYTES = 1 << 20  # target size of one HDF5 chunk along time


def package_version() -> str:
    try:
        return metadata.version("cslr-pipe")
    except metadata.PackageNotFoundError:
        return "unknown"


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime, inode) -> sha256, for this process


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks. Remembered while the file's size, mtime and
    inode stay the same, so a weights file hashed for provenance is not read again when its
    published name is checked (weights files run to hundreds of MB)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


@dataclass(frozen=True)
class Provenance:
    """Everything a stage's output depends on. Two runs with equal keys() may share a cache."""

    stage: str
    backend: str
    config: dict
    weights_sha256: str = "none"
    package_version: str = field(default_factory=package_version)
    schema_version: int = SCHEMA_VERSION

    def key(self) -> dict:
        """The fields that must match for cached results to be reused (not the package version)."""
        return {"stage": self.stage, "backend": self.backend, "weights_sha256": self.weights_sha256,
                "config": _canonical(self.config), "schema_version": self.schema_version}

    def differences(self, other: "Provenance") -> list[str]:
        """Human-readable list of what differs between two provenances' keys."""
        mine, theirs = self.key(), other.key()
        out = [f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if k != "config" and mine[k] != theirs[k]]
        a, b = mine["config"], theirs["config"]
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(f"config.{name}: {b.get(name)!r} -> {a.get(name)!r}")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Provenance":
        return cls(**{k: data[k] for k in ("stage", "backend", "config", "weights_sha256",
                                           "package_version", "schema_version")})


def _canonical(config: dict) -> dict:
    """Config as JSON would give it back (tuples -> lists), so comparisons survive a round trip."""
    return json.loads(json.dumps(config, sort_keys=True))


@dataclass
class ShardRecord:
    """The commit record of one shard (its JSON sidecar)."""

    shard: int
    file: str
    ids: list[str]  # ids whose results are in the file
    failed: dict[str, str]  # id -> one-line reason
    planned: list[str]  # ids the shard was asked to process, in order
    provenance: Provenance
    created: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["provenance"] = asdict(self.provenance)
        return json.dumps(data, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, path: Path) -> "ShardRecord":
        data = json.loads(path.read_text(encoding="utf-8"))
        data["provenance"] = Provenance.from_dict(data["provenance"])
        return cls(**data)


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def record_path(stage_dir: Path, shard: int) -> Path:
    return stage_dir / f"{shard_name(shard)}.json"


def load_records(stage_dir: str | Path) -> dict[int, ShardRecord]:
    """Committed shards of a stage (those whose record and data file both exist)."""
    stage_dir = Path(stage_dir)
    records = {}
    if not stage_dir.is_dir():
        return records
    for path in sorted(stage_dir.iterdir()):
        match = SHARD_PATTERN.match(path.name)
        if match and (stage_dir / f"{path.stem}.h5").is_file():
            records[int(match.group(1))] = ShardRecord.load(path)
    return records


def write_index(stage_dir: str | Path) -> dict:
    """Rebuild ``index.json`` (id -> shard file, completed and failed ids) from the records.

    Array tasks finish at the same time: one may write an index from records read before another
    committed its shard, after that other wrote its own. So the records are read again after
    writing, and the index rewritten until it describes what is on disk; the last writer's check
    comes after every commit it could have missed.
    """
    stage_dir = Path(stage_dir)
    records = load_records(stage_dir)
    while True:
        index = {"schema_version": SCHEMA_VERSION, "shards": {}, "failed": {}}
        for record in records.values():
            index["shards"].update({video_id: record.file for video_id in record.ids})
            index["failed"].update(record.failed)
        index["completed"] = sorted(index["shards"])
        atomic_write_text(stage_dir / "index.json", json.dumps(index, indent=1, ensure_ascii=False))
        now = load_records(stage_dir)
        if now == records:
            return index
        records = now


def decode(dataset: h5py.Dataset) -> np.ndarray:
    """A dataset's values in physical units (float16 is widened to float32); an ``encoding``
    attribute other than raw names the decoder (:mod:`cslr_pipe.features.codecs`)."""
    values, attrs = dataset[()], dict(dataset.attrs)
    if attrs.get("encoding", "raw") == "raw":  # stored as computed: no codec to run
        return values.astype(np.float32) if values.dtype == np.float16 else values
    return decode_values(values, attrs, f"{dataset.file.filename}:{dataset.name}")


# ---------------------------------------------------------------------------------------------
# Writing


def _filters(compression: str) -> dict:
    if compression not in COMPRESSIONS:
        raise InputError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if compression == "none":
        return {}
    options = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        options["compression_opts"] = 4
    return options


def _time_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...] | None:
    """Chunks of whole time steps, about CHUNK_BYTES each, for arrays [T, ...]."""
    if not shape or shape[0] == 0:
        return None
    frame_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    steps = int(min(shape[0], max(1, CHUNK_BYTES // frame_bytes)))
    return (steps, *shape[1:])


class ShardWriter:
    """Writes one shard of one stage; visible to readers only after :meth:`commit`.

    Use as a context manager: leaving it with an exception removes the temporary file.
    """

    def __init__(self, stage_dir: str | Path, shard: int, planned: list[str],
                 provenance: Provenance, compression: str = "gzip"):
        self.stage_dir = Path(stage_dir)
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        self.shard = shard
        self.final = self.stage_dir / f"{shard_name(shard)}.h5"
        for stale in self.stage_dir.glob(f".{self.final.name}.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run of this shard; never trusted
        self.tmp = self.stage_dir / temporary_name(self.final.name)
        self.filters = _filters(compression)
        self.record = ShardRecord(shard, self.final.name, [], {}, list(planned), provenance)
        self._file = h5py.File(self.tmp, "w")
        attrs = self._file.attrs
        for key, value in asdict(provenance).items():
            attrs[key] = json.dumps(value, sort_keys=True) if key == "config" else value
        attrs["shard"] = shard

    def write(self, video_id: str, arrays: dict[str, np.ndarray | Iterable[np.ndarray]],
              attrs: dict[str, dict] | None = None, group_attrs: dict | None = None) -> None:
        """Store one video's results: datasets named by the keys of ``arrays``.

        A value is an array, or an iterable of chunks along time (all but the first axis equal)
        that is streamed to disk so the whole never has to be in memory. ``attrs[name]`` are that
        dataset's attributes (e.g. an ``encoding`` from
        :func:`cslr_pipe.features.codecs.quantize_linear`); ``group_attrs``
        describe the video (frame size, fps ...). If anything fails, nothing of the video stays.
        """
        if video_id in self._file:
            raise ValueError(f"{video_id} written twice to {self.final.name}")
        group = self._file.create_group(video_id)
        try:
            for name, value in arrays.items():
                if isinstance(value, np.ndarray) or not isinstance(value, Iterable):
                    dataset = self._create(group, name, np.asarray(value))
                else:
                    dataset = self._stream(group, name, value)
                for key, item in (attrs or {}).get(name, {}).items():
                    dataset.attrs[key] = item
            for key, item in (group_attrs or {}).items():
                group.attrs[key] = item
        except BaseException:
            del self._file[video_id]
            raise
        self.record.ids.append(video_id)

    def _create(self, group: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
        chunks = _time_chunks(array.shape, array.dtype.itemsize)
        return group.create_dataset(name, data=array, chunks=chunks, **(self.filters if chunks else {}))

    def _stream(self, group: h5py.Group, name: str, chunks: Iterable[np.ndarray]) -> h5py.Dataset:
        dataset = None
        for chunk in chunks:
            chunk = np.asarray(chunk)
            if dataset is None:
                layout = _time_chunks((max(len(chunk), 1), *chunk.shape[1:]), chunk.dtype.itemsize)
                dataset = group.create_dataset(name, shape=(0, *chunk.shape[1:]), dtype=chunk.dtype,
                                               maxshape=(None, *chunk.shape[1:]), chunks=layout,
                                               **self.filters)
            start = dataset.shape[0]
            dataset.resize(start + len(chunk), axis=0)
            dataset[start:] = chunk
        if dataset is None:
            raise ValueError(f"{name}: no data to write")
        return dataset

    def copy_from(self, source: h5py.File, video_id: str) -> None:
        """Reuse a video's results from an earlier committed shard as they are."""
        source.copy(source[video_id], self._file, name=video_id)
        self.record.ids.append(video_id)

    def fail(self, video_id: str, reason: str) -> None:
        """Record that a video failed; the shard still commits with the others."""
        self.record.failed[video_id] = " ".join(str(reason).split())

    def commit(self) -> ShardRecord:
        """Flush, fsync, rename into place, then write the record that makes the shard visible."""
        self._file.attrs["ids"] = json.dumps(self.record.ids)
        self._file.flush()
        self._file.close()
        with open(self.tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        stale = record_path(self.stage_dir, self.shard)
        stale.unlink(missing_ok=True)  # the old record must not describe the new file
        os.replace(self.tmp, self.final)
        fsync_dir(self.stage_dir)
        self.record.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(stale, self.record.to_json())
        return self.record

    def abort(self) -> None:
        if self._file.id.valid:
            self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


# ---------------------------------------------------------------------------------------------
# Reading


class Cache:
    """Read access to every stage under a cache folder.

    File handles are opened lazily and belong to the process that opened them, so a Cache can
    be pickled into dask tasks or DataLoader workers (each reopens what it reads).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(f"{self.root}: no such cache folder")
        self._records = {stage.name: load_records(stage) for stage in sorted(self.root.iterdir())
                         if stage.is_dir()}
        self._records = {stage: records for stage, records in self._records.items() if records}
        self._where = {stage: {video_id: record.file for record in records.values()
                               for video_id in record.ids}
                       for stage, records in self._records.items()}
        self._handles: dict[Path, h5py.File] = {}
        self._pid = os.getpid()

    def stages(self) -> list[str]:
        return list(self._records)

    def ids(self, stage: str | None = None) -> list[str]:
        """Sorted ids with results in ``stage`` (or in any stage)."""
        if stage is not None:
            return sorted(self._where.get(stage, {}))
        return sorted({video_id for where in self._where.values() for video_id in where})

    def failed(self, stage: str) -> dict[str, str]:
        """id -> reason for the videos of ``stage`` that failed and have no result."""
        done = self._where.get(stage, {})
        return {video_id: reason for record in self._records.get(stage, {}).values()
                for video_id, reason in record.failed.items() if video_id not in done}

    def provenance(self, stage: str) -> Provenance:
        records = self._records.get(stage)
        if not records:
            raise KeyError(f"stage {stage!r} has no committed shards in {self.root}")
        return next(iter(records.values())).provenance

    def __contains__(self, video_id: str) -> bool:
        return any(video_id in where for where in self._where.values())

    def read(self, video_id: str, stages: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All datasets of one video, from each stage present (or from ``stages``), decoded."""
        wanted = self.stages() if stages is None else list(stages)
        out: dict[str, np.ndarray] = {}
        for stage in wanted:
            file = self._where.get(stage, {}).get(video_id)
            if file is None:
                if stages is not None:
                    raise KeyError(f"{video_id}: no {stage!r} results in {self.root}")
                continue
            group = self._open(self.root / stage / file)[video_id]
            out.update({name: decode(dataset) for name, dataset in group.items()})
        if not out:
            raise KeyError(f"{video_id}: not in cache {self.root}")
        return out

    def attrs(self, video_id: str, stage: str) -> dict:
        """The per-video attributes a stage stored (frame size, fps, ...)."""
        file = self._where[stage][video_id]
        return dict(self._open(self.root / stage / file)[video_id].attrs)

    def _open(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():  # forked: never share libhdf5 handles across processes
            self._handles, self._pid = {}, os.getpid()
        if path not in self._handles:
            self._handles[path] = h5py.File(path, "r")
        return self._handles[path]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_cache(root: str | Path) -> Cache:
    """Open a cache folder for reading (see the module docstring)."""
    return Cache(root)
