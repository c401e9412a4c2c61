"""Running one stage over the shards of a manifest: the unit of work of every scheduler.

A manifest is cut into shards of ``shard_size`` videos in manifest order; shard k of every stage
holds the same videos, so stage B's shard k depends only on stage A's shard k. A Slurm array task
runs the shards k with ``k % num_shards == shard_index``; a dask graph has one task per shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
from tqdm import tqdm

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.files import inside
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.features.store import Cache, Provenance, ShardRecord, ShardWriter, load_records, write_index
from cslr_pipe.features.video import VideoError
from cslr_pipe.pipeline.stages import Stage, VideoItem


class CacheConflict(InputError, RuntimeError):
    """Cached results were made differently from what is asked now; --force recomputes them."""


@dataclass(frozen=True)
class RunOptions:
    """How to run stages; none of these change the results."""

    out: Path  # the cache folder
    root: Path  # relative video paths resolve against it
    shard_size: int = 32
    compression: str = "gzip"
    device: str = "cpu"
    force: bool = False
    progress: bool = True


@dataclass
class ShardResult:
    stage: str
    shard: int
    computed: int = 0
    reused: int = 0
    skipped: bool = False  # the whole shard was already complete
    failed: dict[str, str] = field(default_factory=dict)  # id -> "video: reason"


def plan_shards(rows: list[ManifestRow], shard_size: int) -> list[list[ManifestRow]]:
    """Consecutive groups of ``shard_size`` rows, in manifest order."""
    if shard_size < 1:
        raise InputError("shard size must be >= 1")
    return [rows[i:i + shard_size] for i in range(0, len(rows), shard_size)]


def shards_for_task(num_shards_total: int, shard_index: int, num_shards: int) -> list[int]:
    """The shards one array task runs: every shard exactly once across indices 0..num_shards-1."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise InputError(f"need 0 <= shard index ({shard_index}) < number of shards ({num_shards})")
    return list(range(shard_index, num_shards_total, num_shards))


def video_path(row: ManifestRow, root: Path) -> Path:
    path = Path(row.video)
    return path if path.is_absolute() else root / path


def check_reusable(record: ShardRecord, provenance: Provenance, planned: list[str]) -> None:
    """Raise CacheConflict when a committed shard was made with another config or plan."""
    where = f"{record.file} of stage {provenance.stage}"
    differences = provenance.differences(record.provenance)
    if differences:
        raise CacheConflict(f"{where} was computed differently ({'; '.join(differences)}); "
                            "use --force to recompute, or another --out")
    if record.planned != planned[:len(record.planned)]:  # appended rows are fine
        raise CacheConflict(f"{where} holds other videos than now planned (manifest or "
                            "--shard-size changed); use --force to recompute, or another --out")


def run_shard(stage: Stage, config: dict, rows: list[ManifestRow], shard: int,
              options: RunOptions) -> ShardResult:
    """Compute one shard of one stage; reuses what an earlier complete run already has.

    Per-video problems are recorded as failures and the shard completes with the other videos;
    the failed ones are retried on the next run.
    """
    stage_dir = inside(options.out, stage.name)
    planned = [row.id for row in rows]
    result = ShardResult(stage.name, shard)
    provenance = stage.provenance(config)
    previous = None if options.force else load_records(stage_dir).get(shard)
    if previous is not None:
        check_reusable(previous, provenance, planned)
        if not previous.failed and previous.planned == planned:
            result.skipped = True
            return result
    process = stage.build(config, options.device)
    cache = Cache(options.out) if stage.requires else None
    old = h5py.File(stage_dir / previous.file, "r") if previous else None
    try:
        with ShardWriter(stage_dir, shard, planned, provenance, options.compression) as writer:
            bar = tqdm(rows, desc=f"{stage.name} shard {shard}", unit="video",
                       disable=not options.progress, leave=False)
            for row in bar:
                if old is not None and row.id in previous.ids:
                    writer.copy_from(old, row.id)
                    result.reused += 1
                    continue
                path = video_path(row, options.root)
                try:  # outputs may stream from the video while they are written
                    output = process(VideoItem(row, path, cache, stage.requires))
                    writer.write(row.id, output.arrays, output.attrs, output.group_attrs)
                except VideoError as error:
                    reason = str(error)
                except Exception as error:  # a per-video failure must not stop the shard
                    reason = f"{path}: {type(error).__name__}: {error}"
                else:
                    result.computed += 1
                    continue
                writer.fail(row.id, reason)
                result.failed[row.id] = " ".join(reason.split())
            if old is not None:
                old.close()
                old = None
            writer.commit()
    finally:
        if old is not None:
            old.close()
        if cache is not None:
            cache.close()
        if hasattr(process, "close"):
            process.close()
    return result


def run_stage(stage: Stage, config: dict, rows: list[ManifestRow], options: RunOptions,
              shard_index: int = 0, num_shards: int = 1) -> list[ShardResult]:
    """Run this task's shards of a stage in this process, then refresh the stage's index."""
    config = stage.resolve_config(config)
    stage.warn_random_weights(config)
    for required in stage.requires:
        if not load_records(options.out / required):
            raise InputError(f"stage {stage.name} needs {required} results in {options.out}: "
                             f"run that stage first")
    plan = plan_shards(rows, options.shard_size)
    results = [run_shard(stage, config, plan[k], k, options)
               for k in shards_for_task(len(plan), shard_index, num_shards)]
    write_index(options.out / stage.name)
    return results
