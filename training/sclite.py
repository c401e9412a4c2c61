"""Word error rate exactly as NIST sclite (SCTK 2.4) scores it, without the binary.

The official PHOENIX-2014 / PHOENIX-2014-T evaluation runs
``sclite -h out.ctm ctm -r ref.stm stm -f 0 -o sgml sum rsum pra`` (and ``-o dtl stdout``) after
its own gloss clean-up (not done here). With these options sclite

1. folds case: words are compared after lowering ASCII ``A-Z`` only (``ÜBER`` matches ``Über``,
   not ``über``); ``case_sensitive=True`` is sclite's ``-s``;
2. aligns each utterance by minimum weighted edit cost: correct 0, substitution 4, deletion 3,
   insertion 3. A substitution is cheaper than a deletion plus an insertion, but two
   substitutions (8) cost more than a deletion and an insertion (6), so the alignment can hold
   more errors than the plain Levenshtein minimum (``E E A D C`` / ``A C B E E``: 5
   substitutions for Levenshtein, 3 deletions + 3 insertions for sclite);
3. breaks ties by tracing the cost matrix back from the end of both sentences and preferring, at
   each cell, the diagonal (correct or substitution), then an insertion, then a deletion.
   E.g. ``A B`` / ``B A`` aligns as ``D(A) C(B) I(A)``, and ``A B C`` / ``X`` as
   ``D(A) D(B) S(C->X)``: a lone substitution goes to the end of the sentence.

Empty hypotheses: the PHOENIX scripts (and :func:`~cslr_pipe.training.metrics.write_ctm`) write
one ``[EMPTY]`` word for them, which sclite scores as an ordinary word: against ``n`` reference
words it yields ``n - 1`` deletions and one substitution (of the last word). An utterance with no
CTM line at all scores ``n`` deletions. Either way the error count is the same; the split and
the hypothesis word count differ. ``empty_token`` chooses between the two.

Corpus WER is ``(S + D + I) / N`` over all reference words, as in sclite's ``Sum`` rows. When
``N == 0`` sclite prints ``UNDEF``; :class:`~cslr_pipe.training.metrics.WERDetails` then holds the
number of insertions, as everywhere in this package.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Union

from .metrics import AlignedPair, Sentence, SentenceAlignment, WERDetails, _as_sentence_list, _tokens

__all__ = ["SUB_COST", "DEL_COST", "INS_COST", "EMPTY_TOKEN", "sclite_align", "sclite_wer"]

#: sclite's default alignment weights (correct words cost 0).
SUB_COST = 4
DEL_COST = 3
INS_COST = 3
#: Word that the PHOENIX scripts write for an empty hypothesis.
EMPTY_TOKEN = "[EMPTY]"

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _edit_ops(ref: Sequence[str], hyp: Sequence[str]) -> list[str]:
    """sclite's edit script from ``ref`` to ``hyp`` as a list of ``C``/``S``/``D``/``I``."""
    m, n = len(ref), len(hyp)
    cost = [[j * INS_COST for j in range(n + 1)]]
    for i in range(1, m + 1):
        prev = cost[i - 1]
        row = [i * DEL_COST] + [0] * n
        r = ref[i - 1]
        for j in range(1, n + 1):
            row[j] = min(
                prev[j - 1] + (0 if r == hyp[j - 1] else SUB_COST),
                row[j - 1] + INS_COST,
                prev[j] + DEL_COST,
            )
        cost.append(row)

    ops = []
    i, j = m, n
    while i or j:
        c = cost[i][j]
        if i and j:
            same = ref[i - 1] == hyp[j - 1]
            if c == cost[i - 1][j - 1] + (0 if same else SUB_COST):
                ops.append("C" if same else "S")
                i -= 1
                j -= 1
                continue
        if j and c == cost[i][j - 1] + INS_COST:
            ops.append("I")
            j -= 1
        else:
            ops.append("D")
            i -= 1
    ops.reverse()
    return ops


def sclite_align(reference: Sentence, hypothesis: Sentence, *, case_sensitive: bool = False) -> SentenceAlignment:
    """Align one sentence pair as sclite does (see the module docstring).

    Words are compared case-folded unless ``case_sensitive``; the pairs keep the original spelling.
    No empty-hypothesis token is added here (see :func:`sclite_wer`).
    """
    ref = _tokens(reference)
    hyp = _tokens(hypothesis)
    if case_sensitive:
        ref_keys, hyp_keys = ref, hyp
    else:
        ref_keys = [w.translate(_ASCII_LOWER) for w in ref]
        hyp_keys = [w.translate(_ASCII_LOWER) for w in hyp]
    pairs = []
    counts = {"C": 0, "S": 0, "D": 0, "I": 0}
    r = h = 0
    for op in _edit_ops(ref_keys, hyp_keys):
        counts[op] += 1
        if op == "D":
            pairs.append(AlignedPair("D", ref[r], None, r, None))
            r += 1
        elif op == "I":
            pairs.append(AlignedPair("I", None, hyp[h], None, h))
            h += 1
        else:
            pairs.append(AlignedPair(op, ref[r], hyp[h], r, h))
            r += 1
            h += 1
    return SentenceAlignment(ref, hyp, pairs, counts["C"], counts["S"], counts["D"], counts["I"])


def sclite_wer(
    refs: Union[Sentence, Iterable[Sentence]],
    hyps: Union[Sentence, Iterable[Sentence]],
    *,
    empty_token: str | None = EMPTY_TOKEN,
    case_sensitive: bool = False,
) -> WERDetails:
    """Corpus WER with counts and per-sentence alignments, equal to sclite's on the STM/CTM files
    that :func:`~cslr_pipe.training.metrics.write_stm` / ``write_ctm`` write for the same
    sentences (same ``empty_token``).

    An empty hypothesis is scored as the single word ``empty_token`` (the PHOENIX convention), or
    as no words when ``empty_token`` is ``None``; the alignments show the words as scored.
    """
    refs_l = _as_sentence_list(refs)
    hyps_l = _as_sentence_list(hyps)
    if len(refs_l) != len(hyps_l):
        raise ValueError(f"{len(refs_l)} references but {len(hyps_l)} hypotheses")
    sentences = []
    for ref, hyp in zip(refs_l, hyps_l):
        hyp_words = _tokens(hyp)
        if not hyp_words and empty_token is not None:
            hyp_words = [empty_token]
        sentences.append(sclite_align(ref, hyp_words, case_sensitive=case_sensitive))
    hits = sum(s.hits for s in sentences)
    subs = sum(s.substitutions for s in sentences)
    dels = sum(s.deletions for s in sentences)
    ins = sum(s.insertions for s in sentences)
    n_ref = sum(len(s.reference) for s in sentences)
    n_hyp = sum(len(s.hypothesis) for s in sentences)
    rate = (subs + dels + ins) / n_ref if n_ref else float(ins)
    return WERDetails(rate, hits, subs, dels, ins, n_ref, n_hyp, sentences)
