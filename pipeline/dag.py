"""Workflows: a YAML list of stages run as a dask graph, one task per (stage, shard).

A workflow file (see workflows/demo.yaml)::

    manifest: ../data_manifests/phoenix2014.jsonl   # relative to this file
    out: ../cache/phoenix2014
    shard_size: 32
    compression: gzip
    device: auto
    stages:                      # in any order; dependencies come from each stage's `requires`
      probe: {}
      my_stage: {stage: "mypackage.stages:my_stage", option: 1}
    cluster:                     # local (default) | slurm; `--scheduler ADDRESS` uses a running one
      kind: local
      n_workers: 2
    train: {model: ctc, streams: [features.rgb], epochs: 30}   # optional, runs after the stages

Task (stage B, shard k) depends on (stage A, shard k) for every A that B requires and that the
workflow also runs; a required stage that the workflow does not run must already be in the cache.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml
from tqdm import tqdm

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.features.quiet import is_verbose
from cslr_pipe.features.store import load_records, write_index
from cslr_pipe.pipeline.runner import RunOptions, ShardResult, plan_shards, run_shard
from cslr_pipe.pipeline.stages import Stage, get_stage

WORKFLOW_KEYS = {"manifest", "out", "root", "shard_size", "compression", "device", "stages", "cluster", "train"}


@dataclass
class Workflow:
    """A parsed workflow file; paths are absolute."""

    stages: dict[str, dict]  # stage name (or import path) -> config
    manifest: Path | None = None
    out: Path | None = None
    root: Path | None = None
    shard_size: int = 32
    compression: str = "gzip"
    device: str = "auto"
    cluster: dict = field(default_factory=lambda: {"kind": "local"})
    train: dict | None = None  # TrainConfig fields: after the stages, train on the cache


def load_workflow(path: str | Path) -> Workflow:
    """Read a workflow YAML (safe loader); relative paths resolve against its folder."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise InputError(f"{path}: a workflow is a mapping with a non-empty 'stages' mapping")
    unknown = sorted(set(data) - WORKFLOW_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if "train" in data["stages"]:  # `run --stage train` and `submit`'s train job mean the train section
        raise InputError(f"{path}: a stage may not be called 'train' (the train section goes beside 'stages')")
    for key in ("manifest", "out", "root"):
        if data.get(key) is not None:
            data[key] = (path.parent / data[key]).resolve()
    data["stages"] = {name: dict(config or {}) for name, config in data["stages"].items()}
    return Workflow(**data)


def ordered_stages(workflow: Workflow) -> list[tuple[Stage, dict]]:
    """(stage, resolved config) in an order where every stage follows the ones it requires."""
    entries = {}
    for name, config in workflow.stages.items():
        config = dict(config)
        stage = get_stage(config.pop("stage", name))
        entries[stage.name] = (stage, stage.resolve_config(config))
    ordered: list[tuple[Stage, dict]] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if any(stage.name == name for stage, _ in ordered):
            return
        if name in visiting:
            raise InputError(f"workflow stages depend on each other in a cycle through {name!r}")
        visiting.add(name)
        stage, _ = entries[name]
        for required in stage.requires:
            if required in entries:
                visit(required)
        visiting.discard(name)
        ordered.append(entries[name])

    for name in entries:
        visit(name)
    return ordered


def build_graph(workflow: Workflow, rows: list[ManifestRow], options: RunOptions) -> dict:
    """The dask graph: key (stage, shard) -> delayed run_shard call, with shard-wise dependencies."""
    from dask import delayed

    stages = ordered_stages(workflow)
    in_workflow = {stage.name for stage, _ in stages}
    for stage, _ in stages:
        for required in stage.requires:
            if required not in in_workflow and not load_records(options.out / required):
                raise InputError(f"stage {stage.name} requires {required}, which is neither in "
                                 f"the workflow nor in {options.out}")
    plan = plan_shards(rows, options.shard_size)
    tasks: dict[tuple[str, int], object] = {}
    for stage, config in stages:
        stage.warn_random_weights(config)
        for shard, shard_rows in enumerate(plan):
            after = [tasks[(required, shard)] for required in stage.requires if required in in_workflow]
            tasks[(stage.name, shard)] = delayed(_run_after, pure=False, name=f"{stage.name}-{shard}")(
                stage, config, shard_rows, shard, options, after)
    return tasks


def _run_after(stage: Stage, config: dict, rows: list[ManifestRow], shard: int,
               options: RunOptions, _after: list) -> ShardResult:
    return run_shard(stage, config, rows, shard, options)


@contextlib.contextmanager
def connect(cluster: dict, scheduler: str | None = None) -> Iterator[object]:
    """A dask Client for the workflow's cluster spec, or for a running scheduler's address."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    spec = dict(cluster)
    kind = spec.pop("kind", "local")
    if kind == "local":
        spec.setdefault("n_workers", 2)
        spec.setdefault("threads_per_worker", 1)
        if spec.setdefault("dashboard_address", None) is None:
            # without a dashboard the scheduler still serves HTTP, by default on port 8787 (and
            # warns when that is taken): any free local port will do
            spec["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0", **spec.get("scheduler_kwargs", {})}
        spec.setdefault("silence_logs", False if is_verbose() else logging.ERROR)  # nanny warnings
        with LocalCluster(**spec) as local, Client(local) as client:
            yield client
    elif kind == "slurm":
        jobs = spec.pop("jobs", 1)
        with slurm_cluster(spec) as slurm, Client(slurm) as client:
            slurm.scale(jobs=jobs)
            yield client
    else:
        raise InputError(f"cluster kind must be 'local' or 'slurm', got {kind!r}")


def slurm_cluster(spec: dict):
    """A dask-jobqueue SLURMCluster from a workflow's cluster options (without kind and jobs)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise InputError("cluster kind 'slurm' needs dask-jobqueue: pip install 'cslr-pipe[slurm]'") from None
    return SLURMCluster(**spec)


def stage_totals(keys: list[tuple[str, int]], shard_sizes: list[int]) -> dict[str, int]:
    """Videos per stage over the (stage, shard) tasks, stages in the order they first appear."""
    totals: dict[str, int] = {}
    for stage, shard in keys:
        totals[stage] = totals.get(stage, 0) + shard_sizes[shard]
    return totals


class StageProgress:
    """One progress bar per stage, in videos: each finished (stage, shard) task adds its shard's.

    Bars need a terminal; in a log file (a batch job's) a line says when each stage is complete.
    """

    BAR_FORMAT = "{desc}  {bar:20} {n_fmt}/{total_fmt} videos {rate_noinv_fmt}  {elapsed}<{remaining}"

    def __init__(self, keys: list[tuple[str, int]], shard_sizes: list[int], disable: bool = False):
        self.shard_sizes = shard_sizes
        self.totals = stage_totals(keys, shard_sizes)
        self.done = dict.fromkeys(self.totals, 0)
        self.lines = not disable and not sys.stderr.isatty()
        self.started = time.perf_counter()
        width = max(map(len, self.totals), default=0)
        self.bars = {stage: tqdm(total=total, desc=stage.ljust(width), unit=" videos", position=position,
                                 bar_format=self.BAR_FORMAT, disable=disable or self.lines)
                     for position, (stage, total) in enumerate(self.totals.items())}

    def finished(self, key: tuple[str, int]) -> None:
        stage, shard = key
        self.bars[stage].update(self.shard_sizes[shard])
        self.done[stage] += self.shard_sizes[shard]
        if self.lines and self.done[stage] == self.totals[stage]:
            elapsed = tqdm.format_interval(time.perf_counter() - self.started)
            print(f"{stage}: {self.totals[stage]} videos, complete {elapsed} after the start", file=sys.stderr,
                  flush=True)

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *_) -> None:
        for bar in self.bars.values():
            bar.close()


