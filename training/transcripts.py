"""Read other systems' hypotheses and references (CTM, STM, JSON Lines, one sentence per line),
and write an sclite-style per-sentence alignment report: what `cslr-pipe score` reads and writes."""

from __future__ import annotations

import json
from pathlib import Path

from cslr_pipe.features.errors import InputError
from cslr_pipe.training.metrics import WERDetails

EMPTY = "[EMPTY]"


def _ctm(lines: list[str], path: Path) -> dict[str, list[str]]:
    words: dict[str, list[tuple[float, int, str]]] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) < 5:
            raise InputError(f"{path}:{number}: a CTM line needs 'ID CHANNEL START DURATION WORD', got {line!r}")
        words.setdefault(fields[0], []).append((float(fields[2]), number, fields[4]))
    return {i: [w for _, _, w in sorted(ws)] for i, ws in words.items()}


def _stm(lines: list[str], path: Path) -> dict[str, list[str]]:
    refs = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) < 5:
            raise InputError(f"{path}:{number}: an STM line needs 'ID CHANNEL SPEAKER START END WORDS...'")
        refs[fields[0]] = fields[5:]
    return refs


def _jsonl(lines: list[str], path: Path, keys: tuple[str, ...]) -> dict[str, list[str]]:
    sentences = {}
    for number, line in enumerate(lines, 1):
        row = json.loads(line)
        key = next((k for k in keys if k in row), None)
        if "id" not in row or key is None:
            raise InputError(f"{path}:{number}: expected 'id' and one of {', '.join(keys)}")
        value = row[key]
        sentences[row["id"]] = value.split() if isinstance(value, str) else list(value)
    return sentences


def read_sentences(path: Path, references: bool = False) -> dict[str, list[str]]:
    """{id: words} from a CTM (``.ctm``), an STM (``.stm``), JSON Lines (``.jsonl``: rows with
    ``id`` and ``hypothesis``, ``glosses`` or ``reference``, e.g. a manifest or `eval`'s
    ``.hyp.jsonl``) or a text file of ``ID WORD WORD ...`` lines. ``[EMPTY]`` words are dropped: each
    scorer writes them back by its own convention. References in ``.hyp.jsonl`` files are read with
    ``references=True``."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith(";;")]
    suffix = path.suffix.lower()
    if suffix == ".ctm":
        sentences = _ctm(lines, path)
    elif suffix == ".stm":
        sentences = _stm(lines, path)
    elif suffix == ".jsonl":
        keys = ("reference", "glosses") if references else ("hypothesis", "glosses")
        sentences = _jsonl(lines, path, keys)
    else:
        sentences = {line.split()[0]: line.split()[1:] for line in lines}
    return {i: [w for w in words if w != EMPTY] for i, words in sentences.items()}


def alignment_report(ids: list[str], details: WERDetails) -> str:
    """Per sentence, as sclite's ``pra`` report: id, counts, and the aligned REF / HYP / Eval rows
    (``***`` on the missing side, upper case where a word is wrong)."""
    blocks = []
    for video_id, sentence in zip(ids, details.sentences):
        ref_row, hyp_row, eval_row = [], [], []
        for pair in sentence.pairs:
            ref = pair.ref if pair.ref is not None else "***"
            hyp = pair.hyp if pair.hyp is not None else "***"
            width = max(len(ref), len(hyp))
            ref_row.append(ref.ljust(width))
            hyp_row.append(hyp.ljust(width))
            eval_row.append(("" if pair.op == "C" else pair.op).ljust(width))
        blocks.append(f"id: ({video_id})\n"
                      f"Scores: (#C #S #D #I) {sentence.hits} {sentence.substitutions} {sentence.deletions} "
                      f"{sentence.insertions}\n"
                      f"REF:  {' '.join(ref_row)}\nHYP:  {' '.join(hyp_row)}\nEval: {' '.join(eval_row).rstrip()}\n")
    return "\n".join(blocks)
