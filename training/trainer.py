"""The training loop shared by every model: read cached sequences, optimise, evaluate WER, save.

Linear, top to bottom (nanoGPT style): build data, model and optimiser from a TrainConfig; each
epoch trains, then decodes dev and keeps the checkpoint with the lowest dev WER. Every number goes
to ``RUN_DIR/log.jsonl`` and to TensorBoard event files beside it (`tensorboard --logdir RUN_DIR`),
the curves to ``RUN_DIR/curves.png``. A model is a torch Module with ``losses(batch) -> dict``
(its entry "loss" is optimised) and ``recognize(batch) -> (log_probs [B, T, C], lengths [B])``,
built by name from :data:`MODELS`; ``forward(batch)`` returns the losses (DistributedDataParallel
calls it).

A model may train in phases (DiffSign: stage 1, then stage 2 with parts frozen): it then has
``phases(epochs) -> [(name, epochs), ...]`` and ``set_phase(name)``, and every phase gets a fresh
optimiser and learning-rate schedule over the parameters that still require gradients; ``best.pt``
is the checkpoint with the lowest dev WER within the last phase.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.files import atomic_writer
from cslr_pipe.features.registry import checked_options
from cslr_pipe.features.store import Cache
from cslr_pipe.features.weights import CheckpointError, load_torch_file
from cslr_pipe.training import distributed
from cslr_pipe.training.data import (Augmentation, CachedSequenceDataset, LengthBucketSampler, collate_padded,
                                     resolve_streams)
from cslr_pipe.training.decoding import beam_search_decode, greedy_decode
from cslr_pipe.training.metrics import WERDetails, wer_details
from cslr_pipe.training.models import MODELS

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint."""

    model: str = "ctc"
    streams: list[str] = field(default_factory=lambda: ["features.rgb"])
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    num_workers: int = 0
    beam_width: int = 1  # 1 = greedy decoding
    optimizer: str = "adamw"  # "adamw" or "adam" (L2 weight decay, as DiffSign uses)
    lr_schedule: str = "cosine"  # "cosine" or "step" (x lr_gamma at lr_milestones) per phase
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.85])  # fractions of a phase
    lr_gamma: float = 0.2
    rescale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # temporal rescaling range; [1, 1] = off
    feature_dropout: float = 0.0  # probability of zeroing a feature channel of a training item
    bucket_multiplier: int = 50  # length buckets: sort pools of this many batches by length; 1 = random batches
    init_from: str = ""  # a checkpoint whose weights the model starts from (DiffSign: a trained ctc run)
    model_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "step"):
            raise InputError(f"lr_schedule must be 'cosine' or 'step', got {self.lr_schedule!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return checked_options("training", cls, data)

    @classmethod
    def for_model(cls, model: str, **given) -> "TrainConfig":
        """Defaults of the dataclass, overridden by the model's registered defaults, then by
        ``given`` (entries that are None are left to the defaults; model options merge)."""
        check_model(model)
        defaults = MODEL_DEFAULTS.get(model, {})
        given = {k: v for k, v in given.items() if v is not None}
        options = {**defaults.get("model_options", {}), **given.pop("model_options", {})}
        return cls.from_dict({**defaults, **given, "model": model, "model_options": options})


OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
ModelBuilder = Callable[[TrainConfig, dict[str, int], int], torch.nn.Module]  # (config, dims, classes)
MODEL_DEFAULTS: dict[str, dict] = {}  # TrainConfig defaults of models registered with defaults


def register_model(name: str, builder: ModelBuilder, defaults: dict | None = None) -> None:
    """Make a model available to `cslr-pipe train NAME` beside the built-in ones of :data:`MODELS`;
    ``defaults`` are its TrainConfig defaults."""
    MODELS.register(name, builder)
    MODEL_DEFAULTS[name] = dict(defaults or {})


def check_model(name: str) -> None:
    """An InputError naming the known models when ``name`` is none of them."""
    if name not in MODELS.names():
        raise InputError(f"unknown model {name!r}; known: {', '.join(MODELS.names())}")


def build_model(config: TrainConfig, input_dims: dict[str, int], num_classes: int) -> torch.nn.Module:
    """The model ``config.model``; importing a built-in model's module only now."""
    check_model(config.model)
    return MODELS.factory(config.model)(config, input_dims, num_classes)


def training_phases(model: torch.nn.Module, epochs: int) -> list[tuple[str, int]]:
    """The model's phases as (name, epochs); one phase "train" for models without phases."""
    if not hasattr(model, "phases"):
        return [("train", epochs)]
    phases = [(name, n) for name, n in model.phases(epochs) if n > 0]
    if sum(n for _, n in phases) != epochs:
        raise ValueError(f"{type(model).__name__}.phases({epochs}) gives {phases}, not {epochs} epochs")
    return phases


def phase_of(phases: list[tuple[str, int]], epoch: int) -> tuple[str, int, int]:
    """(name, first epoch, epochs) of the phase that ``epoch`` belongs to."""
    start = 0
    for name, n in phases:
        if epoch < start + n:
            return name, start, n
        start += n
    raise ValueError(f"epoch {epoch} is past the last phase")


def make_optimizer(model: torch.nn.Module, config: TrainConfig, epochs: int):
    """Optimiser over the parameters that require gradients, and its per-epoch schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay)
    if config.lr_schedule == "step":
        milestones = sorted({max(1, round(f * epochs)) for f in config.lr_milestones})
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, config.lr_gamma)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def to_device(batch: dict, device: str) -> dict:
    """Move every tensor of a collated batch (also inside dicts) to ``device``."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            moved[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        else:
            moved[key] = value
    return moved


def decode_batch(log_probs: torch.Tensor, lengths: torch.Tensor, beam_width: int = 1) -> list[list[int]]:
    """CTC token ids per sequence (blank 0): greedy, or prefix beam search when beam_width > 1."""
    log_probs, lengths = log_probs.float().cpu(), lengths.cpu()
    if beam_width <= 1:
        return greedy_decode(log_probs, lengths)
    return beam_search_decode(log_probs, beam_width, lengths)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, vocabulary: list[str], device: str,
             beam_width: int = 1, selecting: bool = False) -> tuple[WERDetails, dict[str, list[str]], dict[str, list[str]]]:
    """Decode a split: WER details, hypotheses and references (gloss lists by id). ``selecting``: the
    dev decoding that picks best.pt, through the model's ``recognize_for_selection`` if it has one.

    Under DDP each rank decodes its share of the loader and the results are merged on every rank.
    """
    model.eval()
    recognize = getattr(model, "recognize_for_selection", model.recognize) if selecting else model.recognize
    hyps, refs = {}, {}
    for batch in loader:
        batch = to_device(batch, device)
        log_probs, lengths = recognize(batch)
        labels = batch["labels"].cpu().split(batch["label_lengths"].cpu().tolist())
        for video_id, tokens, target in zip(batch["ids"], decode_batch(log_probs, lengths, beam_width), labels):
            hyps[video_id] = [vocabulary[t] for t in tokens]
            refs[video_id] = [vocabulary[t] for t in target.tolist()]
    hyps, refs = distributed.gather_dict(hyps), distributed.gather_dict(refs)
    ids = sorted(hyps)
    return wer_details([refs[i] for i in ids], [hyps[i] for i in ids]), hyps, refs


