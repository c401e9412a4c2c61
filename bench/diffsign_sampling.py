"""DiffSign inference: DDIM in k steps against the full 1000-step DDPM chain, on one checkpoint.

    python bench/diffsign_sampling.py --checkpoint runs/diffsign/best.pt --manifest M.jsonl \\
        --cache CACHE --split test --steps 1,4,10 --seeds 3 [--device cpu] [--threads 1]

For every sampler it decodes the split once per x_T seed (``sampling_seed`` 0..seeds-1, each
video's x_T drawn from the seed and its id) with greedy CTC and prints the WER's mean and spread
over the seeds, the decoding time of one pass and the speed ratio against DDPM (the baseline,
measured in the same run), and the WER difference to DDPM in points. DDIM is deterministic given
x_T (eta 0); DDPM also draws each step's noise from the seed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cslr_pipe.pipeline.cli import parse_options
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
from cslr_pipe.training.evaluation import decode_seeds
from cslr_pipe.training.metrics import wer
from cslr_pipe.training.trainer import load_model, pick_device


def decode(checkpoint: Path, manifest: Path, cache: Path, split: str, steps: int, seeds: int, device: str,
           options: dict | None = None):
    """(WER per seed, seconds per pass) of the split with ``sampling_steps=steps`` (0 = DDPM)."""
    model, state = load_model(checkpoint, device, {**(options or {}), "sampling_steps": steps})
    dataset = CachedSequenceDataset(cache, manifest, state["vocabulary"], state["config"]["streams"], split=split)
    loader = DataLoader(dataset, batch_size=16, shuffle=False, collate_fn=collate_padded)
    started = time.perf_counter()
    runs, refs = decode_seeds(model, loader, state["vocabulary"], device, 1, list(range(seeds)))
    seconds = (time.perf_counter() - started) / seeds
    ids = sorted(refs)
    return [wer([refs[i] for i in ids], [hyps[i] for i in ids]) for hyps in runs.values()], seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", default="1,4,10", help="DDIM step counts to compare with DDPM")
    parser.add_argument("--seeds", type=int, default=3, help="x_T seeds per sampler")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an inference option of the model (repeatable), e.g. rescore=false")
    args = parser.parse_args(argv)
    options = parse_options(args.model_option)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows = [("DDPM (baseline)", 1000, *decode(args.checkpoint, args.manifest, args.cache, args.split, 0,
                                              args.seeds, device, options))]
    for k in (int(s) for s in args.steps.split(",")):
        rows.append(("DDIM", k, *decode(args.checkpoint, args.manifest, args.cache, args.split, k, args.seeds,
                                        device, options)))
    ddpm_wer, ddpm_seconds = statistics.mean(rows[0][2]), rows[0][3]
    print(f"{args.manifest.name}, {args.split} split, {args.seeds} x_T seeds per sampler, options {options}, "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {device}")
    print("| sampler | steps | WER (mean ± sd over seeds) | per seed | WER - DDPM (points) | seconds per pass "
          "| speed vs DDPM |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, steps, wers, seconds in rows:
        mean = statistics.mean(wers)
        spread = statistics.stdev(wers) if len(wers) > 1 else 0.0
        print(f"| {name} | {steps} | {100 * mean:.1f} ± {100 * spread:.1f}% | "
              f"{', '.join(f'{100 * w:.1f}' for w in wers)} | {100 * (mean - ddpm_wer):+.1f} | {seconds:.1f} | "
              f"{ddpm_seconds / seconds:.0f}x |")


if __name__ == "__main__":
    main()
