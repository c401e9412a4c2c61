"""DiffSign inference: DDIM in k steps against the full 1000-step DDPM chain, on one checkpoint.

    python bench/diffsign_sampling.py --checkpoint runs/diffsign/best.pt --manifest M.jsonl \
        --cache CACHE --split test --steps 1,5,10,50 [--device cpu]

For every sampler it decodes the split with the trainer's ``evaluate`` (greedy CTC) and prints the
WER, the decoding time and the speed ratio against DDPM (the baseline, measured in the same run),
and the WER difference to DDPM in points. DDIM is deterministic (eta 0); DDPM draws its noise from
a fixed seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
from cslr_pipe.training.trainer import evaluate, load_model, pick_device


def decode(checkpoint: Path, manifest: Path, cache: Path, split: str, steps: int, device: str):
    """(WER, seconds) of the split with ``sampling_steps=steps`` (0 = DDPM)."""
    model, state = load_model(checkpoint, device, {"sampling_steps": steps})
    dataset = CachedSequenceDataset(cache, manifest, state["vocabulary"], state["config"]["streams"], split=split)
    loader = DataLoader(dataset, batch_size=16, shuffle=False, collate_fn=collate_padded)
    torch.manual_seed(0)
    started = time.perf_counter()
    details, _, _ = evaluate(model, loader, state["vocabulary"], device)
    return details.wer, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", default="1,5,10,50", help="DDIM step counts to compare with DDPM")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    ddpm_wer, ddpm_seconds = decode(args.checkpoint, args.manifest, args.cache, args.split, 0, device)
    print("| sampler | steps | WER | WER - DDPM (points) | seconds | speed vs DDPM |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| DDPM (baseline) | 1000 | {100 * ddpm_wer:.1f}% | 0.0 | {ddpm_seconds:.1f} | 1.0x |")
    for k in (int(s) for s in args.steps.split(",")):
        wer, seconds = decode(args.checkpoint, args.manifest, args.cache, args.split, k, device)
        print(f"| DDIM | {k} | {100 * wer:.1f}% | {100 * (wer - ddpm_wer):+.1f} | {seconds:.1f} "
              f"| {ddpm_seconds / seconds:.0f}x |")


if __name__ == "__main__":
    main()
