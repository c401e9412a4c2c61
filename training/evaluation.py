"""`cslr-pipe eval`: decode a split with a trained checkpoint and score it as CSLR papers do.

A model whose recognition samples (DiffSign draws x_T) is decoded once per sampling seed, and the
WER is reported as the mean and spread over the seeds; optionally also the WER of the mean of the
seeds' log-probs (an ensemble over draws).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.files import atomic_write_text
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
from cslr_pipe.training.metrics import WERDetails, wer_details, write_ctm, write_stm
from cslr_pipe.training.trainer import decode_batch, load_model, pick_device, to_device

MEAN = "mean-log-probs"


def is_stochastic(model: torch.nn.Module) -> bool:
    """Whether the model's recognition draws random numbers (from ``model.config.sampling_seed``)."""
    return bool(getattr(model, "stochastic", False))


def load_for_decoding(checkpoint: Path, device: str, model_options: dict | None = None,
                      beam_width: int | None = None) -> tuple[torch.nn.Module, list[str], list[str], int]:
    """The trained model, its vocabulary, its input streams, and the beam width (the trained one
    unless given)."""
    model, state = load_model(checkpoint, device, model_options)
    return model, state["vocabulary"], state["config"]["streams"], beam_width or state["config"]["beam_width"]


def sampling_seeds(model: torch.nn.Module, samples: int) -> list[int | None]:
    """The x_T seeds a sampling model is decoded with (from its ``sampling_seed`` on); [None] else."""
    return [model.config.sampling_seed + i for i in range(samples)] if is_stochastic(model) else [None]


@dataclass
class Evaluation:
    """What :func:`evaluate_checkpoint` reports: printable lines, and the scores per x_T seed (the
    key None for a model that does not sample; ``MEAN`` for the mean of the seeds' log-probs)."""

    lines: list[str]
    scores: dict

    @property
    def first(self) -> WERDetails:
        """The first decoding's score (the only one of a model that does not sample)."""
        return next(iter(self.scores.values()))


@torch.no_grad()
def decode_seeds(model: torch.nn.Module, loader: DataLoader, vocabulary: list[str], device: str,
                 beam_width: int, seeds: list[int], mean_log_probs: bool = False):
    """Hypotheses per run ({seed or MEAN: {id: glosses}}) and references ({id: glosses}).

    Each seed decodes the split with ``model.config.sampling_seed = seed``; MEAN decodes the mean
    of the seeds' log-probs (all seeds give the same lengths).
    """
    model.eval()
    runs = {key: {} for key in [*seeds, *([MEAN] if mean_log_probs else [])]}
    refs, trained_seed = {}, getattr(getattr(model, "config", None), "sampling_seed", None)
    try:
        for batch in loader:
            batch = to_device(batch, device)
            total = 0
            for seed in seeds:
                if seed is not None:
                    model.config.sampling_seed = seed
                log_probs, lengths = model.recognize(batch)
                total = total + log_probs
                for video_id, tokens in zip(batch["ids"], decode_batch(log_probs, lengths, beam_width)):
                    runs[seed][video_id] = [vocabulary[t] for t in tokens]
            if mean_log_probs:
                for video_id, tokens in zip(batch["ids"], decode_batch(total / len(seeds), lengths, beam_width)):
                    runs[MEAN][video_id] = [vocabulary[t] for t in tokens]
            labels = batch["labels"].cpu().split(batch["label_lengths"].cpu().tolist())
            refs.update((i, [vocabulary[t] for t in target.tolist()]) for i, target in zip(batch["ids"], labels))
    finally:
        if trained_seed is not None:
            model.config.sampling_seed = trained_seed
    return runs, refs


