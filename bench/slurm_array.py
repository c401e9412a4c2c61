"""The demo's extraction as one Slurm job array of N tasks against one local process, same run.

    python bench/slurm_array.py --out runs/slurm-array [--videos 48] [--tasks 2]

Renders the demo corpus (``--videos``), starts the one-node cluster of tests/slurm/cluster.sh (as
root, on Debian; it installs Slurm when missing), then for each extraction stage of
workflows/demo.yaml, in order: runs the stage command in one local process into OUT/local, then as
``sbatch --array=0-(N-1) workflows/slurm/extract.sbatch STAGE ...`` into OUT/array (timed from
submission until the job leaves squeue), and prints both wall times and their ratio; the two caches
are checked to hold the same videos. The
cluster is stopped at the end. Each array task gets one CPU (``--cpus-per-task=1``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
# stage -> the command's options, as workflows/demo.yaml configures it
STAGES = {
    "probe": [],
    "keypoints": ["--backend", "mediapipe"],
    "flow": ["--backend", "dis", "--size", "112", "112"],
    "features.keypoint": ["--backbone", "resnet18", "--weights", "none", "--backbone-option", "heatmap_size=56"],
    "features.flow": ["--backbone", "resnet18", "--weights", "none", "--backbone-option", "resize=64",
                      "--backbone-option", "crop=56"],
}
COMMANDS = {"probe": ["probe"], "keypoints": ["extract-keypoints"], "flow": ["extract-flow"],
            "features.keypoint": ["cache-features", "--stream", "keypoint"],
            "features.flow": ["cache-features", "--stream", "flow"]}


def timed(command: list[str], **kwargs) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - started


def timed_array(command: list[str], env: dict, cwd: Path) -> float:
    """Submit, then poll squeue every 0.2 s until the job has left it (``sbatch --wait`` checks only
    after 2, 8, 32 s..., which would be measured too)."""
    started = time.perf_counter()
    job = subprocess.run(["sbatch", "--parsable", *command], check=True, capture_output=True, text=True,
                         env=env, cwd=cwd).stdout.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=env).stdout.strip():
        time.sleep(0.2)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=4)
    args = parser.parse_args()

    from cslr_pipe.features.store import open_cache
    from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

    out = args.out.resolve()
    manifest = make_corpus(out / "corpus", CorpusSpec(num_videos=args.videos))
    cluster = out / "cluster"
    cluster.mkdir(parents=True, exist_ok=True)
    cluster.chmod(0o755)
    subprocess.run(["bash", str(CLUSTER), "start", str(cluster)], check=True, capture_output=True, text=True)
    env = {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf"), "CSLR_PIPE_VENV": str(Path(sys.prefix))}
    cli = str(Path(sys.executable).with_name("cslr-pipe"))
    total_local = total_array = 0.0
    try:
        for stage, options in STAGES.items():
            common = ["--manifest", str(manifest), "--shard-size", str(args.shard_size), *options]
            local = timed([cli, *COMMANDS[stage], "--out", str(out / "local"), "--quiet", *common], env=env)
            array = timed_array([f"--array=0-{args.tasks - 1}", "--cpus-per-task=1", "--mem=2G",
                                 str(ROOT / "workflows" / "slurm" / "extract.sbatch"), stage, "--out",
                                 str(out / "array"), "--quiet", *common], env, out)
            same = open_cache(out / "local").ids(stage) == open_cache(out / "array").ids(stage)
            total_local, total_array = total_local + local, total_array + array
            print(f"{stage}: local {local:.1f} s, array of {args.tasks} {array:.1f} s, {local / array:.2f}x"
                  f"{'' if same else ' (the caches differ!)'}", flush=True)
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(cluster)], capture_output=True)
    print(f"all stages: local {total_local:.1f} s, array of {args.tasks} {total_array:.1f} s, "
          f"{total_local / total_array:.2f}x")


if __name__ == "__main__":
    main()
