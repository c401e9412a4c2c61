"""The demo's extraction on a dask LocalCluster with 2 workers against 1 worker, same run.

    python bench/dask_scaling.py --out runs/dask-scaling [--videos 48] [--shard-size 4] [--repeats 2]
                                 [--stages probe flow features.flow]

Renders the demo corpus (``--videos``), then runs the stages of workflows/demo.yaml (its train
section left out) as ``cslr-pipe run WORKFLOW --workers W`` into a fresh cache each time, for W = 1
and W = 2 (one thread per worker, the workflow's default), and, as a reference without dask, the
same stages as stage commands one after the other (one process at a time). The runs alternate
(1, 2, process, process, 2, 1, ...) so that a drift of the machine's speed hits each alike; each
configuration's best wall time is reported with the ratios, and how many cores it kept busy on
average (CPU time of the run's processes over its wall time). Every cache is checked to hold every
video of every stage.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# the demo workflow's stages as stage commands (the reference without dask)
COMMANDS = {"probe": ["probe"], "keypoints": ["extract-keypoints", "--backend", "mediapipe"],
            "flow": ["extract-flow", "--backend", "dis", "--size", "112", "112"],
            "features.keypoint": ["cache-features", "--stream", "keypoint", "--backbone", "resnet18",
                                  "--weights", "none", "--backbone-option", "heatmap_size=56"],
            "features.flow": ["cache-features", "--stream", "flow", "--backbone", "resnet18", "--weights", "none",
                              "--backbone-option", "resize=64", "--backbone-option", "crop=56"]}


def extraction_workflow(folder: Path, shard_size: int, stages: list[str]) -> Path:
    """workflows/demo.yaml's ``stages`` without its train section, with the given shard size."""
    workflow = yaml.safe_load((ROOT / "workflows" / "demo.yaml").read_text())
    workflow.pop("train")
    workflow["shard_size"] = shard_size
    assert list(workflow["stages"]) == list(COMMANDS), "bench/dask_scaling.py's commands follow demo.yaml"
    workflow["stages"] = {name: config for name, config in workflow["stages"].items() if name in stages}
    path = folder / "extraction.yaml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False))
    return path


def check_complete(cache: Path, manifest: Path, stages: list[str]) -> None:
    from cslr_pipe.features.store import open_cache
    from cslr_pipe.features.manifest import read_manifest

    ids = sorted(row.id for row in read_manifest(manifest))
    store = open_cache(cache)
    for stage in stages:
        assert store.ids(stage) == ids, f"{cache}: stage {stage} is incomplete"
    store.close()


def cpu_seconds() -> float:
    """User + system CPU time of every finished process this one started, their children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command."""
    started, cpu = time.perf_counter(), cpu_seconds()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stages", nargs="+", choices=list(COMMANDS), default=list(COMMANDS),
                        help="A part of the demo's stages, each with the stages it needs [default: all].")
    args = parser.parse_args()
    stages = [name for name in COMMANDS if name in args.stages]

    from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

    out = args.out.resolve()
    manifest = make_corpus(out / "corpus", CorpusSpec(num_videos=args.videos))
    workflow = extraction_workflow(out, args.shard_size, stages)
    cli = str(Path(sys.executable).with_name("cslr-pipe"))

    def dask_run(workers: int, cache: Path) -> tuple[float, float]:
        return timed_run([cli, "run", str(workflow), "--manifest", str(manifest), "--out", str(cache),
                          "--workers", str(workers), "--quiet"])

    def stage_commands(cache: Path) -> tuple[float, float]:
        runs = [timed_run([cli, *command, "--manifest", str(manifest), "--out", str(cache), "--quiet",
                           "--shard-size", str(args.shard_size)]) for command in map(COMMANDS.get, stages)]
        return sum(wall for wall, _ in runs), sum(cpu for _, cpu in runs)

    configurations = {"1 worker": lambda cache: dask_run(1, cache), "2 workers": lambda cache: dask_run(2, cache),
                      "stage commands, no dask": stage_commands}
    order = list(configurations)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in order}
    for repeat in range(args.repeats):
        for name in (order if repeat % 2 == 0 else order[::-1]):
            cache = out / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            wall, cpu = configurations[name](cache)
            check_complete(cache, manifest, stages)
            times[name].append((wall, cpu))
            print(f"repeat {repeat}: {name}: {wall:.1f} s, {cpu:.1f} CPU s ({cpu / wall:.2f} cores busy)", flush=True)
    best = {name: min(values) for name, values in times.items()}
    print(f"stages {', '.join(stages)}; {args.videos} videos, shard size {args.shard_size}, best of {args.repeats}:")
    for name, (wall, cpu) in best.items():
        print(f"  {name}: {wall:.1f} s ({args.videos / wall:.2f} videos/s), {cpu / wall:.2f} cores busy")
    print(f"2 workers against 1 worker: {best['1 worker'][0] / best['2 workers'][0]:.2f}x")
    print(f"2 workers against the stage commands without dask: "
          f"{best['stage commands, no dask'][0] / best['2 workers'][0]:.2f}x")


if __name__ == "__main__":
    main()
