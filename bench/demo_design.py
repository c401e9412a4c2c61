"""Choosing the demo: what each stage costs per video, and what each model/stream choice learns.

    python bench/demo_design.py --out runs/demo-design --videos 96 --test-fraction 0.2 \
        --rows ctc:features.keypoint+features.rgb,ctc:features.flow [--epochs 40] [--workers 2]

1. Renders the synthetic demo corpus (``make_corpus``: ``--videos``, ``--dev-fraction``,
   ``--test-fraction``, ``--repeat-gap``) under OUT/corpus and times it.
2. Runs the stages of ``--workflow`` (default workflows/demo-fusion.yaml: probe, MediaPipe keypoints, DIS flow, and random
   ResNet-18 features of rgb, keypoint heatmaps and flow) one stage at a time on a local dask
   cluster of ``--workers`` workers (one thread each), as the demo does, and prints each stage's
   wall time and seconds per video.
3. Trains every row (``MODEL:STREAM+STREAM``, the demo's training settings unless ``--epochs`` /
   ``--batch-size`` / ``--lr`` / ``--hidden`` say otherwise) and prints its best dev WER, its test
   WER, the test words (one error = 100/words points), how many test and train sentences with a
   repeated gloss (``A A``) decode exactly, and the training seconds; then the chance and majority
   baselines of :mod:`cslr_pipe.training.baselines` on the same test sentences.

Results go to OUT/results.json as well.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def repeated(glosses) -> bool:
    return any(a == b for a, b in zip(glosses, glosses[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=96)
    parser.add_argument("--dev-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--repeat-gap", type=float, default=None, help="CorpusSpec.repeat_gap (default: its own)")
    parser.add_argument("--rows", default="ctc:features.keypoint+features.rgb")
    parser.add_argument("--stages", default="probe,keypoints,flow,features.rgb,features.keypoint,features.flow")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--workflow", type=Path, default=None,
                        help="stages and training settings [default: the packaged workflows/demo-fusion.yaml]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from cslr_pipe.pipeline.dag import load_workflow, run_workflow
    from cslr_pipe.pipeline.demo import demo_workflow_path
    from cslr_pipe.features.manifest import read_manifest, read_vocabulary
    from cslr_pipe.pipeline.runner import RunOptions
    from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus
    from cslr_pipe.training.baselines import chance_wer, majority_wer
    from cslr_pipe.training.evaluation import decode_seeds, load_for_decoding
    from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
    from cslr_pipe.training.metrics import wer_details
    from cslr_pipe.training.trainer import Run, TrainConfig, train
    from torch.utils.data import DataLoader

    out = args.out.resolve()
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "stages": {}, "rows": {}}
    spec_args = {"num_videos": args.videos, "dev_fraction": args.dev_fraction, "test_fraction": args.test_fraction}
    if args.repeat_gap is not None:
        spec_args["repeat_gap"] = args.repeat_gap
    started = time.perf_counter()
    manifest = make_corpus(out / "corpus", CorpusSpec(**spec_args))
    results["corpus_seconds"] = round(time.perf_counter() - started, 1)
    rows = read_manifest(manifest)
    print(f"corpus: {len(rows)} videos in {results['corpus_seconds']} s "
          f"({results['corpus_seconds'] / len(rows):.2f} s/video)", flush=True)

    workflow = load_workflow(args.workflow or demo_workflow_path(fusion=True))
    workflow.cluster = {"kind": "local", "n_workers": args.workers, "threads_per_worker": 1}
    options = RunOptions(out=out / "cache", root=manifest.parent, shard_size=workflow.shard_size,
                         compression=workflow.compression, device="cpu", progress=False)
    all_stages = workflow.stages
    for stage in args.stages.split(","):
        workflow.stages = {stage: all_stages[stage]}
        started = time.perf_counter()
        run_workflow(workflow, rows, options, progress=False)
        seconds = time.perf_counter() - started
        results["stages"][stage] = round(seconds, 1)
        print(f"stage {stage}: {seconds:.1f} s, {seconds / len(rows):.2f} s/video", flush=True)

    vocabulary = read_vocabulary(manifest.parent / "vocabulary.json")
    by_split = {split: [r for r in rows if r.split == split] for split in ("train", "dev", "test")}
    test_words = sum(len(r.glosses) for r in by_split["test"])
    demo_train = dict(load_workflow(args.workflow or demo_workflow_path()).train)
    for spec in args.rows.split(","):
        model, streams = spec.split(":")
        settings = {**demo_train, "model": model, "streams": streams.split("+"), "seed": args.seed, "device": "cpu"}
        if model != demo_train["model"]:  # the workflow's model options are for its own model
            settings["model_options"] = {"hidden": demo_train.get("model_options", {}).get("hidden", 128)}
        for key in ("epochs", "batch_size", "lr"):
            if getattr(args, key) is not None:
                settings[key] = getattr(args, key)
        if args.hidden is not None:
            settings["model_options"] = {**settings.get("model_options", {}), "hidden": args.hidden}
        config = TrainConfig.for_model(settings.pop("model"), **settings)
        run_dir = out / "runs" / spec.replace(":", "-").replace("+", "_")
        started = time.perf_counter()
        summary = train(config, Run(manifest, vocabulary, options.out, run_dir), log=lambda _: None)
        seconds = time.perf_counter() - started
        model_, vocab, model_streams, beam = load_for_decoding(Path(summary["checkpoint"]), "cpu")
        row = {"best_dev_wer": summary["best_dev_wer"], "train_seconds": round(seconds, 1)}
        for split in ("train", "test"):
            data = CachedSequenceDataset(options.out, manifest, vocab, model_streams, split=split)
            runs, refs = decode_seeds(model_, DataLoader(data, batch_size=8, collate_fn=collate_padded), vocab,
                                      "cpu", beam, [None])
            data.close()
            hyps = runs[None]
            ids = sorted(refs)
            row[f"{split}_wer"] = wer_details([refs[i] for i in ids], [hyps[i] for i in ids]).wer
            with_repeat = [i for i in ids if repeated(refs[i])]
            row[f"{split}_repeats"] = f"{sum(hyps[i] == refs[i] for i in with_repeat)}/{len(with_repeat)}"
        results["rows"][spec] = row
        print(f"{spec}: dev {100 * row['best_dev_wer']:.1f}%, test {100 * row['test_wer']:.1f}% of {test_words} "
              f"words, train {100 * row['train_wer']:.1f}%; exact repeats test {row['test_repeats']}, train "
              f"{row['train_repeats']}; {seconds:.0f} s", flush=True)
    train_sentences = [r.glosses for r in by_split["train"]]
    test_sentences = [r.glosses for r in by_split["test"]]
    results["chance_wer"] = chance_wer(train_sentences, test_sentences)
    results["majority_wer"] = majority_wer(train_sentences, test_sentences)
    print(f"baselines on the {len(test_sentences)} test sentences: chance {100 * results['chance_wer']:.1f}%, "
          f"majority sentence {100 * results['majority_wer']:.1f}%")
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
