"""The `cslr-pipe` command line: the options commands share, then one function per command. How a
command ends (exit codes, one-line input errors, tracebacks for bugs) is pipeline/errors.py.

Torch, OpenCV, h5py and dask are imported inside the commands that use them, so that
`cslr-pipe --help` and every `cslr-pipe COMMAND --help` answer at once.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.manifest import (BadRow, build_vocabulary, find_vocabulary, read_manifest, write_manifest,
                                         write_vocabulary)
from cslr_pipe.pipeline.errors import Failed, fail_input, fail_usage, handle_errors, report

if TYPE_CHECKING:
    from cslr_pipe.pipeline.runner import ShardResult

HEATMAP_PRESETS = ("signvtcl", "slrt-phoenix", "slrt-csl-daily")  # features.heatmaps.PRESETS (torch-free help)


def stage_options(function):
    """Options shared by every stage command (one stage over a manifest, or one array task)."""
    options = [
        click.option("--manifest", "manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Manifest (JSON Lines) of the videos to process."),
        click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Cache folder; results go to OUT/<stage>/."),
        click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder that relative video paths start from [default: the manifest's folder]."),
        click.option("--shard-size", default=32, show_default=True, type=click.IntRange(min=1),
                     help="Videos per shard (keep it equal across stages and re-runs)."),
        click.option("--shard-index", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Run only shards k with k % num-shards == shard-index (Slurm: $SLURM_ARRAY_TASK_ID)."),
        click.option("--num-shards", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Number of array tasks sharing the work (Slurm: $SLURM_ARRAY_TASK_COUNT)."),
        click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip",
                     show_default=True, help="HDF5 compression of the shards."),
        click.option("--force", is_flag=True, help="Recompute shards that are already complete."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    return with_options(function, options)


def with_options(function, options: list):
    """``function`` decorated with each of ``options``, the first shown first in --help."""
    for option in reversed(options):
        function = option(function)
    return function


def import_options(source_help: str):
    """Options of the import commands: the manifest, what to import (--from), the cache, the shard size."""
    options = [
        click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
                     help="Manifest of the videos."),
        click.option("--from", "source", required=True, type=click.Path(exists=True, path_type=Path),
                     help=source_help),
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Cache folder."),
        click.option("--shard-size", default=32, show_default=True, type=click.IntRange(min=1),
                     help="Videos per shard (equal to the other stages of this cache)."),
    ]
    return lambda function: with_options(function, options)


weights_option = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                              help="Weights file of the backend [default: its usual name in the "
                                   "torch hub cache].")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where models run; auto = CUDA when present.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cslr-pipe")
@click.option("--verbose", is_flag=True,
              help="Show every library's log lines (MediaPipe, dask) [env: CSLR_PIPE_VERBOSE=1].")
def main(verbose: bool) -> None:
    """Preprocessing, feature caching and trainers for continuous sign language recognition.

    Start with `cslr-pipe demo`; see `cslr-pipe COMMAND --help` for each stage.
    """
    if verbose:  # through the environment, so that worker processes see it too
        from cslr_pipe.features.quiet import set_verbose

        set_verbose(True)


@main.command("manifest")
@click.argument("corpus", type=click.Choice(["phoenix2014", "phoenix2014t", "csl-daily"]))
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The corpus folder as distributed (with annotations/ or video_map.txt).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest file to write (JSON Lines).")
@click.option("--vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Vocabulary file to write [default: OUT with suffix .vocab.json].")
@click.option("--frames", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of the frame folders, where it is not the corpus' usual place.")
@click.option("--check-files", is_flag=True, help="Report rows whose frames are not on disk.")
@handle_errors
def manifest_command(corpus: str, root: Path, out: Path, vocab: Path | None, frames: Path | None,
                     check_files: bool) -> None:
    """Write a manifest and a gloss vocabulary from a corpus' official annotation files.

    Video paths in the manifest are written relative to the manifest's folder.
    """
    from cslr_pipe.pipeline.corpora import READERS

    bad_rows: list[BadRow] = []
    rows = READERS[corpus](root, bad_rows, check_files=check_files, frames=frames)
    base = out.resolve().parent
    rows = [replace(row, video=Path(os.path.relpath((root / row.video).resolve(), base)).as_posix())
            for row in rows]
    write_manifest(rows, out)
    vocab = vocab or out.with_suffix(".vocab.json")
    vocabulary = build_vocabulary(rows)
    write_vocabulary(vocabulary, vocab)
    counts = {split: sum(row.split == split for row in rows) for split in ("train", "dev", "test")}
    click.echo(f"{out}: {len(rows)} videos ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
               f"{vocab}: {len(vocabulary) - 1} glosses + blank")
    for bad in bad_rows:
        click.echo(f"bad row: {bad}", err=True)
    if bad_rows:
        raise Failed(f"{len(bad_rows)} row(s) left out (listed above)")


@main.command()
@stage_options
@handle_errors
def probe(**common) -> None:
    """Decode every video once: frame count, size, fps and mean colour per frame (stage `probe`).

    Run it first on a new corpus: it finds unreadable videos before the expensive stages do.
    """
    run_stage_command("probe", {}, **common)


def open_workflow(workflow_file: Path, manifest: Path | None, out: Path | None):
    """The workflow, and its manifest and output folder (the options' if given, else the file's)."""
    import yaml

    from cslr_pipe.pipeline.dag import load_workflow

    try:
        workflow = load_workflow(workflow_file)
    except yaml.YAMLError as error:
        fail_input(yaml_error_line(workflow_file, error))
    manifest, out = manifest or workflow.manifest, out or workflow.out
    if manifest is None or out is None:
        fail_usage("the workflow names no manifest/out: pass --manifest and --out")
    return workflow, manifest, out


@main.command("extract-keypoints")
@stage_options
@click.option("--backend", default="mediapipe", show_default=True,
              help="Pose backend: mediapipe (offline default, no weights), hrnet (HRNet-w48 "
                   "COCO-WholeBody, needs its mmpose checkpoint), mmpose (needs mmpose installed).")
@weights_option
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="Backend option, repeatable (e.g. flip_test=false for hrnet).")
@click.option("--export-pose", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Also write pose-format .pose files (one per video) into this folder.")
@device_option
@handle_errors
def extract_keypoints(backend: str, weights: Path | None, backend_options: tuple[str, ...],
                      export_dir: Path | None, device: str, **common) -> None:
    """Whole-body keypoints [T, 133, 3] (x, y, score in source pixels) per video (stage `keypoints`)."""
    config = {"backend": backend, "weights": str(weights) if weights else None,
              "options": parse_options(backend_options)}
    try:
        run_stage_command("keypoints", config, device=device, **common)
    finally:
        if export_dir is not None and (common["out"] / "keypoints").is_dir():
            from cslr_pipe.features.pose.pose_format import export_pose_files
            from cslr_pipe.features.store import open_cache

            written = export_pose_files(open_cache(common["out"]), export_dir)
            click.echo(f"pose-format: {written} .pose files in {export_dir}")


@main.command("extract-flow")
@stage_options
@click.option("--backend", default="dis", show_default=True,
              help="Flow backend: dis (OpenCV DIS, offline default), farneback, raft-small, "
                   "raft-large (torchvision RAFT; needs its weights file).")
@weights_option
@click.option("--size", type=(int, int), default=(224, 224), show_default=True, metavar="H W",
              help="Frames are resized to this before flow is computed.")
@click.option("--storage", type=click.Choice(["uint8", "float16", "rgb"]), default="uint8",
              show_default=True, help="How flow is stored (docs/formats.md); read back in pixels.")
@click.option("--bound", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Flow is clipped to +-bound pixels for uint8 and rgb storage.")
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="Backend option, repeatable (e.g. num_updates=6 for RAFT, preset=fast for DIS).")
@device_option
@handle_errors
def extract_flow(backend: str, weights: Path | None, size: tuple[int, int], storage: str, bound: float,
                 backend_options: tuple[str, ...], device: str, **common) -> None:
    """Optical flow between consecutive frames, T-1 fields per video (stage `flow`)."""
    config = {"backend": backend, "weights": str(weights) if weights else None, "size": list(size),
              "storage": storage, "bound": bound, "options": parse_options(backend_options)}
    run_stage_command("flow", config, device=device, **common)


@main.command("cache-features")
@stage_options
@click.option("--stream", type=click.Choice(["rgb", "keypoint", "flow"]), required=True,
              help="rgb: the frames; keypoint: 79 heatmaps rendered from the keypoints stage; "
                   "flow: the flow stage.")
@click.option("--backbone", default="resnet18", show_default=True,
              help="resnet18, resnet34 (per frame, 512-d) or s3d (clips, 1024-d, rgb only).")
@click.option("--weights", default=None,
              help="Weights file (torchvision's published file, or a CSLR checkpoint); 'none' = "
                   "random initialisation (recorded and warned about: fine for the demo, useless "
                   "for research) [default: the published file in the torch hub cache].")
@click.option("--backbone-option", "backbone_options", multiple=True, metavar="KEY=VALUE",
              help="Backbone option, repeatable (e.g. resize=128, crop=112; window=64 for s3d).")
@click.option("--heatmap-preset", type=click.Choice(HEATMAP_PRESETS), default=None,
              help="keypoint stream: render its heatmaps as this preset (see render-heatmaps --preset) "
                   "[default: the default rendering, = signvtcl].")
@device_option
@handle_errors
def cache_features(stream: str, backbone: str, weights: str | None, backbone_options: tuple[str, ...],
                   heatmap_preset: str | None, device: str, **common) -> None:
    """Features [T', D] of a frozen backbone over one stream (stage `features.<stream>`)."""
    config = {"backbone": backbone, "weights": weights, "options": parse_options(backbone_options)}
    if heatmap_preset is not None:
        if stream != "keypoint":
            fail_usage("--heatmap-preset is an option of --stream keypoint only")
        config["heatmap_preset"] = heatmap_preset
    run_stage_command(f"features.{stream}", config, device=device, **common)


@main.command("import-features")
@import_options("A folder of <id>.npy files [T, D], or a feature file written by SLRT's extractor "
                "(gzip pickle of dicts with 'name' and 'sign').")
@click.option("--stream", required=True, help="Stream name; features go to stage features.<stream>.")
@click.option("--force", is_flag=True, help="Overwrite shards made by another import.")
@handle_errors
def import_features_command(manifest: Path, source: Path, out: Path, stream: str, shard_size: int,
                            force: bool) -> None:
    """Bring your own features into the cache, so the trainers read them like computed ones."""
    from cslr_pipe.pipeline.imports import import_features

    rows, bad_rows = read_rows(manifest)
    result = import_features(rows, source, out, stream, shard_size=shard_size, force=force)
    finish_import(f"features.{stream}", result.failures, bad_rows,
                  f"{result.imported} imported, {len(result.failures)} failed, "
                  f"{len(result.unmatched)} in the source without a manifest row (not imported)")


@main.command("import-keypoints")
@import_options("slrt: SLRT's keypoint file (a pickle: video name -> [T, 133, 3]); pose: a folder of <id>.pose "
                "files (COCO-WholeBody or MediaPipe Holistic); npy: a folder of <id>.npy [T, 133, 3].")
@click.option("--format", "fmt", required=True, type=click.Choice(["slrt", "pose", "npy"]),
              help="What --from holds.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder that relative video paths start from [default: the manifest's folder].")
@click.option("--frame-size", type=(int, int), default=None, metavar="H W",
              help="Frame size where a video is not at hand (otherwise read from the video or the .pose header).")
@click.option("--force", is_flag=True, help="Overwrite keypoint shards made otherwise (extracted, or another import).")
@handle_errors
def import_keypoints_command(manifest: Path, source: Path, fmt: str, out: Path, root: Path | None,
                             frame_size: tuple[int, int] | None, shard_size: int, force: bool) -> None:
    """Bring released keypoints into the cache as the `keypoints` stage: everything downstream
    (heatmaps, cache-features --stream keypoint, inspect, training) reads them like extracted ones."""
    from cslr_pipe.pipeline.imports import import_keypoints

    rows, bad_rows = read_rows(manifest)
    result = import_keypoints(rows, source, out, fmt, root or manifest.parent, shard_size=shard_size,
                              force=force, frame_size=frame_size)
    for video_id, note in result.frame_counts.items():
        click.echo(f"frame count: {video_id}: {note}", err=True)
    finish_import("keypoints", result.failures, bad_rows,
                  f"{result.imported} imported from {source} ({fmt}), {len(result.failures)} failed, "
                  f"{len(result.frame_counts)} with another frame count than their video, "
                  f"{len(result.unmatched)} in the source without a manifest row (not imported"
                  + (f", e.g. {', '.join(result.unmatched[:3])})" if result.unmatched else ")"))


@main.command("export-keypoints")
@click.option("--cache", "cache_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Cache holding a keypoints stage (extracted or imported).")
@click.option("--format", "fmt", required=True, type=click.Choice(["slrt", "pose"]),
              help="slrt: one pickle, video name -> [T, 133, 3], as SLRT's loaders read it; pose: one "
                   "pose-format .pose file per video.")
@click.option("--to", "target", required=True, type=click.Path(path_type=Path),
              help="The .pkl file (slrt) or the folder (pose) to write.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="slrt: name each video SPLIT/ID as SLRT does (without it: ID).")
@handle_errors
def export_keypoints(cache_dir: Path, fmt: str, target: Path, manifest: Path | None) -> None:
    """Write a cache's keypoints for other tools: SLRT's keypoint file or pose-format .pose files
    (`import-keypoints` reads both back)."""
    from cslr_pipe.features.store import open_cache

    cache = open_cache(cache_dir)
    if "keypoints" not in cache.stages():
        fail_input(f"{cache_dir}: no keypoints stage to export")
    if fmt == "pose":
        from cslr_pipe.features.pose.pose_format import export_pose_files

        click.echo(f"keypoints: {export_pose_files(cache, target)} .pose files in {target}")
        return
    from cslr_pipe.features.imported import write_slrt_keypoints

    splits = {row.id: row.split for row in read_manifest(manifest)} if manifest else {}
    ids = cache.ids("keypoints")
    write_slrt_keypoints(target, {f"{splits[i]}/{i}" if i in splits else i: cache.read(i, ["keypoints"])["keypoints"]
                                  for i in ids})
    click.echo(f"keypoints: {len(ids)} videos in {target} (SLRT's keypoint file)")


@main.command("render-heatmaps")
@stage_options
@click.option("--preset", type=click.Choice(HEATMAP_PRESETS), default=None,
              help="Render as named (docs/formats.md): signvtcl = sigma 4 drawn at 112 (the default "
                   "rendering); slrt-phoenix / slrt-csl-daily = SLRT TwoStream-SLR's eval-time maps "
                   "for PHOENIX (260x210 frames) / CSL-Daily (512x512), corner blobs of undetected "
                   "points included.")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Gaussian standard deviation in pixels of the grid drawn on [default: 4.0, or the preset's].")
@click.option("--size", type=(int, int), default=None, metavar="H W",
              help="Heatmap height and width [default: 112 112, or the preset's].")
@click.option("--antialias/--no-antialias", default=None,
              help="Antialias the resize of a preset drawn at another size [default: on, as torchvision "
                   ">= 0.17's Resize; off = SLRT's pinned torchvision 0.10].")
@click.option("--points", type=click.Choice(["twostream", "wholebody"]), default="twostream",
              show_default=True, help="Channel order of the 79 points (see docs/formats.md).")
@handle_errors
def render_heatmaps(preset: str | None, sigma: float | None, size: tuple[int, int] | None, antialias: bool | None,
                    points: str, **common) -> None:
    """Materialise 79-channel Gaussian heatmaps from the keypoints (stage `heatmaps`, uint8).

    Only needed to inspect them or to train without rendering: trainers render heatmaps on the
    fly from the keypoints, which takes ~1000x less disk.
    """
    given = {"preset": preset, "sigma": sigma, "size": list(size) if size else None, "antialias": antialias}
    run_stage_command("heatmaps", {"points": points, **{k: v for k, v in given.items() if v is not None}},
                      **common)


@main.command()
@click.argument("workflow_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Overrides the workflow's manifest.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Overrides the workflow's cache folder.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder that relative video paths start from [default: the manifest's folder].")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (tcp://host:8786).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Workers of the local cluster (overrides the workflow's cluster.n_workers).")
@click.option("--force", is_flag=True, help="Recompute shards that are already complete and train anew "
              "(otherwise the train section continues from its last checkpoint).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--stage", "only_stage", default=None,
              help="Run only this stage's shards here, without dask (what `submit`'s array tasks do; "
                   "the stages it requires must be in the cache); `train`: only the train section.")
@click.option("--shard-index", default=0, show_default=True, type=click.IntRange(min=0),
              help="With --stage: run only shards k with k % num-shards == shard-index.")
@click.option("--num-shards", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --stage: number of tasks sharing the stage.")
@handle_errors
def run(workflow_file: Path, manifest: Path | None, out: Path | None, root: Path | None,
        scheduler: str | None, workers: int | None, force: bool, quiet: bool, only_stage: str | None,
        shard_index: int, num_shards: int) -> None:
    """Run a workflow YAML (a DAG of stages) on dask: a local cluster, a scheduler, or Slurm."""
    from cslr_pipe.pipeline.dag import run_workflow
    from cslr_pipe.pipeline.runner import RunOptions

    workflow, manifest, out = open_workflow(workflow_file, manifest, out)
    if workers is not None:
        workflow.cluster = {**workflow.cluster, "kind": "local", "n_workers": workers}
    if (shard_index, num_shards) != (0, 1) and only_stage is None:
        fail_usage("--shard-index and --num-shards need --stage (a dask run takes every shard)")
    if shard_index >= num_shards:
        fail_usage(f"--shard-index {shard_index} must be smaller than --num-shards {num_shards}")
    rows, bad_rows = read_rows(manifest)
    options = RunOptions(out=Path(out).resolve(), root=(root or workflow.root or manifest.parent).resolve(),
                         shard_size=workflow.shard_size, compression=workflow.compression,
                         device=workflow.device, force=force, progress=False)
    if only_stage == "train":
        if not workflow.train:
            fail_usage(f"{workflow_file} has no train section")
        if num_shards != 1:
            fail_usage("--stage train is one job: it takes no --shard-index or --num-shards")
    if workflow.train and only_stage in (None, "train"):
        check_train_section(workflow, manifest, rows)  # before hours of extraction, not after
    if only_stage == "train":
        train_workflow(workflow_file, workflow, manifest, rows, options.out, resume=not force, progress=not quiet)
        return
    if only_stage is not None:
        from cslr_pipe.pipeline.runner import run_stage
        from cslr_pipe.pipeline.submit import workflow_stage

        stage, config = workflow_stage(workflow, only_stage)
        finish(run_stage(stage, config, rows, options, shard_index, num_shards), bad_rows)
        return
    results = run_workflow(workflow, rows, options, scheduler, progress=not quiet)
    if workflow.train and not any(r.failed for r in results):
        train_workflow(workflow_file, workflow, manifest, rows, options.out, resume=not force, progress=not quiet)
    finish(results, bad_rows)


def check_train_section(workflow, manifest: Path, rows: list) -> None:
    """Exit 2 now if the workflow's train section could not run: unknown options, no train or dev rows."""
    from cslr_pipe.training.trainer import TrainConfig

    options = dict(workflow.train)
    TrainConfig.for_model(options.pop("model", "ctc"), **options)
    require_split(manifest, rows, "train")
    require_split(manifest, rows, "dev")  # the best checkpoint is chosen on dev


def train_workflow(workflow_file: Path, workflow, manifest: Path, rows: list, cache: Path, resume: bool,
                   progress: bool) -> None:
    """The workflow's train section on the cache, continuing from its last checkpoint if ``resume``."""
    from cslr_pipe.pipeline.dag import train_after_stages
    from cslr_pipe.training.trainer import SettingsChangedError

    vocabulary = find_vocabulary(manifest, None, rows)
    try:
        report = train_after_stages(workflow, manifest, vocabulary, cache, log=click.echo, resume=resume,
                                    progress=progress)
    except SettingsChangedError as error:
        raise InputError(f"{error} (`cslr-pipe run {workflow_file} --stage train --force` trains anew "
                         f"without recomputing the stages)") from None
    for line in report.lines:
        click.echo(line)


@main.command()
@click.argument("workflow_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Overrides the workflow's manifest.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Overrides the workflow's cache folder.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder that relative video paths start from [default: the manifest's folder].")
@click.option("--array", "num_tasks", type=click.IntRange(min=1), default=None,
              help="Tasks per stage (array 0..N-1) [default: one per shard, at most 1000].")
@click.option("--logs", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder of the jobs' logs (cslr-pipe-<stage>-<job>_<task>.out, cslr-pipe-train-<job>.out); "
                   "made if missing.")
@click.option("--sbatch-option", "sbatch_options", multiple=True, metavar="OPTION",
              help="Passed to every sbatch, repeatable (e.g. --sbatch-option=--partition=cpu "
                   "--sbatch-option=--mem=16G).")
@click.option("--train-sbatch-option", "train_sbatch_options", multiple=True, metavar="OPTION",
              help="Passed to the training job's sbatch after the --sbatch-option's (the same option given "
                   "again overrides), repeatable (e.g. --train-sbatch-option=--gres=gpu:1).")
@handle_errors
def submit(workflow_file: Path, manifest: Path | None, out: Path | None, root: Path | None,
           num_tasks: int | None, logs: Path, sbatch_options: tuple[str, ...],
           train_sbatch_options: tuple[str, ...]) -> None:
    """Submit a workflow's stages as Slurm job arrays, each stage's task i after task i of the
    stages it requires (--dependency=aftercorr), and its train section as one job after all of
    them (--dependency=afterok); prints the job ids."""
    from cslr_pipe.pipeline.runner import plan_shards
    from cslr_pipe.pipeline.submit import MAX_TASKS, submit_workflow

    workflow, manifest, out = open_workflow(workflow_file, manifest, out)
    rows, _ = read_rows(manifest)
    if workflow.train:
        check_train_section(workflow, manifest, rows)
    elif train_sbatch_options:
        fail_usage(f"--train-sbatch-option: {workflow_file} has no train section")
    root = root or workflow.root
    num_tasks = num_tasks or min(len(plan_shards(rows, workflow.shard_size)), MAX_TASKS)
    submissions = submit_workflow(workflow, workflow_file.resolve(), Path(manifest).resolve(), Path(out).resolve(),
                                  Path(root).resolve() if root else None, num_tasks, logs.resolve(),
                                  sbatch_options, train_sbatch_options)
    for submission in submissions:
        tasks = "after every task of every stage" if submission.stage == "train" else f"{num_tasks} tasks"
        click.echo(f"{submission.stage}: job {submission.job_id} ({tasks})")


@main.command()
@click.argument("cache_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@handle_errors
def info(cache_dir: Path) -> None:
    """What a cache holds: per stage, the videos done and failed and how they were made."""
    from cslr_pipe.features.store import open_cache

    cache = open_cache(cache_dir)
    if not cache.stages():
        click.echo(f"{cache_dir}: no committed shards")
    for stage in cache.stages():
        provenance = cache.provenance(stage)
        failed = cache.failed(stage)
        click.echo(f"{stage}: {len(cache.ids(stage))} videos, {len(failed)} failed; backend "
                   f"{provenance.backend}, weights {provenance.weights_sha256[:12]}, "
                   f"config {provenance.config}, cslr-pipe {provenance.package_version}")
        for video_id, reason in failed.items():
            click.echo(f"  failed {video_id}: {reason}")


@main.command()
@click.argument("model")
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest of the videos; its train and dev splits are used.")
@click.option("--cache", "cache_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Cache folder holding the streams (from the stage commands or `run`).")
@click.option("--streams", default="features.rgb", show_default=True,
              help="Comma-separated cached streams the model reads: cache stages (features.rgb, keypoints) "
                   "or short names, which mean the features stage when there is one (rgb,keypoint,flow -> "
                   "features.rgb,...); =flow for the stage named exactly flow.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run folder.")
@click.option("--vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Vocabulary [default: MANIFEST.vocab.json or vocabulary.json beside it].")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="All epochs, every phase together [default: the model's, see docs/training.md].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Videos per training batch [default: the model's].")
@click.option("--lr", type=float, default=None, help="Initial learning rate [default: the model's].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed of initial weights, batch order and augmentation.")
@click.option("--beam-width", type=click.IntRange(min=1), default=1, show_default=True,
              help="CTC decoding for evaluation: 1 = greedy, more = prefix beam search.")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Data-loading worker processes (0 = load in the training process).")
@click.option("--rescale", type=(float, float), default=None, metavar="LO HI",
              help="Temporal rescaling augmentation: resample each training video by a factor in [LO, HI] "
                   "(e.g. 0.5 1.5) [default: off].")
@click.option("--feature-dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Zero this fraction of feature channels of each training video [default: 0].")
@click.option("--fusion", type=click.Choice(["mlp", "conv", "attention", "none"]), default=None,
              help="How the fusion model joins its streams (= --model-option fusion=...) [default: mlp].")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable (e.g. hidden=256).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start from a trained checkpoint (diffsign: a `train ctc` run's best.pt, whose visual encoder "
                   "and CTC head it keeps frozen); same vocabulary and streams.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs of this job (wall-time limits); resume with --resume.")
@device_option
@handle_errors
def train(model: str, manifest: Path, cache_dir: Path, streams: str, out: Path, vocab: Path | None,
          epochs: int | None, batch_size: int | None, lr: float | None, seed: int, beam_width: int,
          num_workers: int, rescale: tuple[float, float] | None, feature_dropout: float | None,
          fusion: str | None, model_options: tuple[str, ...], init_from: Path | None, resume: bool,
          stop_after: int | None, device: str) -> None:
    """Train MODEL (ctc, diffsign, acdr, fusion, twostream) on cached streams; keeps the best dev
    checkpoint, writes curves."""
    from cslr_pipe.training import distributed
    from cslr_pipe.training.trainer import Run, TrainConfig, train as run_training

    if fusion and model != "fusion":
        fail_usage(f"--fusion applies to the fusion model, not {model}")
    options = {**parse_options(model_options), **({"fusion": fusion} if fusion else {})}
    rows, _ = read_rows(manifest)
    require_split(manifest, rows, "train")
    require_split(manifest, rows, "dev")
    if resume and not (out / "last.pt").is_file():
        fail_input(f"{out / 'last.pt'}: no checkpoint to resume from (--resume continues the run in --out; "
                   f"leave it out to start a new run)")
    config = TrainConfig.for_model(model, streams=[s.strip() for s in streams.split(",") if s.strip()],
                                   epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                                   beam_width=beam_width, num_workers=num_workers,
                                   rescale=list(rescale) if rescale else None, feature_dropout=feature_dropout,
                                   init_from=str(init_from) if init_from else None, model_options=options or None)
    run = Run(manifest=manifest, vocabulary=find_vocabulary(manifest, vocab, rows), cache=cache_dir, out=out)
    try:
        summary = run_training(config, run, resume=resume, log=click.echo, stop_after=stop_after)
        main_process = distributed.is_main()
    finally:
        distributed.cleanup()  # under torchrun
    if not main_process:
        return
    click.echo(f"best dev WER {100 * summary['best_dev_wer']:.1f}% [plain WER]: {summary['checkpoint']}; "
               f"curves in {out / 'curves.png'}")


@main.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint written by `cslr-pipe train` (RUN/best.pt or RUN/last.pt).")
@click.option("--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest of the videos to score.")
@click.option("--cache", "cache_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Cache folder holding the streams the model was trained on.")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True,
              help="Manifest split to decode and score.")
@click.option("--beam-width", type=click.IntRange(min=1), default=None,
              help="CTC decoding [default: as in training].")
@click.option("--phoenix", type=click.Choice(["phoenix2014", "phoenix2014t"]), default=None,
              help="Score as published PHOENIX numbers are made (the cleanup and scorer: --scorer).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where hypotheses and CTM/STM files go [default: beside the checkpoint].")
@click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
              help="Inference option, repeatable (e.g. sampling_steps=0 for DiffSign's full DDPM chain).")
@click.option("--scorer", type=click.Choice(["sclite", "vac-python", "slt"]), default=None,
              help="With --phoenix: how the WER is made [default: sclite for phoenix2014, slt for "
                   "phoenix2014t; docs/evaluation.md].")
@click.option("--samples", type=click.IntRange(min=1), default=3, show_default=True,
              help="Diffusion models: decode with this many x_T seeds (from the model's sampling_seed on) "
                   "and report the WER's mean and spread.")
@click.option("--mean-log-probs", is_flag=True,
              help="Diffusion models: also score the mean of the seeds' log-probs.")
@device_option
@handle_errors
def evaluate_command(checkpoint: Path, manifest: Path, cache_dir: Path, split: str, beam_width: int | None,
                     phoenix: str | None, out: Path | None, model_options: tuple[str, ...], scorer: str | None,
                     samples: int, mean_log_probs: bool, device: str) -> None:
    """Word error rate of a trained model on a split, with substitution/deletion/insertion rates."""
    from cslr_pipe.training.evaluation import evaluate_checkpoint

    require_split(manifest, read_rows(manifest)[0], split)
    evaluation = evaluate_checkpoint(checkpoint, manifest, cache_dir, split, beam_width, phoenix,
                                     out or checkpoint.parent, device, parse_options(model_options),
                                     samples, mean_log_probs, scorer)
    for line in evaluation.lines:
        click.echo(line)


@main.command()
@click.option("--hyp", "hyp_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Hypotheses: CTM, JSON Lines (id + hypothesis) or 'ID WORD ...' lines.")
@click.option("--ref", "ref_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="References: STM (the released ground truth), a manifest or 'ID WORD ...' lines.")
@click.option("--dataset", required=True, type=click.Choice(["phoenix2014", "phoenix2014t", "csl-daily"]),
              help="Whose rules: PHOENIX cleanup and scorer, or plain WER for CSL-Daily.")
@click.option("--scorer", type=click.Choice(["sclite", "vac-python", "slt"]), default=None,
              help="PHOENIX scorer [default: sclite for phoenix2014, slt for phoenix2014t].")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write an sclite-style per-sentence alignment report here.")
@handle_errors
def score(hyp_file: Path, ref_file: Path, dataset: str, scorer: str | None, report: Path | None) -> None:
    """Score any system's hypotheses against references, as the dataset's papers do."""
    from cslr_pipe.features.files import atomic_write_text
    from cslr_pipe.training.metrics import wer_details
    from cslr_pipe.training.phoenix import SCORERS, score_phoenix
    from cslr_pipe.training.transcripts import alignment_report, read_sentences

    hyps, refs = read_sentences(hyp_file), read_sentences(ref_file, references=True)
    unknown = sorted(set(hyps) - set(refs))
    if unknown:
        fail_usage(f"{len(unknown)} hypothesis ids have no reference in {ref_file}, e.g. {unknown[0]}")
    ids = sorted(refs)
    missing = sum(i not in hyps for i in ids)
    pairs = ([refs[i] for i in ids], [hyps.get(i, []) for i in ids])
    if dataset == "csl-daily":
        if scorer:
            fail_usage("--scorer chooses among the PHOENIX scorers; CSL-Daily is scored with plain WER")
        details, name = wer_details(*pairs), "[csl-daily, plain WER]"
    else:
        scorer = scorer or SCORERS[dataset][0]
        details, name = score_phoenix(*pairs, dataset, scorer=scorer), f"[{dataset}, scorer {scorer}]"
    click.echo(f"{details.summary()} {name}")
    if missing:
        click.echo(f"{missing} references have no hypothesis: scored as empty")
    if report:
        atomic_write_text(report, alignment_report(ids, details))
        click.echo(f"alignment report: {report}")


@main.command()
@click.argument("video_id")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest that lists the video.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache whose results are drawn over the frames.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder that relative video paths start from [default: the manifest's folder].")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG file to write.")
@click.option("--frames", "num_frames", type=click.IntRange(min=1, max=32), default=8, show_default=True,
              help="Frames in the strip.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Also decode the video with this trained model (from its streams in --cache) and draw "
                   "its hypothesis under the reference, errors marked, with the WER.")
@device_option
@handle_errors
def inspect(video_id: str, manifest: Path, cache_dir: Path | None, root: Path | None, out: Path,
            num_frames: int, checkpoint: Path | None, device: str) -> None:
    """Draw one video's frames and what the cache holds for it into a PNG.

    Flow is drawn as colour (hue: direction, saturation: speed) with a colour-wheel legend;
    --checkpoint adds the model's hypothesis aligned with the reference glosses.
    """
    from cslr_pipe.features.store import open_cache
    from cslr_pipe.pipeline.inspect import inspect_video
    from cslr_pipe.pipeline.runner import video_path

    rows = {row.id: row for row in read_manifest(manifest)}
    if video_id not in rows:
        fail_usage(f"{video_id} is not in {manifest}")
    row = rows[video_id]
    cache = open_cache(cache_dir) if cache_dir else None
    path = inspect_video(row, video_path(row, root or manifest.parent), cache, out, num_frames, checkpoint, device)
    click.echo(f"wrote {path}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("cslr-demo"),
              show_default=True, help="Folder for the demo corpus and its cache.")
@click.option("--videos", type=click.IntRange(min=6), default=96, show_default=True,  # = demo.DEMO_VIDEOS
              help="Number of synthetic videos.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Workers of the local dask cluster.")
@click.option("--fusion", type=click.Choice(["mlp", "conv", "attention"]), default=None,
              help="Train the multi-stream fusion model with this method instead of the CTC baseline.")
@handle_errors
def demo(out: Path, videos: int, workers: int, fusion: str | None) -> None:
    """Offline end-to-end run on a generated corpus, on embedded defaults (minutes on 2 CPUs)."""
    from cslr_pipe.pipeline.demo import run_demo, summary_lines

    result = run_demo(out, videos, workers, echo=click.echo, fusion=fusion)
    for line in summary_lines(result):
        click.echo(line)
    report(result.results, per_stage=False)


# -- what the commands above share


def read_rows(manifest: Path) -> tuple[list, list[BadRow]]:
    """The manifest's good rows; each bad row is named on stderr and returned for the exit code."""
    bad_rows: list[BadRow] = []
    rows = read_manifest(manifest, bad_rows)
    for bad in bad_rows:
        click.echo(f"skipped manifest row: {bad}", err=True)
    if not rows:
        fail_input(f"{manifest}: none of its {len(bad_rows)} row(s) can be used (listed above)" if bad_rows
                   else f"{manifest}: empty manifest (no rows)")
    return rows, bad_rows


def require_split(manifest: Path, rows: list, split: str) -> None:
    """Exit 2 when the manifest has no rows of ``split`` (training or scoring nothing)."""
    if not any(row.split == split for row in rows):
        fail_input(f"{manifest}: no rows of split {split!r} (splits present: "
                   f"{', '.join(sorted({row.split for row in rows}))})")


def finish(results: list[ShardResult], bad_rows: list[BadRow]) -> None:
    report(results)
    if bad_rows:
        raise Failed(f"{len(bad_rows)} manifest row(s) skipped (listed above)")


def finish_import(stage: str, failures: dict[str, str], bad_rows: list[BadRow], summary: str) -> None:
    """An import's failures one per line, its summary, exit 1 if anything failed."""
    for video_id, reason in failures.items():
        click.echo(f"failed: {stage} {video_id}: {reason}", err=True)
    click.echo(f"{stage}: {summary}")
    if failures or bad_rows:
        raise Failed(f"{len(failures) + len(bad_rows)} item(s) failed (listed above)")


def run_stage_command(stage_name: str, config: dict, manifest: Path, out: Path, root: Path | None,
                      shard_size: int, shard_index: int, num_shards: int, compression: str,
                      force: bool, quiet: bool, device: str = "cpu") -> None:
    from cslr_pipe.pipeline.runner import RunOptions, run_stage
    from cslr_pipe.pipeline.stages import get_stage

    if shard_index >= num_shards:
        fail_usage(f"--shard-index {shard_index} must be smaller than --num-shards {num_shards}")
    rows, bad_rows = read_rows(manifest)
    options = RunOptions(out=out, root=root or manifest.parent, shard_size=shard_size,
                         compression=compression, device=device, force=force, progress=not quiet)
    finish(run_stage(get_stage(stage_name), config, rows, options, shard_index, num_shards), bad_rows)


def parse_options(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs into a dict; values are read as YAML scalars (1, 0.5, true, text)."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail_usage(f"expected KEY=VALUE, got {pair!r}")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            fail_usage(yaml_error_line(f"option {pair!r}", error))
    return options


def yaml_error_line(source: Path | str, error: Exception) -> str:
    """One line for a YAML file that safe_load refused or could not parse, naming the place."""
    import yaml

    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark else f"{source}"
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    tag = re.search(r"tag '([^']*)'", problem)
    if isinstance(error, yaml.constructor.ConstructorError) and tag:
        return (f"{where}: tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')} refused: YAML is read with "
                f"safe_load, which builds no Python objects, so nothing in it was run")
    return f"{where}: not valid YAML ({problem})"


if __name__ == "__main__":
    sys.exit(main())
