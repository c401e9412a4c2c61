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

from .metrics import (Sentence, SentenceAlignment, WERDetails, _as_sentence_list, _tokens, alignment_from_ops,
                      wer_details)

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
    return alignment_from_ops(ref_keys, hyp_keys, _edit_ops(ref_keys, hyp_keys), ref, hyp)


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
    def scored(hyp: Sentence) -> list[str]:
        words = _tokens(hyp)
        return words or ([empty_token] if empty_token is not None else [])

    return wer_details(refs, [scored(h) for h in _as_sentence_list(hyps)],
                       lambda ref, hyp: sclite_align(ref, hyp, case_sensitive=case_sensitive))
