"""Recognition models on the synthetic feature corpus: dev / test WER, training time, throughput.

    python bench/trainers.py --out runs/bench-trainers --models ctc,diffsign,acdr \
        [--epochs N] [--device cpu] [--threads 1]

Generates the feature-level synthetic corpus (``make_feature_corpus``, default spec) under
``OUT/corpus``, or reuses it when one generated with the same spec is there. Then, for every model
in ``--models``, trains it with its settings from :data:`SETTINGS` through
``cslr_pipe.training.trainer.train`` into ``OUT/<model>`` (a fresh run: an earlier run folder is
replaced), keeps the checkpoint with the best dev WER (the trainer selects on dev; test is only
decoded, never used for selection), decodes dev and test with it and prints a table:

    model | dev WER | test WER | train s | sequences/s | epochs | best epoch

``train s`` is the wall time of ``train`` (every epoch's training pass and its dev decoding);
``sequences/s`` is train sequences x epochs / train s. Results (and settings, versions, the
corpus spec) go to ``OUT/results.json``. A model name the trainer does not know (not registered
yet) or a model that fails is reported in the table and the JSON, and the others still run;
the exit status is 1 when any requested model did not produce a result.

Calibration. The default corpus spec and the ``ctc`` settings below were tuned (on dev; test only
reported) so that the CTC baseline reaches a test WER of at most 15 %, but not ~0 %, in a few
minutes on 2 busy CPU cores. Measured with ``--device cpu --threads 1`` (torch 2.14.1):

    corpus spec                      ctc settings           dev WER  test WER  train s
    first draft (see below)          hidden 128, 30 ep.     0.5 %    -  (too easy; stopped at ep. 21)
    num_train 400, harder spec       hidden 128, 20 ep.     21.5 %   22.9 %    44
    default (600 train, harder)      hidden 128, 30 ep.     8.6 %    10.4 %    74-88
      the same, training --seed 1                           9.3 %    10.4 %    88
      the same, --corpus-seed 1                             11.5 %   9.4 %     86

first draft = noise 0.3, family_similarity 0.6, key_jitter 0.15, distortion 0.15, offset 0.2,
detour_prob 0.3; "harder" = noise 0.5, family_similarity 0.8, key_jitter 0.3, distortion 0.3, offset 0.3,
detour_prob 0.4 (the defaults now). On shared cores pass ``--threads 1``: with 1 thread a ctc epoch
(train pass + dev decoding) took 2.1-3.5 s; a first run with torch's default of one thread per core,
while other jobs loaded the machine, had epochs of 3.5-134 s.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cslr_pipe.pipeline.cli import parse_options
from cslr_pipe.pipeline.manifest import read_vocabulary
from cslr_pipe.pipeline.synthetic_features import (STREAM, FeatureCorpusSpec, corpus_matches,
                                                   make_feature_corpus)
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
from cslr_pipe.training.evaluation import decode_seeds, is_stochastic
from cslr_pipe.training.metrics import wer
from cslr_pipe.training.trainer import MODELS, Run, TrainConfig, load_model, train

# Per-model TrainConfig fields (model, streams, seed, device and beam width are filled in); they
# override the model's registered defaults (TrainConfig.for_model), model_options merge. Sized for
# a few minutes on 2 CPU cores: the papers' sizes (hidden 512, a 12-layer DiT) are GPU settings.
# Only "ctc" is calibrated (see the module docstring); the others are starting points.
SETTINGS: dict[str, dict] = {
    "ctc": {"epochs": 30, "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
            "model_options": {"hidden": 128, "lstm_layers": 2, "dropout": 0.1}},
    # stage 1 15 epochs, stage 2 50 (about 1900 DiT steps); every other option is the model's default
    "diffsign": {"epochs": 65, "batch_size": 16, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                 "lr_schedule": "cosine",
                 "model_options": {"hidden": 128, "heads": 4, "gloss_layers": 1, "decoder_layers": 2,
                                   "dit_layers": 4, "gloss_tokens": 16, "dropout": 0.1, "stage1_fraction": 0.23}},
    "acdr": {"epochs": 30, "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
             "model_options": {"hidden": 128, "lstm_layers": 2, "dropout": 0.1, "heads": 4}},
}
DEFAULT_SETTINGS: dict = {}  # models not listed above: their registered defaults


def known_models() -> set[str]:
    import cslr_pipe.training.models  # noqa: F401  (registers the built-in models)

    return set(MODELS)


def config_for(model: str, args, seed: int) -> TrainConfig:
    settings = copy.deepcopy(SETTINGS.get(model, DEFAULT_SETTINGS))
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    settings.setdefault("model_options", {}).update(parse_options(args.model_option))
    return TrainConfig.for_model(model, streams=[STREAM], seed=seed, device=args.device,
                                 beam_width=args.beam_width, **settings)


def score(checkpoint: Path, manifest: Path, cache: Path, split: str, device: str, beam_width: int,
          samples: int, phase: str | None = None) -> list[float]:
    """WER of a split decoded with a checkpoint: one per x_T seed for a model that samples (DiffSign
    after stage 1), else one. ``phase`` sets the model's phase first ("stage1": DiffSign's decoder on V)."""
    model, state = load_model(checkpoint, device)
    if phase:
        model.set_phase(phase)
    dataset = CachedSequenceDataset(cache, manifest, state["vocabulary"], state["config"]["streams"],
                                    split=split)
    loader = DataLoader(dataset, batch_size=32, shuffle=False, collate_fn=collate_padded)
    seeds = list(range(samples)) if is_stochastic(model) else [None]
    runs, refs = decode_seeds(model, loader, state["vocabulary"], device, beam_width, seeds)
    dataset.close()
    ids = sorted(refs)
    return [wer([refs[i] for i in ids], [hyps[i] for i in ids]) for hyps in runs.values()]


def run_model(model: str, seed: int, args, manifest: Path, vocabulary: list[str], num_train: int) -> dict:
    config = config_for(model, args, seed)
    out = args.out / f"{model}-seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    log = print if args.verbose else (lambda _: None)
    started = time.perf_counter()
    summary = train(config, Run(manifest, vocabulary, args.out / "corpus" / "cache", out), log=log)
    seconds = time.perf_counter() - started
    checkpoint = Path(summary["checkpoint"])
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    cache = args.out / "corpus" / "cache"
    dev, test = (score(checkpoint, manifest, cache, split, device, args.beam_width, args.samples)
                 for split in ("dev", "test"))
    extra = {}
    if model == "diffsign":  # what stage 2 has to match: the same checkpoint's decoder on V
        extra = {f"stage1_{split}_wer": score(checkpoint, manifest, cache, split, device, args.beam_width, 1,
                                              "stage1")[0] for split in ("dev", "test")}
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last_phase = [h for h in history if h.get("phase") == history[-1].get("phase")]  # best.pt's phase
    best_epoch = min(last_phase, key=lambda h: h["dev_wer"])["epoch"]
    return {"model": model, "seed": seed, "status": "ok", "dev_wer": float(np.mean(dev)), "test_wer": float(np.mean(test)),
            "dev_wer_per_x_T_seed": dev, "test_wer_per_x_T_seed": test, **extra,
            "train_seconds": round(seconds, 1),
            "sequences_per_second": round(num_train * summary["epochs"] / seconds, 1),
            "epochs": summary["epochs"], "best_epoch": best_epoch, "checkpoint": str(checkpoint),
            "config": asdict(config)}


def table(results: list[dict]) -> str:
    """One row per run, then per model over its seeds: mean and spread (sample standard deviation)."""
    lines = ["| model | seed | dev WER | test WER | train s | sequences/s | epochs | best epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r.get('seed', '')} | {r['status']}: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['seed']} | {100 * r['dev_wer']:.1f}% | {100 * r['test_wer']:.1f}% | "
                     f"{r['train_seconds']:.0f} | {r['sequences_per_second']:.0f} | {r['epochs']} | "
                     f"{r['best_epoch']} |")
        if len(r["test_wer_per_x_T_seed"]) > 1:
            lines.append(f"| ... per x_T seed | | {', '.join(f'{100 * w:.1f}' for w in r['dev_wer_per_x_T_seed'])} | "
                         f"{', '.join(f'{100 * w:.1f}' for w in r['test_wer_per_x_T_seed'])} | | | | |")
        if "stage1_test_wer" in r:
            lines.append(f"| ... its stage-1 decoder on V | | {100 * r['stage1_dev_wer']:.1f}% | "
                         f"{100 * r['stage1_test_wer']:.1f}% | | | | |")
    for model in dict.fromkeys(r["model"] for r in results):
        done = [r for r in results if r["model"] == model and r["status"] == "ok"]
        if len(done) > 1:
            dev, test = (100 * np.array([r[k] for r in done]) for k in ("dev_wer", "test_wer"))
            lines.append(f"| {model} | mean of {len(done)} | {dev.mean():.1f} ± {dev.std(ddof=1):.1f}% | "
                         f"{test.mean():.1f} ± {test.std(ddof=1):.1f}% | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-trainers"))
    parser.add_argument("--models", default="ctc", help="comma-separated, e.g. ctc,diffsign,acdr")
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--beam-width", type=int, default=1, help="1 = greedy CTC decoding")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated: one run per model and seed")
    parser.add_argument("--samples", type=int, default=3,
                        help="x_T seeds a sampling model (diffsign) is decoded with; its WER is their mean")
    parser.add_argument("--corpus-seed", type=int, default=0)
    parser.add_argument("--train-sentences", type=int, default=None,
                        help="override the spec's num_train (a smaller, quicker corpus)")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model option of every model (repeatable), e.g. memory=decoder")
    parser.add_argument("--verbose", action="store_true", help="print every epoch")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    print(f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    spec = FeatureCorpusSpec(seed=args.corpus_seed)
    if args.train_sentences:
        spec = FeatureCorpusSpec(seed=args.corpus_seed, num_train=args.train_sentences)
    corpus = args.out / "corpus"
    started = time.perf_counter()
    if corpus_matches(corpus, spec):
        print(f"corpus: reusing {corpus}")
    else:
        make_feature_corpus(corpus, spec)
        print(f"corpus: generated {corpus} in {time.perf_counter() - started:.1f} s")
    manifest = corpus / "manifest.jsonl"
    vocabulary = read_vocabulary(corpus / "manifest.vocab.json")
    print(f"{spec.num_train} train / {spec.num_dev} dev / {spec.num_test} test sentences, "
          f"{len(vocabulary) - 1} glosses, [T, {spec.dim}] features")

    registered = known_models()
    results = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for model, seed in ((m, s) for m in models for s in seeds):
        if model not in registered:
            message = f"not registered with the trainer (known: {', '.join(sorted(registered))})"
            print(f"{model}: skipped, {message}", flush=True)
            results.append({"model": model, "seed": seed, "status": "skipped", "error": message})
            continue
        print(f"{model} seed {seed}: training ...", flush=True)
        try:
            result = run_model(model, seed, args, manifest, vocabulary, spec.num_train)
        except Exception as error:  # one model failing must not stop the others
            traceback.print_exc()
            results.append({"model": model, "seed": seed, "status": "failed",
                            "error": f"{type(error).__name__}: {error}"})
            continue
        print(f"{model} seed {seed}: dev WER {100 * result['dev_wer']:.1f}%, test WER "
              f"{100 * result['test_wer']:.1f}%, {result['train_seconds']:.0f} s", flush=True)
        results.append(result)

    print()
    print(table(results))
    report = {"command": " ".join(sys.argv), "python": platform.python_version(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "corpus": str(corpus), "spec": asdict(spec), "settings": SETTINGS, "results": results}
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults: {args.out / 'results.json'}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
