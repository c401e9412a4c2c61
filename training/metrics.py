"""Word error rate and sclite file writers.

WER is the corpus-level rate ``(S + D + I) / N`` where ``N`` is the number of reference words
summed over all sentences (not an average of per-sentence rates). The alignment is a plain
Levenshtein alignment whose tie-breaking reproduces the one jiwer (3.x and 4.x) gets from
rapidfuzz, so the substitution / deletion / insertion counts equal jiwer's on any input:

1. the common prefix and the common suffix of the two sentences are matched first;
2. the middle is aligned on the full edit-distance matrix and traced back from the end,
   preferring at each cell a deletion, then an insertion, then the diagonal (match or
   substitution) whenever that move lies on an optimal path.

Empty references (decision, documented): a sentence with an empty reference is allowed and
contributes its hypothesis words as insertions. If *all* references are empty (``N == 0``) the
rate has no denominator; we then follow jiwer 4.0 and return the number of insertions as the
"rate" (0.0 when every hypothesis is empty as well). jiwer 3.x raises ``ValueError`` on any empty
reference string instead; jiwer 4 does not.

Tokenisation: a string is split on whitespace (``str.split()``). jiwer's default transform
splits on single spaces after squeezing runs of two or more whitespace characters, so the two
differ only for strings that contain a lone tab or newline between words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, Union

Sentence = Union[str, Sequence[str]]

__all__ = [
    "AlignedPair",
    "SentenceAlignment",
    "WERDetails",
    "align",
    "alignment_from_ops",
    "wer",
    "wer_details",
    "write_ctm",
    "write_stm",
    "STM_END_TIME",
]

#: End time that the PHOENIX ground-truth STM files give to every segment (the largest double).
STM_END_TIME = "1.79769e+308"


def _tokens(sentence: Sentence) -> list[str]:
    if isinstance(sentence, str):
        return sentence.split()
    tokens = [str(t) for t in sentence]
    for t in tokens:
        if not t or any(c.isspace() for c in t):
            raise ValueError(f"token {t!r} is empty or contains whitespace")
    return tokens


@dataclass(frozen=True)
class AlignedPair:
    """One step of an alignment: ``op`` is ``"C"`` (correct), ``"S"``, ``"D"`` or ``"I"``.

    ``ref``/``hyp`` are the words (``None`` on the missing side of a deletion / insertion) and
    ``ref_index``/``hyp_index`` their positions in the sentence (``None`` likewise).
    """

    op: str
    ref: str | None
    hyp: str | None
    ref_index: int | None
    hyp_index: int | None


@dataclass
class SentenceAlignment:
    reference: list[str]
    hypothesis: list[str]
    pairs: list[AlignedPair]
    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def pretty(self) -> str:
        """Three aligned rows (REF, HYP, ops) in the style of sclite's ``pra`` report."""
        ref_row, hyp_row, op_row = [], [], []
        for p in self.pairs:
            r = p.ref if p.ref is not None else "*" * len(p.hyp or "")
            h = p.hyp if p.hyp is not None else "*" * len(p.ref or "")
            width = max(len(r), len(h), 1)
            ref_row.append(r.ljust(width))
            hyp_row.append(h.ljust(width))
            op_row.append(("" if p.op == "C" else p.op).ljust(width))
        return "REF: " + " ".join(ref_row) + "\nHYP: " + " ".join(hyp_row) + "\nOPS: " + " ".join(op_row)


@dataclass
class WERDetails:
    wer: float
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    hypothesis_words: int
    sentences: list[SentenceAlignment] = field(repr=False)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def _rate(self, n: int) -> float:
        return n / self.reference_words if self.reference_words else float(n)

    @property
    def sub_rate(self) -> float:
        return self._rate(self.substitutions)

    @property
    def del_rate(self) -> float:
        return self._rate(self.deletions)

    @property
    def ins_rate(self) -> float:
        return self._rate(self.insertions)

    @property
    def alignments(self) -> list[list[AlignedPair]]:
        return [s.pairs for s in self.sentences]

    def summary(self) -> str:
        return (
            f"WER {100 * self.wer:.2f}% (sub {100 * self.sub_rate:.2f}%, del {100 * self.del_rate:.2f}%, "
            f"ins {100 * self.ins_rate:.2f}%) over {self.reference_words} reference words, "
            f"{len(self.sentences)} sentences"
        )


