"""`cslr-pipe eval`: decode a split with a trained checkpoint and score it as CSLR papers do."""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import DataLoader

from cslr_pipe.features.files import atomic_write_text
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded
from cslr_pipe.training.metrics import write_ctm, write_stm
from cslr_pipe.training.phoenix import score_phoenix
from cslr_pipe.training.trainer import evaluate, load_model, pick_device


def evaluate_checkpoint(checkpoint: Path, manifest: Path, cache: Path, split: str = "test",
                        beam_width: int | None = None, phoenix: str | None = None,
                        out: Path | None = None, device: str = "auto",
                        model_options: dict | None = None) -> list[str]:
    """Decode ``split``, write hypotheses (JSON Lines) and CTM/STM files, return report lines.

    ``model_options`` override inference options of the trained model (e.g. DiffSign's
    ``sampling_steps``: 0 = full DDPM); they join the output file names.
    """
    device = pick_device(device)
    model, state = load_model(checkpoint, device, model_options)
    vocabulary, streams = state["vocabulary"], state["config"]["streams"]
    beam_width = beam_width or state["config"]["beam_width"]
    dataset = CachedSequenceDataset(cache, manifest, vocabulary, streams, split=split)
    loader = DataLoader(dataset, batch_size=8, shuffle=False, collate_fn=collate_padded)
    details, hyps, refs = evaluate(model, loader, vocabulary, device, beam_width)
    ids = sorted(hyps)
    if phoenix:
        details = score_phoenix([refs[i] for i in ids], [hyps[i] for i in ids], phoenix)
    out = Path(out or checkpoint.parent)
    stem = "-".join([split, checkpoint.stem, *(f"{k}={v}" for k, v in sorted((model_options or {}).items()))])
    atomic_write_text(out / f"{stem}.hyp.jsonl", "".join(
        json.dumps({"id": i, "hypothesis": hyps[i], "reference": refs[i]}, ensure_ascii=False) + "\n"
        for i in ids))
    write_ctm(out / f"{stem}.ctm", ids, [hyps[i] for i in ids])
    write_stm(out / f"{stem}.stm", ids, [refs[i] for i in ids])
    scoring = f" after the {phoenix} cleanup" if phoenix else ""
    return [f"{split}: {details.summary()}{scoring}",
            f"hypotheses: {out / f'{stem}.hyp.jsonl'}; sclite files: {out / f'{stem}.ctm'}, {out / f'{stem}.stm'}"]