@dataclass
class Run:
    """What a training run needs besides its config."""

    manifest: Path
    vocabulary: list[str]
    cache: Path
    out: Path


def make_loader(run: Run, config: TrainConfig, split: str, training: bool, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """Length-bucketed batches of one split, this rank's share; augmented when ``training``.

    Batch order and augmentation depend only on (seed, epoch): call ``set_epoch`` on the dataset and
    the batch sampler before each epoch (:func:`start_epoch`), and a resumed run sees the same data.
    """
    augment = None
    if training and (tuple(config.rescale) != (1.0, 1.0) or config.feature_dropout > 0):
        augment = Augmentation(tuple(config.rescale), config.feature_dropout)
    dataset = CachedSequenceDataset(run.cache, run.manifest, run.vocabulary, config.streams, split=split,
                                    augment=augment, seed=config.seed)
    sampler = LengthBucketSampler(dataset.lengths if training else dataset.lengths(), config.batch_size,
                                  shuffle=training, seed=config.seed, num_replicas=world_size, rank=rank,
                                  bucket_size_multiplier=config.bucket_multiplier)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_padded, num_workers=config.num_workers,
                      persistent_workers=config.num_workers > 0)


def start_epoch(loader: DataLoader, epoch: int) -> None:
    loader.dataset.set_epoch(epoch)
    loader.batch_sampler.set_epoch(epoch)