def run_workflow(workflow: Workflow, rows: list[ManifestRow], options: RunOptions,
                 scheduler: str | None = None, progress: bool = True) -> list[ShardResult]:
    """Run every (stage, shard) task on dask, a progress bar per stage; one result per task."""
    from dask.distributed import as_completed

    tasks = build_graph(workflow, rows, options)
    keys = list(tasks)
    shard_sizes = [len(shard) for shard in plan_shards(rows, options.shard_size)]
    with (connect(workflow.cluster, scheduler) as client,
          StageProgress(keys, shard_sizes, disable=not progress) as bars):
        futures = client.compute([tasks[key] for key in keys])
        key_of = {future.key: key for future, key in zip(futures, keys)}
        results = {}
        for future in as_completed(futures):
            key = key_of[future.key]
            results[key] = future.result()
            bars.finished(key)
    for stage in dict.fromkeys(stage for stage, _ in keys):
        write_index(options.out / stage)
    return [results[key] for key in keys]


@dataclass
class TrainingReport:
    """What :func:`train_after_stages` did: printable lines, the best dev WER, the test score."""

    lines: list[str]
    best_dev_wer: float
    test: object  # WERDetails of the best checkpoint on test
    run_dir: Path


def train_after_stages(workflow: Workflow, manifest: Path, vocabulary: list[str], cache: Path,
                       log=print, progress: bool = True, resume: bool = False) -> TrainingReport:
    """The workflow's `train` section: train on the cache (into CACHE/runs/MODEL, continuing from its
    last.pt if ``resume`` and there is one), then score the best model on test."""
    from cslr_pipe.training.evaluation import evaluate_checkpoint
    from cslr_pipe.training.trainer import Run, TrainConfig, train

    options = {"device": workflow.device, **workflow.train}
    config = TrainConfig.for_model(options.pop("model", "ctc"), **options)
    run_dir = cache / "runs" / config.model
    summary = train(config, Run(manifest, vocabulary, cache, run_dir), log=log, progress=progress,
                    resume=resume)
    evaluation = evaluate_checkpoint(Path(summary["checkpoint"]), manifest, cache, "test", out=run_dir,
                                     device=workflow.device)
    lines = [f"train: best dev WER {100 * summary['best_dev_wer']:.1f}% [plain WER], curves {run_dir / 'curves.png'}",
             *evaluation.lines]
    return TrainingReport(lines, summary["best_dev_wer"], evaluation.first, run_dir)
