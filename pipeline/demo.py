"""`cslr-pipe demo`: generate a synthetic corpus, run the demo workflow on it, say what came out."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Callable

from cslr_pipe.features.files import inside
from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline.dag import load_workflow, run_workflow, train_after_stages
from cslr_pipe.pipeline.manifest import read_manifest, read_vocabulary
from cslr_pipe.pipeline.inspect import inspect_video
from cslr_pipe.pipeline.runner import RunOptions, ShardResult, video_path
from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

PICTURES = 2  # videos drawn by `cslr-pipe inspect` at the end


def demo_workflow_path(fusion: bool = False) -> Path:
    """The packaged workflows/demo.yaml, or demo-fusion.yaml (a flow feature stream, the fusion model)."""
    return Path(str(resources.files("cslr_pipe.workflows") / ("demo-fusion.yaml" if fusion else "demo.yaml")))


def run_demo(out: Path, num_videos: int = 48, workers: int = 2,
             echo: Callable[[str], None] = print, fusion: str | None = None) -> list[ShardResult]:
    """Generate the corpus under OUT/corpus, run every stage into OUT/cache, print a summary.

    ``fusion`` (mlp, conv, attention): run workflows/demo-fusion.yaml instead, which adds ResNet features
    of the flow and trains the fusion model with this method on the rgb, keypoint and flow features.
    """
    out = Path(out).resolve()
    start = time.perf_counter()
    manifest = make_corpus(out / "corpus", CorpusSpec(num_videos=num_videos))
    rows = read_manifest(manifest)
    echo(f"corpus: {len(rows)} synthetic videos, manifest {manifest}")
    workflow = load_workflow(demo_workflow_path(fusion=bool(fusion)))
    workflow.cluster = {**workflow.cluster, "kind": "local", "n_workers": workers}
    if fusion:
        workflow.train = {**workflow.train, "model_options": {**workflow.train["model_options"], "fusion": fusion}}
    options = RunOptions(out=out / "cache", root=manifest.parent, shard_size=workflow.shard_size,
                         compression=workflow.compression, device=workflow.device, progress=False)
    results = run_workflow(workflow, rows, options)
    if workflow.train:
        vocabulary = read_vocabulary(manifest.parent / "vocabulary.json")
        for line in train_after_stages(workflow, manifest, vocabulary, options.out, log=echo):
            echo(line)
    cache = open_cache(options.out)
    for stage in cache.stages():
        echo(f"cache: {stage}: {len(cache.ids(stage))} videos in {options.out / stage}")
    for row in rows[:PICTURES]:
        picture = inspect_video(row, video_path(row, options.root), cache,
                                inside(out, f"pictures/{row.id}.png"))
        echo(f"picture: {picture}")
    echo(f"demo finished in {time.perf_counter() - start:.0f} s; look inside with "
         f"`cslr-pipe info {options.out}`")
    return results