def _edit_ops(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, int, int]]:
    """Edit script from ``ref`` to ``hyp`` as (op, ref_pos, hyp_pos) with op in C/S/D/I.

    Tie-breaking as rapidfuzz's ``Levenshtein.editops``: strip the common affixes, then trace the
    full matrix back preferring deletion, insertion, diagonal.
    """
    m, n = len(ref), len(hyp)
    pre = 0
    while pre < m and pre < n and ref[pre] == hyp[pre]:
        pre += 1
    suf = 0
    while suf < m - pre and suf < n - pre and ref[m - 1 - suf] == hyp[n - 1 - suf]:
        suf += 1
    a = ref[pre:m - suf]
    b = hyp[pre:n - suf]
    la, lb = len(a), len(b)

    # dist[i][j]: edit distance between a[:i] and b[:j]
    dist = [list(range(lb + 1))]
    for i in range(1, la + 1):
        row = [i] + [0] * lb
        prev = dist[i - 1]
        ai = a[i - 1]
        for j in range(1, lb + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ai != b[j - 1]))
        dist.append(row)

    middle: list[tuple[str, int, int]] = []
    i, j = la, lb
    while i and j:
        if dist[i][j] == dist[i - 1][j] + 1:
            middle.append(("D", i - 1, j))
            i -= 1
        elif j > 1 and dist[i][j - 1] == dist[i - 1][j - 1] - 1:
            # rapidfuzz tests the vertical delta of the previous column (bit VN) here, which
            # implies that an insertion lies on an optimal path.
            middle.append(("I", i, j - 1))
            j -= 1
        else:
            middle.append(("C" if a[i - 1] == b[j - 1] else "S", i - 1, j - 1))
            i -= 1
            j -= 1
    while i:
        middle.append(("D", i - 1, j))
        i -= 1
    while j:
        middle.append(("I", i, j - 1))
        j -= 1
    middle.reverse()

    ops = [("C", k, k) for k in range(pre)]
    ops += [(op, r + pre, h + pre) for op, r, h in middle]
    ops += [("C", m - suf + k, n - suf + k) for k in range(suf)]
    return ops


def alignment_from_ops(ref: list[str], hyp: list[str], ops: Iterable[str],
                       ref_words: list[str] | None = None, hyp_words: list[str] | None = None) -> SentenceAlignment:
    """A sentence alignment from an edit script (``C``/``S``/``D``/``I`` in order) of ``ref`` into
    ``hyp``; the pairs show ``ref_words``/``hyp_words`` (default: ``ref``/``hyp``), e.g. the original
    spelling when the script was computed on case-folded words."""
    ref_words, hyp_words = ref_words or ref, hyp_words or hyp
    pairs = []
    counts = {"C": 0, "S": 0, "D": 0, "I": 0}
    r = h = 0
    for op in ops:
        counts[op] += 1
        if op == "D":
            pairs.append(AlignedPair("D", ref_words[r], None, r, None))
            r += 1
        elif op == "I":
            pairs.append(AlignedPair("I", None, hyp_words[h], None, h))
            h += 1
        else:
            pairs.append(AlignedPair(op, ref_words[r], hyp_words[h], r, h))
            r += 1
            h += 1
    return SentenceAlignment(list(ref_words), list(hyp_words), pairs, counts["C"], counts["S"], counts["D"],
                             counts["I"])


def align(reference: Sentence, hypothesis: Sentence) -> SentenceAlignment:
    """Align one reference with one hypothesis (see module docstring for the tie-breaking)."""
    ref, hyp = _tokens(reference), _tokens(hypothesis)
    return alignment_from_ops(ref, hyp, [op for op, _, _ in _edit_ops(ref, hyp)])


def _as_sentence_list(x: Union[Sentence, Iterable[Sentence]]) -> list[Sentence]:
    if isinstance(x, str):
        return [x]
    return list(x)


