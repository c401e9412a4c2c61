"""`cslr-pipe demo`: generate a synthetic corpus, run the demo workflow on it, say what came out."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from cslr_pipe.features.backbones import RandomWeightsWarning
from cslr_pipe.features.files import inside
from cslr_pipe.features.manifest import read_manifest, read_vocabulary
from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline.dag import TrainingReport, load_workflow, run_workflow, train_after_stages
from cslr_pipe.pipeline.inspect import inspect_video
from cslr_pipe.pipeline.runner import RunOptions, ShardResult, video_path
from cslr_pipe.pipeline.synthetic import GLOSSES, CorpusSpec, make_corpus

PICTURES = 2  # test videos drawn by `cslr-pipe inspect` at the end, with the model's hypothesis
#: the demo corpus (docs/benchmarks.md, "The demo", says how these were chosen)
DEMO_VIDEOS, DEV_FRACTION, TEST_FRACTION = 96, 0.1, 0.2


def demo_workflow_path(fusion: bool = False) -> Path:
    """The packaged workflows/demo.yaml, or demo-fusion.yaml (a flow feature stream, the fusion model)."""
    return Path(str(resources.files("cslr_pipe.workflows") / ("demo-fusion.yaml" if fusion else "demo.yaml")))


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the stage results, the training report, the baselines, pictures."""

    corpus: Path
    cache: Path
    results: list[ShardResult]
    stage_videos: dict[str, int]  # stage -> videos with results in the cache
    model: str  # what was trained on which streams
    training: TrainingReport | None
    chance_wer: float
    majority_wer: float
    pictures: list[Path]
    seconds: float


def run_demo(out: Path, num_videos: int = DEMO_VIDEOS, workers: int = 2,
             echo: Callable[[str], None] = print, fusion: str | None = None, progress: bool = True) -> DemoResult:
    """Generate the corpus under OUT/corpus, run every stage into OUT/cache, train and test a model,
    draw pictures of test videos; returns what :func:`summary_lines` reports.

    ``fusion`` (mlp, conv, attention): run workflows/demo-fusion.yaml instead, which adds ResNet features
    of the rgb frames and trains the fusion model with this method on the rgb, keypoint and flow features.
    """
    from cslr_pipe.training.baselines import chance_wer, majority_wer

    out = Path(out).resolve()
    start = time.perf_counter()
    spec = CorpusSpec(num_videos=num_videos, dev_fraction=DEV_FRACTION, test_fraction=TEST_FRACTION)
    manifest = make_corpus(out / "corpus", spec)
    rows = read_manifest(manifest)
    split = {name: [row for row in rows if row.split == name] for name in ("train", "dev", "test")}
    echo(f"corpus: {len(rows)} synthetic videos ({', '.join(f'{len(v)} {k}' for k, v in split.items())}) "
         f"of {len(GLOSSES)} glosses in {manifest.parent}")
    workflow = load_workflow(demo_workflow_path(fusion=bool(fusion)))
    workflow.cluster = {**workflow.cluster, "kind": "local", "n_workers": workers}
    if fusion:
        workflow.train = {**workflow.train, "model_options": {**workflow.train["model_options"], "fusion": fusion}}
    options = RunOptions(out=out / "cache", root=manifest.parent, shard_size=workflow.shard_size,
                         compression=workflow.compression, device=workflow.device, progress=False)
    with warnings.catch_warnings():  # the demo has no weights files on purpose; its summary says so
        warnings.simplefilter("ignore", RandomWeightsWarning)
        results = run_workflow(workflow, rows, options, progress=progress)
    training, model = None, ""
    if workflow.train:
        train = workflow.train
        model = f"{train['model']} on {' + '.join(train['streams'])}"
        echo(f"training {model} for {train['epochs']} epochs (log: {options.out / 'runs' / train['model'] / 'log.csv'})")
        vocabulary = read_vocabulary(manifest.parent / "vocabulary.json")
        training = train_after_stages(workflow, manifest, vocabulary, options.out, log=lambda _: None,
                                      progress=progress)
    cache = open_cache(options.out)
    checkpoint = training.run_dir / "best.pt" if training else None
    pictures = [inspect_video(row, video_path(row, options.root), cache, inside(out, f"pictures/{row.id}.png"),
                              checkpoint=checkpoint, device=workflow.device)
                for row in split["test"][:PICTURES]]
    train_sentences = [row.glosses for row in split["train"]]
    test_sentences = [row.glosses for row in split["test"]]
    stage_videos = {stage: len(cache.ids(stage)) for stage in workflow.stages if stage in cache.stages()}
    return DemoResult(manifest.parent, options.out, results, stage_videos, model, training,
                      chance_wer(train_sentences, test_sentences), majority_wer(train_sentences, test_sentences),
                      pictures, time.perf_counter() - start)


def summary_lines(demo: DemoResult) -> list[str]:
    """The block the demo ends with: stages, model, test WER against the baselines, where to look."""
    failed = {stage: sum(len(r.failed) for r in demo.results if r.stage == stage) for stage in demo.stage_videos}
    lines = [f"== cslr-pipe demo finished in {demo.seconds:.0f} s ==",
             "stages    " + ", ".join(f"{stage} {n}" + (f" ({failed[stage]} failed)" if failed[stage] else "")
                                      for stage, n in demo.stage_videos.items()) + f" videos; cache {demo.cache}"]
    if demo.training:
        test = demo.training.test
        lines += [f"model     {demo.model} (ResNet-18 features with random weights: the demo has no weights "
                  f"files); best dev WER {100 * demo.training.best_dev_wer:.1f}%, curves {demo.training.run_dir / 'curves.png'}",
                  f"test WER  {100 * test.wer:.1f}% = {test.errors} error{'s' * (test.errors != 1)} in {test.reference_words} words "
                  f"({test.substitutions} sub, {test.deletions} del, {test.insertions} ins; one error = "
                  f"{100 / test.reference_words:.1f} points)",
                  f"guessing  random sentences {100 * demo.chance_wer:.1f}%, always the most frequent training "
                  f"sentence {100 * demo.majority_wer:.1f}%"]
    lines += [f"pictures  {', '.join(str(p) for p in demo.pictures)}",
              f"next      cslr-pipe info {demo.cache}"]
    return lines
