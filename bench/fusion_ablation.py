"""The multi-stream fusion ablation of docs/benchmarks.md (after SignVTCL's supplementary Table 1).

    python bench/fusion_ablation.py --out runs/fusion-ablation [--videos 240] [--seeds 0,1]
        [--rows flow,mlp,...] [--epochs 40] [--train-videos N] [--jobs 2]

1. Renders the synthetic demo corpus (``make_corpus``, ``--videos`` videos, 70/15/15 % splits) under
   OUT/corpus, or reuses the one there.
2. Runs the stages of workflows/demo-fusion.yaml into OUT/cache on a local dask cluster: MediaPipe
   keypoints, DIS flow, and randomly initialised ResNet-18 features of the rgb frames, the keypoint
   heatmaps and the flow (complete shards are reused).
3. Trains every row of :data:`ROWS` (``--rows`` picks some) for every seed into OUT/runs/ROW-sSEED
   with the trainer, ``--jobs`` runs at a time, one torch thread each. The checkpoint with the best
   dev WER is kept: dev selects, test is only decoded. A run whose result.json is there is not
   trained again. ``--train-videos N`` trains on the first N train videos only (same cache, dev and
   test: a low-resource setting) into OUT/runs-trainN/.
4. Prints the table: dev and test WER (mean over seeds, and each seed), and how far the best fused
   row is from the best single stream on test.

On 2 CPU cores a 40-epoch run on 168 videos takes 1-6 minutes; stages 1-2 on 240 videos about 25 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import mean

COMMON = {"batch_size": 4, "lr": 3e-3}
OPTIONS = {"hidden": 128}
ALL = ["features.rgb", "features.keypoint", "features.flow"]
# name -> (model, streams, model options); the SINGLE rows are the one-stream baselines
ROWS: dict[str, tuple[str, list[str], dict]] = {
    "rgb": ("fusion", ["features.rgb"], {}),
    "keypoint": ("fusion", ["features.keypoint"], {}),
    "flow": ("fusion", ["features.flow"], {}),
    "none": ("fusion", ALL, {"fusion": "none", "branch_ctc": 0.0}),
    "mlp-plain": ("fusion", ALL, {"fusion": "mlp", "gate": False, "branch_ctc": 0.0}),
    "mlp": ("fusion", ALL, {"fusion": "mlp", "branch_ctc": 0.0}),
    "conv": ("fusion", ALL, {"fusion": "conv", "branch_ctc": 0.0}),
    "attention": ("fusion", ALL, {"fusion": "attention", "branch_ctc": 0.0}),
    "mlp+align": ("fusion", ALL, {"fusion": "mlp", "gloss_align": True, "sentence_align": True, "branch_ctc": 0.0}),
    "mlp+branch-ctc": ("fusion", ALL, {"fusion": "mlp", "branch_ctc": 1.0}),
    "conv+branch-ctc": ("fusion", ALL, {"fusion": "conv", "branch_ctc": 1.0}),
    "attention+branch-ctc": ("fusion", ALL, {"fusion": "attention", "branch_ctc": 1.0}),
    "twostream": ("twostream", ["features.rgb", "features.keypoint"], {}),
}
SINGLE = ("rgb", "keypoint", "flow")


def prepare(out: Path, videos: int) -> Path:
    """The corpus and its cache; returns the manifest."""
    from cslr_pipe.pipeline.dag import load_workflow, run_workflow
    from cslr_pipe.pipeline.demo import demo_workflow_path
    from cslr_pipe.features.manifest import read_manifest
    from cslr_pipe.pipeline.runner import RunOptions
    from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

    manifest = out / "corpus" / "manifest.jsonl"
    if not (manifest.is_file() and len(read_manifest(manifest)) == videos):
        started = time.perf_counter()
        make_corpus(out / "corpus", CorpusSpec(num_videos=videos))
        print(f"corpus: {videos} videos in {time.perf_counter() - started:.0f} s", flush=True)
    workflow = load_workflow(demo_workflow_path(fusion=True))
    options = RunOptions(out=out / "cache", root=manifest.parent, shard_size=workflow.shard_size,
                         compression=workflow.compression, device="cpu", progress=False)
    started = time.perf_counter()
    results = run_workflow(workflow, read_manifest(manifest), options)
    failed = sum(len(r.failed) for r in results)
    print(f"stages: {len(results)} shard tasks in {time.perf_counter() - started:.0f} s"
          f"{f', {failed} failed videos' if failed else ''}", flush=True)
    return manifest


def low_resource_manifest(manifest: Path, train_videos: int) -> Path:
    """A manifest beside ``manifest`` with its first ``train_videos`` train rows and every other row."""
    from cslr_pipe.features.manifest import read_manifest, write_manifest

    rows = read_manifest(manifest)
    train = [row for row in rows if row.split == "train"][:train_videos]
    path = manifest.with_name(f"manifest-train{train_videos}.jsonl")
    write_manifest(train + [row for row in rows if row.split != "train"], path)
    return path


def train_row(out: Path, manifest: Path, runs: str, row: str, seed: int, epochs: int) -> dict:
    """Train one row with one seed (in a worker process) and score its best checkpoint."""
    import torch

    torch.set_num_threads(1)
    from cslr_pipe.features.manifest import read_vocabulary
    from cslr_pipe.training.trainer import Run, TrainConfig, train

    run_dir = out / runs / f"{row}-s{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    model, streams, options = ROWS[row]
    vocabulary = read_vocabulary(manifest.parent / "vocabulary.json")
    config = TrainConfig.for_model(model, streams=streams, epochs=epochs, seed=seed, device="cpu",
                                   model_options={**OPTIONS, **options}, **COMMON)
    started = time.perf_counter()
    train(config, Run(manifest, vocabulary, out / "cache", run_dir), log=lambda _: None)
    result = {"row": row, "seed": seed, **score(run_dir, manifest, out / "cache"),
              "train_seconds": round(time.perf_counter() - started, 1)}
    done.write_text(json.dumps(result, indent=1))
    return result


def score(run_dir: Path, manifest: Path, cache: Path) -> dict:
    """Dev and test WER of a run's best checkpoint, its epoch and the test reference words."""
    from torch.utils.data import DataLoader

    from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
    from cslr_pipe.training.trainer import evaluate, load_model

    net, state = load_model(run_dir / "best.pt")
    result = {"best_epoch": state["epoch"], "config": state["config"]}
    for split in ("dev", "test"):
        data = CachedSequenceDataset(cache, manifest, state["vocabulary"], state["config"]["streams"], split=split)
        details, _, _ = evaluate(net, DataLoader(data, batch_size=8, collate_fn=collate_padded),
                                 state["vocabulary"], "cpu")
        result.update({f"{split}_wer": details.wer, f"{split}_words": details.reference_words})
    return result