def wer_details(refs: Union[Sentence, Iterable[Sentence]], hyps: Union[Sentence, Iterable[Sentence]],
                aligner: Callable[[Sentence, Sentence], SentenceAlignment] | None = None) -> WERDetails:
    """Corpus-level WER with counts and per-sentence alignments.

    ``refs`` and ``hyps`` are equally long lists whose items are either gloss strings (split on
    whitespace) or token lists; a single string is one sentence. ``aligner`` aligns one pair
    (default :func:`align`, plain Levenshtein as jiwer).
    """
    refs_l = _as_sentence_list(refs)
    hyps_l = _as_sentence_list(hyps)
    if len(refs_l) != len(hyps_l):
        raise ValueError(f"{len(refs_l)} references but {len(hyps_l)} hypotheses")
    sentences = [(aligner or align)(r, h) for r, h in zip(refs_l, hyps_l)]
    hits = sum(s.hits for s in sentences)
    subs = sum(s.substitutions for s in sentences)
    dels = sum(s.deletions for s in sentences)
    ins = sum(s.insertions for s in sentences)
    n_ref = sum(len(s.reference) for s in sentences)
    n_hyp = sum(len(s.hypothesis) for s in sentences)
    rate = (subs + dels + ins) / n_ref if n_ref else float(ins)
    return WERDetails(rate, hits, subs, dels, ins, n_ref, n_hyp, sentences)


def wer(refs: Union[Sentence, Iterable[Sentence]], hyps: Union[Sentence, Iterable[Sentence]]) -> float:
    """Corpus-level word error rate ``(S + D + I) / N`` as a fraction (not a percentage)."""
    return wer_details(refs, hyps).wer


def _check_id(utt_id: str) -> str:
    utt_id = str(utt_id)
    if not utt_id or any(c.isspace() for c in utt_id):
        raise ValueError(f"utterance id {utt_id!r} is empty or contains whitespace")
    return utt_id


def write_ctm(
    path: Union[str, os.PathLike],
    ids: Sequence[str],
    hyps: Sequence[Sentence],
    *,
    word_duration: float = 0.01,
    empty_token: str | None = "[EMPTY]",
) -> None:
    """Write hypotheses as a CTM file for sclite: one word per line,
    ``<id> 1 <start> <duration> <word>``.

    Word ``k`` of a sentence starts at ``k * word_duration`` and lasts ``word_duration`` (times
    written with two decimals, as the PHOENIX recipes do; they only order the words, since each
    STM segment spans the whole utterance). An empty hypothesis is written as one
    ``empty_token`` word (the official PHOENIX scripts insert ``[EMPTY]`` so that sclite aligns
    every utterance); pass ``empty_token=None`` to write no line for it.
    """
    if len(ids) != len(hyps):
        raise ValueError(f"{len(ids)} ids but {len(hyps)} hypotheses")
    lines = []
    for utt_id, hyp in zip(ids, hyps):
        utt_id = _check_id(utt_id)
        words = _tokens(hyp)
        if not words and empty_token is not None:
            words = [empty_token]
        for k, w in enumerate(words):
            lines.append(f"{utt_id} 1 {k * word_duration:.2f} {word_duration:.2f} {w}\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def write_stm(
    path: Union[str, os.PathLike],
    ids: Sequence[str],
    refs: Sequence[Sentence],
    speakers: Union[str, Sequence[str]] = "unknown",
) -> None:
    """Write references as an STM file for sclite, in the PHOENIX ground-truth layout:
    ``<id> 1 <speaker> 0.0 1.79769e+308 <words>`` (one line per utterance; the segment spans
    the whole recording). ``speakers`` is one name for all lines or one per line (PHOENIX-2014
    uses ``signer05``, PHOENIX-2014-T ``Signer05``)."""
    if len(ids) != len(refs):
        raise ValueError(f"{len(ids)} ids but {len(refs)} references")
    if isinstance(speakers, str):
        speakers = [speakers] * len(ids)
    if len(speakers) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(speakers)} speakers")
    lines = []
    for utt_id, ref, spk in zip(ids, refs, speakers):
        utt_id = _check_id(utt_id)
        spk = _check_id(spk)
        words = " ".join(_tokens(ref))
        lines.append(f"{utt_id} 1 {spk} 0.0 {STM_END_TIME} {words}".rstrip() + "\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