def evaluate_checkpoint(checkpoint: Path, manifest: Path, cache: Path, split: str = "test",
                        beam_width: int | None = None, phoenix: str | None = None,
                        out: Path | None = None, device: str = "auto",
                        model_options: dict | None = None, samples: int = 3,
                        mean_log_probs: bool = False, scorer: str | None = None) -> Evaluation:
    """Decode ``split``, write hypotheses (JSON Lines) and CTM/STM files, return the report lines
    and the scores.

    ``model_options`` override inference options of the trained model (e.g. DiffSign's
    ``sampling_steps``: 0 = full DDPM); they join the output file names. A sampling model is decoded
    with ``samples`` seeds from its ``sampling_seed`` on (one set of files per seed). With ``phoenix``
    the WER is made by ``scorer`` (default: the variant's, see :func:`score_phoenix`); every line
    names the scorer.
    """
    device = pick_device(device)
    model, vocabulary, streams, beam_width = load_for_decoding(checkpoint, device, model_options, beam_width)
    dataset = CachedSequenceDataset(cache, manifest, vocabulary, streams, split=split)
    loader = DataLoader(dataset, batch_size=8, shuffle=False, collate_fn=collate_padded)
    sampled = is_stochastic(model)
    seeds = sampling_seeds(model, samples)
    runs, refs = decode_seeds(model, loader, vocabulary, device, beam_width, seeds, sampled and mean_log_probs)
    dataset.close()
    ids = sorted(refs)
    out = Path(out or checkpoint.parent)
    stem = "-".join([split, checkpoint.stem, *(f"{k}={v}" for k, v in sorted((model_options or {}).items()))])
    if phoenix:
        from cslr_pipe.training.phoenix import SCORERS  # (and sclite) only when scoring as PHOENIX

        scorer = scorer or SCORERS[phoenix][0]
        scoring = f" [{phoenix}, scorer {scorer}]"
    elif scorer:
        raise InputError(f"--scorer {scorer} needs --phoenix (without it the WER is plain)")
    else:
        scoring = " [plain WER]"
    lines, scores = [], {}
    for key, hyps in runs.items():
        details = score(ids, refs, hyps, phoenix, scorer)
        scores[key] = details
        name = stem if key is None else f"{stem}-{'seed=' + str(key) if key != MEAN else MEAN}"
        write_results(out, name, ids, refs, hyps)
        label = "" if key is None else (f" [x_T seed {key}]" if key != MEAN else f" [{MEAN} of {len(seeds)} seeds]")
        lines.append(f"{split}{label}: {details.summary()}{scoring}")
    if sampled and len(seeds) > 1:
        wers = [100 * scores[s].wer for s in seeds]
        lines.append(f"{split}: WER {statistics.mean(wers):.2f} ± {statistics.stdev(wers):.2f}% (mean ± sd over "
                     f"{len(seeds)} x_T seeds {seeds[0]}..{seeds[-1]}){scoring}")
    lines.append(f"hypotheses, sclite CTM/STM files: {out}/{stem}*")
    return Evaluation(lines, scores)


def decode_video(checkpoint: Path, cache: Path, row: ManifestRow, device: str = "auto") -> WERDetails:
    """One video decoded as ``cslr-pipe eval`` decodes it (a sampling model: with its first seed)
    from its cached streams, and scored against its glosses (``.sentences[0]``: the alignment)."""
    device = pick_device(device)
    model, vocabulary, streams, beam_width = load_for_decoding(checkpoint, device)
    dataset = CachedSequenceDataset(cache, [row], vocabulary, streams, split=None)
    if not len(dataset):
        raise InputError(f"{row.id} has no cached {' and '.join(streams)} in {cache} to decode")
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_padded)
    runs, refs = decode_seeds(model, loader, vocabulary, device, beam_width, sampling_seeds(model, 1))
    dataset.close()
    (hyps,) = runs.values()
    return wer_details([refs[row.id]], [hyps[row.id]])


def score(ids: list[str], refs: dict, hyps: dict, phoenix: str | None, scorer: str | None = None) -> WERDetails:
    if phoenix:
        from cslr_pipe.training.phoenix import score_phoenix

        return score_phoenix([refs[i] for i in ids], [hyps[i] for i in ids], phoenix, scorer=scorer)
    return wer_details([refs[i] for i in ids], [hyps[i] for i in ids])


def write_results(out: Path, stem: str, ids: list[str], refs: dict, hyps: dict) -> None:
    """``STEM.hyp.jsonl`` (hypothesis and reference per video), ``STEM.ctm`` and ``STEM.stm``."""
    atomic_write_text(out / f"{stem}.hyp.jsonl", "".join(
        json.dumps({"id": i, "hypothesis": hyps[i], "reference": refs[i]}, ensure_ascii=False) + "\n"
        for i in ids))
    write_ctm(out / f"{stem}.ctm", ids, [hyps[i] for i in ids])
    write_stm(out / f"{stem}.stm", ids, [refs[i] for i in ids])
