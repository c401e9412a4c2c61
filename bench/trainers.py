"""Recognition models on the synthetic feature corpus: dev, test and shifted-test WER, training time.

    python bench/trainers.py --out runs/bench --corpus-seed 0 --models ctc,diffsign,acdr --seeds 0,1,2 \
        [--epochs N] [--device cpu] [--threads 1]
    python bench/trainers.py --summarise runs/bench/results.json [OTHER/results.json ...]

Generates the feature-level synthetic corpus (``make_feature_corpus``, default spec, seed
``--corpus-seed``) under ``OUT/corpus``, or reuses it when one generated with the same spec is there,
and prints its split statistics. Then, for every model in ``--models`` and training seed in
``--seeds``, trains it with its settings from :data:`SETTINGS` through
``cslr_pipe.training.trainer.train`` into ``OUT/<model>-seed<k>`` (a fresh run: an earlier run
folder is replaced), keeps the checkpoint with the best dev WER (the trainer selects on dev; test
is only decoded, never used for selection), and decodes dev, the ordinary test split and the
shifted test split (``manifest-shifted.jsonl``: signers unseen in train, sentences off the training
grammar, longer sentences) with it. A model that samples (DiffSign) is decoded with ``--samples``
x_T seeds and its WER is their mean; for DiffSign the table adds its stage-1 reading, G' alone
(without rescoring), G' with the DiT's input x_t replaced by zeros, and the sentences where G'
(and the rescored output) differ from stage 1, corrected or broken. Results, settings, versions and
the corpus spec go to ``OUT/results.json`` (``results-TAG.json`` with ``--tag``); a model the trainer
does not know or one that fails is reported and the others still run (exit status 1).

``SETTINGS`` are the ctc baseline's, calibrated on dev of the generator-v1 corpus so that ctc
reached a test WER of at most 15 %, but not ~0 %, in a few minutes on 2 CPU cores; every model uses
them, so that all compare at the same epochs. On shared cores pass ``--threads 1``. The measured
tables are in docs/benchmarks.md.
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
from cslr_pipe.features.manifest import read_vocabulary
from cslr_pipe.pipeline.synthetic_features import (SHIFTED_MANIFEST, STREAM, FeatureCorpusSpec, corpus_matches,
                                                   make_feature_corpus, split_statistics)
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
from cslr_pipe.training.evaluation import decode_seeds, is_stochastic
from cslr_pipe.training.metrics import wer
from cslr_pipe.training.models import MODELS
from cslr_pipe.training.models.diffsign import SIZES as DIFFSIGN_SIZES
from cslr_pipe.training.trainer import Run, TrainConfig, load_model, train

# Per-model TrainConfig fields (model, streams, seed, device and beam width are filled in); they
# override the model's registered defaults (TrainConfig.for_model), model_options merge. Sized for
# a few minutes on 2 CPU cores: the papers' sizes (hidden 512, a 12-layer DiT) are GPU settings.
SETTINGS: dict[str, dict] = {
    "ctc": {"epochs": 30, "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
            "model_options": {"hidden": 128, "lstm_layers": 2, "dropout": 0.1}},
    # the ctc settings; stage 1 is the ctc baseline itself (it keeps learning in stage 2), the DiT on top
    "diffsign": {"epochs": 30, "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
                 "model_options": dict(DIFFSIGN_SIZES["cpu"])},
    "acdr": {"epochs": 30, "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
             "model_options": {"hidden": 128, "lstm_layers": 2, "dropout": 0.1, "heads": 4}},
}
DEFAULT_SETTINGS: dict = {}  # models not listed above: their registered defaults


def known_models() -> set[str]:
    return set(MODELS.names())


def config_for(model: str, args, seed: int) -> TrainConfig:
    settings = copy.deepcopy(SETTINGS.get(model, DEFAULT_SETTINGS))
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    if args.init_from_ctc and model == "diffsign":
        settings["init_from"] = str(args.out / f"ctc-seed{seed}" / "best.pt")
    settings.setdefault("model_options", {}).update(parse_options(args.model_option))
    return TrainConfig.for_model(model, streams=[STREAM], seed=seed, device=args.device,
                                 beam_width=args.beam_width, **settings)


def decode(checkpoint: Path, manifest: Path, cache: Path, split: str, device: str, beam_width: int,
           samples: int, phase: str | None = None, options: dict | None = None) -> tuple[dict, dict]:
    """Hypotheses of a split decoded with a checkpoint ({x_T seed or None: {id: glosses}}: one run per
    seed for a model that samples, DiffSign after stage 1) and the references. ``phase`` sets the
    model's phase first ("stage1": DiffSign's stage-1 reading); ``options`` override model options."""
    model, state = load_model(checkpoint, device, options)
    if phase:
        model.set_phase(phase)
    dataset = CachedSequenceDataset(cache, manifest, state["vocabulary"], state["config"]["streams"],
                                    split=split)
    loader = DataLoader(dataset, batch_size=32, shuffle=False, collate_fn=collate_padded)
    seeds = list(range(samples)) if is_stochastic(model) else [None]
    runs, refs = decode_seeds(model, loader, state["vocabulary"], device, beam_width, seeds)
    dataset.close()
    return runs, refs


def corpus_wer(hyps: dict, refs: dict) -> float:
    ids = sorted(refs)
    return wer([refs[i] for i in ids], [hyps[i] for i in ids])


def generation_effect(generated: dict, stage1: dict, refs: dict) -> dict:
    """What generation changes against stage 1's reading: the share of sentences where G' decodes to
    other glosses, and of those, how many it corrects (fewer errors than stage 1) and breaks (more)."""
    errors = lambda hyp, ref: round(wer([ref], [hyp]) * len(ref))  # noqa: E731
    differ = [i for i in refs if generated[i] != stage1[i]]
    corrects = sum(errors(generated[i], refs[i]) < errors(stage1[i], refs[i]) for i in differ)
    breaks = sum(errors(generated[i], refs[i]) > errors(stage1[i], refs[i]) for i in differ)
    return {"sentences": len(refs), "differ": len(differ), "corrects": corrects, "breaks": breaks}


TEST_SPLITS = {"test": "manifest.jsonl", "shifted": SHIFTED_MANIFEST}  # both score the split "test"


def run_model(model: str, seed: int, args, corpus: Path, vocabulary: list[str], num_train: int) -> dict:
    config = config_for(model, args, seed)
    out = corpus.parent / f"{model}{'-' + args.tag if args.tag else ''}-seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    log = print if args.verbose else (lambda _: None)
    cache = corpus / "cache"
    started = time.perf_counter()
    summary = train(config, Run(corpus / "manifest.jsonl", vocabulary, cache, out), log=log)
    seconds = time.perf_counter() - started
    checkpoint = Path(summary["checkpoint"])
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    wers, extra = {}, {}
    for name, manifest in {"dev": "manifest.jsonl", **TEST_SPLITS}.items():
        split = "dev" if name == "dev" else "test"
        runs, refs = decode(checkpoint, corpus / manifest, cache, split, device, args.beam_width, args.samples)
        wers[name] = [corpus_wer(hyps, refs) for hyps in runs.values()]
        if model != "diffsign" or name == "dev":
            continue
        stage1, _ = decode(checkpoint, corpus / manifest, cache, split, device, args.beam_width, 1, "stage1")
        generated, _ = decode(checkpoint, corpus / manifest, cache, split, device, args.beam_width, args.samples,
                              options={"rescore": False})
        zeros, _ = decode(checkpoint, corpus / manifest, cache, split, device, args.beam_width, 1,
                          options={"rescore": False, "dit_input": "zeros"})
        extra[f"stage1_{name}_wer"] = corpus_wer(stage1[None], refs)
        extra[f"generated_{name}_wer"] = float(np.mean([corpus_wer(hyps, refs) for hyps in generated.values()]))
        extra[f"zero_x_t_{name}_wer"] = corpus_wer(zeros[0], refs)
        extra[f"generation_{name}"] = generation_effect(generated[0], stage1[None], refs)
        extra[f"rescored_{name}"] = generation_effect(runs[0], stage1[None], refs)
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last_phase = [h for h in history if h.get("phase") == history[-1].get("phase")]  # best.pt's phase
    best_epoch = min(last_phase, key=lambda h: h["dev_wer"])["epoch"]
    return {"model": model, "corpus_seed": args.corpus_seed, "seed": seed, "status": "ok",
            **{f"{name}_wer": float(np.mean(values)) for name, values in wers.items()},
            **{f"{name}_wer_per_x_T_seed": values for name, values in wers.items()}, **extra,
            "train_seconds": round(seconds, 1),
            "sequences_per_second": round(num_train * summary["epochs"] / seconds, 1),
            "epochs": summary["epochs"], "best_epoch": best_epoch, "checkpoint": str(checkpoint),
            "config": asdict(config)}


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def table(results: list[dict]) -> str:
    """One row per run (DiffSign: its stage-1 reading, the zero-x_t ablation and what generation
    changes below it), then per model and corpus over the training seeds: mean ± sample sd."""
    lines = ["| model | corpus | seed | dev WER | test WER | shifted test WER | train s | epochs | best epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r.get('corpus_seed', '')} | {r.get('seed', '')} | "
                         f"{r['status']}: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['corpus_seed']} | {r['seed']} | {percent(r['dev_wer'])} | "
                     f"{percent(r['test_wer'])} | {percent(r['shifted_wer'])} | {r['train_seconds']:.0f} | "
                     f"{r['epochs']} | {r['best_epoch']} |")
        if len(r["test_wer_per_x_T_seed"]) > 1:
            per_seed = {k: ", ".join(f"{100 * w:.1f}" for w in r[f"{k}_wer_per_x_T_seed"])
                        for k in ("dev", "test", "shifted")}
            lines.append(f"| ... per x_T seed | | | {per_seed['dev']} | {per_seed['test']} | {per_seed['shifted']} | | | |")
        if "stage1_test_wer" in r:
            rows = {"its stage-1 reading (CTC head on V)": "stage1",
                    "G' alone (rescore=false), mean of the x_T seeds": "generated",
                    "G' alone, the DiT's input x_t replaced by zeros (x_T seed 0)": "zero_x_t"}
            for label, key in rows.items():
                lines.append(f"| ... {label} | | | | {percent(r[f'{key}_test_wer'])} | "
                             f"{percent(r[f'{key}_shifted_wer'])} | | | |")
            for label, key in (("G' alone", "generation"), ("the rescored output", "rescored")):
                cells = " | ".join(f"{e['differ']}/{e['sentences']} / {e['corrects']} / {e['breaks']}"
                                   for e in (r[f"{key}_test"], r[f"{key}_shifted"]))
                lines.append(f"| ... {label}: differs from stage 1 / corrects / breaks (x_T seed 0) | | | | {cells} | | | |")
    groups = dict.fromkeys((r["model"], r.get("corpus_seed")) for r in results)
    for model, corpus_seed in groups:
        done = [r for r in results if (r["model"], r.get("corpus_seed")) == (model, corpus_seed) and r["status"] == "ok"]
        if len(done) > 1:
            cells = []
            for key in ("dev_wer", "test_wer", "shifted_wer"):
                values = 100 * np.array([r[key] for r in done])
                cells.append(f"{values.mean():.1f} ± {values.std(ddof=1):.1f}%")
            lines.append(f"| {model} | {corpus_seed} | mean of {len(done)} | {' | '.join(cells)} | | | |")
            if "stage1_test_wer" in done[0]:
                for label, key in (("its stage-1 reading", "stage1"), ("G' alone", "generated")):
                    cells = [f"{100 * np.mean([r[f'{key}_{k}_wer'] for r in done]):.1f}%" for k in ("test", "shifted")]
                    lines.append(f"| ... {label} | {corpus_seed} | mean of {len(done)} | | {' | '.join(cells)} | | | |")
    return "\n".join(lines)


def summary(reports: list[dict]) -> str:
    """Per model (and tag) and corpus, over training seeds: mean ± sd of dev / test / shifted test WER;
    for DiffSign also its stage-1 reading, G' alone, the zero-x_t ablation, and what G' alone and the
    rescored output change against stage 1, summed over the runs (x_T seed 0)."""
    lines = ["| model | corpus | runs | dev WER | test WER | shifted test WER |", "|---|---:|---:|---:|---:|---:|"]
    effects = []
    for report in reports:
        tag = report.get("tag") or ""
        done = [r for r in report["results"] if r["status"] == "ok"]
        for model in dict.fromkeys(r["model"] for r in done):
            runs = [r for r in done if r["model"] == model]
            name, corpus = model + (f" ({tag})" if tag else ""), runs[0]["corpus_seed"]

            def cell(key):
                values = 100 * np.array([r[key] for r in runs])
                return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}%" if len(values) > 1 else f"{values[0]:.1f}%"
            lines.append(f"| {name} | {corpus} | {len(runs)} | {cell('dev_wer')} | {cell('test_wer')} | "
                         f"{cell('shifted_wer')} |")
            if "stage1_test_wer" not in runs[0]:
                continue
            for label, key in (("its stage-1 reading", "stage1"), ("G' alone (rescore=false)", "generated"),
                               ("G' alone, x_t replaced by zeros (x_T seed 0)", "zero_x_t")):
                lines.append(f"| ... {label} | {corpus} | {len(runs)} | | {cell(key + '_test_wer')} | "
                             f"{cell(key + '_shifted_wer')} |")
            for label, key in (("G' alone", "generation"), ("rescored output", "rescored")):
                cells = []
                for split in ("test", "shifted"):
                    total = {k: sum(r[f"{key}_{split}"][k] for r in runs) for k in ("sentences", "differ", "corrects", "breaks")}
                    cells.append(f"{total['differ']}/{total['sentences']} / {total['corrects']} / {total['breaks']}")
                effects.append(f"| {name}: {label} | {corpus} | {len(runs)} | {' | '.join(cells)} |")
    if effects:
        lines += ["", "| differs from stage 1 / corrects / breaks (sentences, summed over runs) | corpus | runs | "
                      "test | shifted test |", "|---|---:|---:|---:|---:|", *effects]
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
    parser.add_argument("--init-from-ctc", action="store_true",
                        help="diffsign starts from OUT/ctc-seed<seed>/best.pt (run ctc first, same --out)")
    parser.add_argument("--tag", default="", help="run folders <model>-TAG-seed<k> and results-TAG.json, for "
                                                  "variants beside the default runs in one --out")
    parser.add_argument("--verbose", action="store_true", help="print every epoch")
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="RESULTS_JSON",
                        help="only print the summary of earlier runs' results files (several corpora, tags)")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summary([json.loads(path.read_text()) for path in args.summarise]))
        return 0
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
    vocabulary = read_vocabulary(corpus / "manifest.vocab.json")
    print(f"{spec.num_train} train / {spec.num_dev} dev / {spec.num_test} test / {spec.num_shifted} shifted test "
          f"sentences, {len(vocabulary) - 1} glosses, [T, {spec.dim}] features")
    for split, numbers in split_statistics(spec).items():
        print(f"  {split}: {numbers['sentences']} sentences, {numbers['mean_glosses']:.2f} glosses on average, "
              f"{100 * numbers['rare_transitions']:.1f} % of the transitions rare under the grammar (p < 0.02)")

    registered = known_models()
    results = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for model, seed in ((m, s) for m in models for s in seeds):
        if model not in registered:
            message = f"not registered with the trainer (known: {', '.join(sorted(registered))})"
            print(f"{model}: skipped, {message}", flush=True)
            results.append({"model": model, "corpus_seed": args.corpus_seed, "seed": seed, "status": "skipped",
                            "error": message})
            continue
        print(f"{model} seed {seed}: training ...", flush=True)
        try:
            result = run_model(model, seed, args, corpus, vocabulary, spec.num_train)
        except Exception as error:  # one model failing must not stop the others
            traceback.print_exc()
            results.append({"model": model, "corpus_seed": args.corpus_seed, "seed": seed, "status": "failed",
                            "error": f"{type(error).__name__}: {error}"})
            continue
        print(f"{model} seed {seed}: dev WER {100 * result['dev_wer']:.1f}%, test WER "
              f"{100 * result['test_wer']:.1f}%, shifted test WER {100 * result['shifted_wer']:.1f}%, "
              f"{result['train_seconds']:.0f} s", flush=True)
        results.append(result)

    print()
    print(table(results))
    report = {"command": " ".join(sys.argv), "tag": args.tag, "python": platform.python_version(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "corpus": str(corpus), "spec": asdict(spec), "settings": SETTINGS, "results": results}
    results_file = args.out / (f"results-{args.tag}.json" if args.tag else "results.json")
    results_file.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults: {results_file}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