def input_dims(dataset: CachedSequenceDataset, streams: list[str]) -> dict[str, int]:
    """Feature size per stream (everything after time, flattened), from the first item."""
    item = dataset[0]["inputs"]
    return {stream: int(np.prod(item[stream].shape[1:])) for stream in streams}


def save_checkpoint(path: Path, **state) -> None:
    """Tensors, numbers, strings, lists and dicts only, so it loads with weights_only=True.

    Streamed through the project's one atomic writer: a crash leaves the previous checkpoint."""
    with atomic_writer(path) as handle:
        torch.save({"version": CHECKPOINT_VERSION, **state}, handle)


CHECKPOINT_KEYS = ("config", "vocabulary", "input_dims", "model")


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded with weights_only=True; a file that is
    unreadable, refused as unsafe or not a cslr-pipe checkpoint raises CheckpointError (one line)."""
    state = load_torch_file(path, map_location=device)
    missing = [key for key in CHECKPOINT_KEYS if key not in state] if isinstance(state, dict) else CHECKPOINT_KEYS
    if missing:
        found = f"a dict without {', '.join(missing)}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{path}: not a cslr-pipe checkpoint ({found}); `cslr-pipe train` writes "
                              f"best.pt and last.pt")
    return state


def epoch_scalars(record: dict) -> dict[str, float]:
    """An epoch record's TensorBoard scalars: train/<loss term>, dev/wer and lr."""
    train_terms = {f"train/{key[len('train_'):]}": value for key, value in record.items()
                   if key.startswith("train_")}
    return {**train_terms, "dev/wer": record["dev_wer"], "lr": record["lr"]}


def open_event_writer(folder: Path):
    """A TensorBoard writer of a new event file in ``folder`` (tensorboardX: a 90 kB wheel on numpy and
    protobuf, where torch.utils.tensorboard needs ~20 MB of tensorboard and grpcio wheels). Scalars
    reach the disk within flush_secs; the name's suffix (ns, process) keeps a resumed run's file apart
    and after the one it continues, in the name order TensorBoard reads them in."""
    from tensorboardX import SummaryWriter  # imported by a run that writes events only

    return SummaryWriter(str(folder), flush_secs=1, filename_suffix=f".{time.time_ns()}.{os.getpid()}")