def table(results: list[dict], rows: list[str]) -> list[str]:
    lines = ["| row | model, streams, options | seeds | dev WER | test WER | test per seed |",
             "|---|---|---:|---:|---:|---|"]
    by_row = {row: [r for r in results if r["row"] == row] for row in rows}
    for row, runs in by_row.items():
        if not runs:
            continue
        model, streams, options = ROWS[row]
        per_seed = " / ".join(f"{100 * r['test_wer']:.1f}" for r in runs)
        what = f"{model}, {'+'.join(s.split('.')[-1] for s in streams)}" + (f", {options}" if options else "")
        lines.append(f"| {row} | {what} | {len(runs)} | {100 * mean(r['dev_wer'] for r in runs):.1f} | "
                     f"{100 * mean(r['test_wer'] for r in runs):.1f} | "
                     f"{per_seed} |")
    test = {row: mean(r["test_wer"] for r in runs) for row, runs in by_row.items() if runs}
    single = {row: wer for row, wer in test.items() if row in SINGLE}
    fused = {row: wer for row, wer in test.items() if row not in SINGLE}
    if single and fused:
        best_single, best_fused = min(single, key=single.get), min(fused, key=fused.get)
        lines.append(f"\nbest single stream: {best_single} {100 * single[best_single]:.1f} % test WER; "
                     f"best fused: {best_fused} {100 * fused[best_fused]:.1f} % "
                     f"({100 * (fused[best_fused] - single[best_single]):+.1f} points)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fusion-ablation"))
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train-videos", type=int, default=None,
                        help="train on only the first N train videos (dev and test unchanged)")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out.resolve()
    manifest = prepare(out, args.videos)
    runs = "runs"
    if args.train_videos:
        manifest, runs = low_resource_manifest(manifest, args.train_videos), f"runs-train{args.train_videos}"
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the random-weights warning, once per worker
    jobs = [(row, seed) for row in rows for seed in seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(train_row, out, manifest, runs, row, seed, args.epochs): (row, seed) for row, seed in jobs}
        results = []
        for future, (row, seed) in futures.items():
            result = future.result()
            print(f"{row} seed {seed}: dev {100 * result['dev_wer']:.1f} %, test {100 * result['test_wer']:.1f} %, "
                  f"best epoch {result['best_epoch']}, {result['train_seconds']:.0f} s", flush=True)
            results.append(result)
    print("\n".join(table(results, rows)))
    (out / runs / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
