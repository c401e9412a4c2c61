"""DiffSign stage-2 probes: one stage 1, then stage-2 variants on top of it; dev WER at DDIM-1/4/10.

    python bench/trainers.py --out /tmp/runs/bench-ctc-acdr --models ctc     # makes the corpus
    python bench/diffsign_probe.py --name I --steps 1200 --opt null_memory=false

Trains stage 1 (``--stage1-epochs``, Adam 1e-3, cosine, batch 16) once into
``WORK/stage1-eN.pt`` and reuses it; then trains stage 2 for ``--steps`` steps (Adam ``--lr``,
cosine) with the model options ``--opt KEY=VALUE`` over the sizes of :data:`BASE` and the model's
defaults, and prints the mean losses and the dev WER of DDIM-1/4/10 (x_T seed 0) every
``--eval-every`` steps. This made the variant table of docs/benchmarks.md (at commit c6b609f, when
stage 1 was the baseline's encoder feeding the decoder; it runs on today's model too).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from cslr_pipe.pipeline.cli import parse_options
from cslr_pipe.features.manifest import read_vocabulary
from cslr_pipe.training.models.diffsign import SIZES
from cslr_pipe.training.trainer import (Run, TrainConfig, build_model, evaluate, input_dims, make_loader,
                                        start_epoch)

BASE = SIZES["cpu"]


def fit(model, loader, steps: int, lr: float, first_epoch: int, every: int = 0, report=None) -> None:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    step, epoch = 0, first_epoch
    totals: dict[str, float] = {}
    while step < steps:
        model.train()
        start_epoch(loader, epoch)
        epoch += 1
        for batch in loader:
            losses = model(batch)
            optimizer.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            step += 1
            if report and (step % every == 0 or step == steps):
                report(step, {k: v / (every or 1) for k, v in totals.items()})
                totals.clear()
            if step == steps:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/runs/bench-ctc-acdr/corpus"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/exp"))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--stage1-epochs", type=int, default=12)
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="a model option")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rescale", type=float, nargs=2, default=[1.0, 1.0], help="stage-2 augmentation")
    parser.add_argument("--feature-dropout", type=float, default=0.0, help="stage-2 augmentation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    vocabulary = read_vocabulary(args.corpus / "manifest.vocab.json")
    run = Run(args.corpus / "manifest.jsonl", vocabulary, args.corpus / "cache", args.work)
    config = TrainConfig.for_model("diffsign", streams=["features.synthetic"], batch_size=16, seed=0,
                                   model_options={**BASE, **parse_options(args.opt)})
    torch.manual_seed(0)
    train_loader = make_loader(run, config, "train", True)
    dev_loader = make_loader(run, replace(config, batch_size=32), "dev", False)
    model = build_model(config, input_dims(train_loader.dataset, config.streams), len(vocabulary))

    stage1 = args.work / f"stage1-e{args.stage1_epochs}.pt"
    if not stage1.exists():
        model.set_phase("stage1")
        fit(model, train_loader, args.stage1_epochs * len(train_loader), 1e-3, 0)
        torch.save(model.state_dict(), stage1)
    missing, _ = model.load_state_dict(torch.load(stage1, weights_only=True), strict=False)
    print(f"stage 2 parameters not in stage 1's checkpoint (fresh): {missing}")
    model.set_phase("stage1")
    print(f"stage 1's reading: dev WER {100 * evaluate(model, dev_loader, vocabulary, 'cpu')[0].wer:.1f}%")

    model.set_phase("stage2")
    loader = make_loader(run, replace(config, rescale=args.rescale, feature_dropout=args.feature_dropout),
                         "train", True)
    started = time.time()

    def report(step, losses):
        wers = []
        for k in (1, 4, 10):
            model.config.sampling_steps = k
            wers.append(f"DDIM-{k} {100 * evaluate(model, dev_loader, vocabulary, 'cpu')[0].wer:.1f}")
        print(f"[{args.name}] step {step} ({time.time() - started:.0f} s) "
              + " ".join(f"{k} {v:.3f}" for k, v in losses.items()) + " | dev " + ", ".join(wers), flush=True)

    fit(model, loader, args.steps, args.lr, 100, args.eval_every, report)
    torch.save(model.state_dict(), args.work / f"{args.name}.pt")


if __name__ == "__main__":
    main()