def train(config: TrainConfig, run: Run, resume: bool = False, log: Callable[[str], None] = print,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Train and evaluate; returns a summary (best dev WER, the best checkpoint).

    ``progress`` shows a bar over each epoch's batches (only on a terminal). ``stop_after`` ends
    this invocation after that many epochs (for jobs with a wall-time limit: the next job resumes
    with ``resume=True`` and the result equals an uninterrupted run). Under torchrun every
    process trains on its share of each epoch's batches (DDP); rank 0 logs and writes the
    checkpoints and the TensorBoard events.
    """
    rank, world_size, local_rank = distributed.init_distributed()
    device = pick_device(config.device)
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    main = rank == 0
    log = log if main else (lambda _: None)
    if main:
        run.out.mkdir(parents=True, exist_ok=True)
    streams = resolve_streams(config.streams, Cache(run.cache).stages())
    streams_line = "streams: " + ", ".join(name if name == stage else f"{name} -> {stage}"
                                           for name, stage in zip(config.streams, streams))
    config = replace(config, streams=streams)
    seed_everything(config.seed)
    train_loader = make_loader(run, config, "train", True, rank, world_size)
    dev_loader = make_loader(run, config, "dev", False, rank, world_size)
    if len(dev_loader.dataset) == 0:  # else every epoch would score 0 % and best.pt be the first epoch's
        raise InputError(f"{run.manifest}: no dev videos with cached {', '.join(config.streams)}: training "
                         f"selects its best checkpoint by dev WER")
    dims = input_dims(train_loader.dataset, config.streams)
    model = build_model(config, dims, len(run.vocabulary)).to(device)
    last = run.out / "last.pt"
    initialising = config.init_from and not (resume and last.is_file())  # a resumed run has the weights
    if initialising:
        initialise_from(model, config, run.vocabulary, dims, device)
    log(streams_line)
    if initialising:
        log(f"initialised from {config.init_from}")
    torch.manual_seed(config.seed + rank)  # same initial weights everywhere, different noise per rank
    phases = training_phases(model, config.epochs)
    if len(phases) > 1:
        log(f"{config.epochs} epochs: " + ", ".join(f"{name} {n}" for name, n in phases))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.startswith("cuda"))
    history, first_epoch, best, phase, saved = [], 0, float("inf"), None, None

    identity = run_identity(config, run.vocabulary, dims, world_size, train_loader.dataset, dev_loader.dataset)
    if resume and last.is_file():
        saved = load_checkpoint(last, device)
        check_same_run(saved.get("identity", {}), identity, last)
        model.load_state_dict(saved["model"])
        torch.set_rng_state(saved["torch_rng"][rank])
        history, first_epoch, best = saved["history"], saved["epoch"] + 1, saved["best_dev_wer"]
        log(f"resumed from {last} at epoch {first_epoch}" if first_epoch < config.epochs else
            f"{last}: all {config.epochs} epochs are done")

    end = config.epochs if stop_after is None else min(config.epochs, first_epoch + stop_after)
    if main and first_epoch < end:
        events = open_event_writer(run.out)  # a resumed run adds a new event file
    for epoch in range(first_epoch, end):
        name, first, length = phase_of(phases, epoch)
        if name != phase:
            phase = name
            if hasattr(model, "set_phase"):
                model.set_phase(name)
            optimizer, scheduler = make_optimizer(model, config, length)
            if saved is not None and phase_of(phases, saved["epoch"])[0] == name:
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
            else:
                best = float("inf")  # best.pt holds the best model of the last phase
            # DDP syncs the parameters that require gradients when it is built: rebuild per phase
            # a model whose steps may leave parameters out of the graph (DiffSign's random chains) says so
            step_model = model if world_size == 1 else torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[local_rank] if device.startswith("cuda") else None,
                find_unused_parameters=getattr(model, "skips_parameters", False))
            if len(phases) > 1:
                log(f"phase {name}: epochs {first}-{first + length - 1}")
        model.train()
        start_epoch(train_loader, epoch)
        started, totals, steps = time.perf_counter(), {}, 0
        batches = tqdm(train_loader, desc=f"epoch {epoch}", unit="batch", leave=False,
                       disable=None if progress and main else True)  # None: off unless a terminal
        for batch in batches:
            batch = to_device(batch, device)
            with autocast:
                losses = step_model(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            steps += 1
            batches.set_postfix(loss=f"{totals['loss'] / steps:.3f}", refresh=False)
        scheduler.step()
        train_seconds = time.perf_counter() - started
        details, _, _ = evaluate(model, dev_loader, run.vocabulary, device, config.beam_width, selecting=True)
        record = {"epoch": epoch, "phase": phase, **{f"train_{k}": v / max(steps, 1) for k, v in totals.items()},
                  "dev_wer": details.wer, "lr": scheduler.get_last_lr()[0],
                  "steps": steps, "seconds": round(time.perf_counter() - started, 2),
                  "sequences_per_second": round(len(train_loader.dataset) / train_seconds, 2)}
        history.append(record)
        eta = (end - epoch - 1) * np.mean([h["seconds"] for h in history])
        log(f"epoch {epoch}: loss {record['train_loss']:.3f}, dev WER {100 * details.wer:.1f}% [plain WER], "
            f"{record['seconds']:.1f} s, ETA {tqdm.format_interval(eta)}")
        rng_states = distributed.gather_dict({rank: torch.get_rng_state()})
        if main:
            state = {"config": asdict(config), "vocabulary": run.vocabulary, "input_dims": dims,
                     "model": model.state_dict(), "epoch": epoch, "history": history, "identity": identity}
            if details.wer < best:
                save_checkpoint(run.out / "best.pt", **state, best_dev_wer=details.wer)
            save_checkpoint(last, **state, best_dev_wer=min(best, details.wer), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), torch_rng=[rng_states[r] for r in range(world_size)])
            write_logs(history, run.out)
            for tag, value in epoch_scalars(record).items():
                events.add_scalar(tag, value, epoch)
        best = min(best, details.wer)
        distributed.barrier()
    if main and first_epoch < end:
        events.close()
    return {"best_dev_wer": best, "epochs": len(history), "checkpoint": str(run.out / "best.pt")}


def initialise_from(model: torch.nn.Module, config: TrainConfig, vocabulary: list[str], dims: dict[str, int],
                    device: str) -> None:
    """Start ``model`` from the checkpoint ``config.init_from``, which must have been trained on the same
    vocabulary and streams of the same sizes; raises InputError (one line) naming what differs."""
    source = config.init_from
    if not hasattr(model, "initialise_from"):
        raise InputError(f"--init-from: the {config.model} model cannot start from a checkpoint")
    state = load_checkpoint(source, device)
    theirs = state["vocabulary"]
    if theirs != vocabulary:
        missing = [g for g in vocabulary if g not in theirs][:3]
        extra = [g for g in theirs if g not in vocabulary][:3]
        raise InputError(f"{source}: trained on another vocabulary ({len(theirs)} entries, this run has "
                         f"{len(vocabulary)}; missing there: {', '.join(missing) or '-'}; only there: "
                         f"{', '.join(extra) or '-'}{'; same glosses in another order' if not missing + extra else ''})")
    if state["config"].get("streams") != config.streams or state["input_dims"] != dims:
        raise InputError(f"{source}: trained on {state['input_dims']} (feature sizes per stream), this run "
                         f"reads {dims}")
    model.initialise_from(state, source)


RESUMABLE_CHANGES = ("device", "num_workers")  # settings that do not change what is computed


class SettingsChangedError(InputError):
    """A run was asked to continue with settings or data other than those it began with."""


def run_identity(config: TrainConfig, vocabulary: list[str], dims: dict[str, int], processes: int,
                 train_set, dev_set) -> dict:
    """What a resumed run must share with the run it continues: the settings (except where it runs),
    the vocabulary, the input sizes, the number of processes and the train and dev videos."""
    settings = {key: value for key, value in asdict(config).items() if key not in RESUMABLE_CHANGES}
    videos = {split: f"{len(dataset.ids)} videos, sha256 {digest(dataset.ids)}"
              for split, dataset in (("train videos", train_set), ("dev videos", dev_set))}
    return {**settings, "vocabulary": f"{len(vocabulary)} entries, sha256 {digest(vocabulary)}",
            "input_dims": dims, "processes": processes, **videos}


def digest(words: list[str]) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:12]


def check_same_run(saved: dict, current: dict, checkpoint: Path) -> None:
    """A run continues only as the run it began as (else its result would be neither); what a
    checkpoint does not record (one written by an older version) is not compared."""
    changed = [f"{key} {saved[key]!r} -> {current[key]!r}" for key in current
               if key in saved and saved[key] != current[key]]
    if changed:
        raise SettingsChangedError(f"{checkpoint}: the run began with other settings or data "
                                   f"({'; '.join(changed)}): resume with the same, or train anew")


def write_logs(history: list[dict], out: Path) -> None:
    """The epoch records as log.jsonl and log.csv, and the curves as curves.png."""
    with (out / "log.jsonl").open("w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in history)
    columns = list(dict.fromkeys(key for record in history for key in record))
    with (out / "log.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(history)
    from cslr_pipe.training.curves import draw_curves  # matplotlib: imported by a run that writes only

    draw_curves(history, out / "curves.png")


def load_model(checkpoint: str | Path, device: str = "cpu",
               model_options: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """A trained model from a checkpoint (weights_only), and the checkpoint's contents;
    ``model_options`` override the trained ones (inference settings, not shapes)."""
    state = load_checkpoint(checkpoint, device)
    config = TrainConfig.from_dict(state["config"])
    config.model_options = {**config.model_options, **(model_options or {})}
    model = build_model(config, state["input_dims"], len(state["vocabulary"]))
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: its {config.model} weights do not fit this version's model "
                              f"(missing {', '.join(missing[:3]) or '-'}; unexpected {', '.join(unexpected[:3]) or '-'}): "
                              f"written by another cslr-pipe version? Train it anew")
    return model.to(device).eval(), state
