"""sclite-compatible WER: hand cases, and agreement with the real NIST sclite binary."""

from __future__ import annotations

import random

import pytest

from cslr_pipe.training.metrics import align, write_ctm, write_stm
from cslr_pipe.training.sclite import sclite_align, sclite_wer


def _ops(alignment):
    return [(p.op, p.ref, p.hyp) for p in alignment.pairs]


def _counts(alignment):
    return alignment.substitutions, alignment.deletions, alignment.insertions


# --- hand cases (every expected alignment below is what sclite 2.10 / SCTK 2.4.10 prints) ---


def test_weighted_alignment_differs_from_levenshtein():
    ref, hyp = "E E A D C", "A C B E E"
    # plain Levenshtein: 5 substitutions (5 errors)
    assert _counts(align(ref, hyp)) == (5, 0, 0)
    # sclite: 5 substitutions cost 20, 3 deletions + 3 insertions cost 18 -> 6 errors, WER 120%
    a = sclite_align(ref, hyp)
    assert _counts(a) == (0, 3, 3)
    assert a.hits == 2
    assert sclite_wer([ref], [hyp]).wer == pytest.approx(6 / 5)


def test_tie_breaking_prefers_diagonal_then_insertion_from_the_end():
    # D+C+I (cost 6) beats S+S (8); of the two cost-6 paths the traceback from the end takes the
    # insertion first, so the later reference word B is the one matched
    assert _ops(sclite_align("A B", "B A")) == [("D", "A", None), ("C", "B", "B"), ("I", None, "A")]
    # a lone substitution sits at the end, deletions / insertions before it
    assert _ops(sclite_align("A B C", "X")) == [("D", "A", None), ("D", "B", None), ("S", "C", "X")]
    assert _ops(sclite_align("A", "X Y Z")) == [("I", None, "X"), ("I", None, "Y"), ("S", "A", "Z")]
    assert _ops(sclite_align("REGEN REGEN", "REGEN")) == [("D", "REGEN", None), ("C", "REGEN", "REGEN")]


def test_empty_hypothesis():
    with_token = sclite_wer(["A B C"], [""])
    assert _ops(with_token.sentences[0]) == [("D", "A", None), ("D", "B", None), ("S", "C", "[EMPTY]")]
    assert (with_token.substitutions, with_token.deletions, with_token.hypothesis_words) == (1, 2, 1)
    without = sclite_wer(["A B C"], [[]], empty_token=None)
    assert (without.substitutions, without.deletions, without.hypothesis_words) == (0, 3, 0)
    assert with_token.wer == without.wer == 1.0
    # an empty reference: [EMPTY] is an insertion
    assert sclite_wer(["A", ""], ["A", ""]).insertions == 1


def test_case_folding_is_ascii_only():
    assert _counts(sclite_align("Regen SONNE", "REGEN sonne")) == (0, 0, 0)
    assert _counts(sclite_align("Regen", "REGEN", case_sensitive=True)) == (1, 0, 0)
    assert _counts(sclite_align("ÜBER", "Über")) == (0, 0, 0)
    assert _counts(sclite_align("ÜBER", "über")) == (1, 0, 0)
    a = sclite_align("regen", "REGEN")
    assert (a.pairs[0].ref, a.pairs[0].hyp) == ("regen", "REGEN")


# --- agreement with the sclite binary ---


VOCAB = ["REGEN", "SONNE", "WOLKE", "NORD", "SUED", "MORGEN", "IX", "WIND"]


def _random_pair(rng: random.Random) -> tuple[list[str], list[str]]:
    vocab = VOCAB[: rng.randint(2, len(VOCAB))]
    ref = [rng.choice(vocab) for _ in range(rng.randint(1, 20))]
    if rng.random() < 0.3:  # runs of repeated glosses
        k = rng.randrange(len(ref))
        ref[k:k] = [ref[k]] * rng.randint(1, 3)
    kind = rng.random()
    if kind < 0.15:
        hyp = []
    elif kind < 0.25:
        ref = [] if rng.random() < 0.1 else ref
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
    elif kind < 0.45:  # adjacent swaps: alignment ties
        hyp = list(ref)
        for _ in range(rng.randint(1, 3)):
            if len(hyp) > 1:
                k = rng.randrange(len(hyp) - 1)
                hyp[k], hyp[k + 1] = hyp[k + 1], hyp[k]
    elif kind < 0.55:  # long insertion
        k = rng.randint(0, len(ref))
        hyp = ref[:k] + [rng.choice(vocab) for _ in range(rng.randint(5, 30))] + ref[k:]
    elif kind < 0.65:  # dropped span
        a = rng.randrange(len(ref))
        hyp = ref[:a] + ref[a + rng.randint(1, 8):]
    else:  # noisy copy: edits, repeated / dropped / case-changed words
        hyp = []
        for w in ref:
            x = rng.random()
            if x < 0.1:
                continue
            hyp.append(rng.choice(vocab) if x < 0.25 else w.capitalize() if x < 0.3 else w)
            if x > 0.9:
                hyp.append(rng.choice([w, rng.choice(vocab)]))
    return ref, hyp


@pytest.mark.parametrize("empty_token", ["[EMPTY]", None])
def test_matches_sclite_binary(run_sclite, tmp_path, empty_token):
    rng = random.Random(2014)
    pairs = [_random_pair(rng) for _ in range(3000)]
    refs = [r for r, _ in pairs]
    hyps = [h for _, h in pairs]
    ids = [f"utt{i:05d}" for i in range(len(refs))]
    write_stm(tmp_path / "ref.stm", ids, refs, speakers="signer05")
    write_ctm(tmp_path / "hyp.ctm", ids, hyps, empty_token=empty_token)
    theirs = run_sclite(tmp_path / "hyp.ctm", tmp_path / "ref.stm")

    details = sclite_wer(refs, hyps, empty_token=empty_token)
    mismatches = []
    for k, s in enumerate(details.sentences):
        # sclite writes the words lower-cased in its SGML report
        ours = [(op, r and r.lower(), h and h.lower()) for op, r, h in _ops(s)]
        if ours != theirs.alignments[ids[k]]:
            mismatches.append((k, refs[k], hyps[k], ours, theirs.alignments[ids[k]]))
    assert not mismatches, f"{len(mismatches)} alignments differ from sclite, first: {mismatches[0]}"
    assert {key: getattr(details, key) for key in theirs.totals} == theirs.totals
    assert round(100 * details.wer, 1) == pytest.approx(theirs.percent, abs=0.051)
