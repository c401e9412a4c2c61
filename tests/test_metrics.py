"""WER against jiwer, hand cases, and the sclite file writers."""

from __future__ import annotations

import random
from importlib.metadata import version

import pytest

from cslr_pipe.training.metrics import align, wer, wer_details, write_ctm, write_stm

jiwer = pytest.importorskip("jiwer")
# jiwer 3.x raises on empty reference strings; 4.x scores them (see training/metrics.py)
JIWER_MAJOR = int(version("jiwer").split(".")[0])


def _random_corpus(rng: random.Random, allow_empty_refs: bool):
    vocab = [f"G{i}" for i in range(rng.randint(1, 6))]
    n = rng.randint(1, 6)
    refs, hyps = [], []
    for _ in range(n):
        lo = 0 if allow_empty_refs else 1
        refs.append([rng.choice(vocab) for _ in range(rng.randint(lo, 12))])
        hyps.append([rng.choice(vocab) for _ in range(rng.randint(0, 12))])
    return refs, hyps


def _jiwer(refs, hyps):
    return jiwer.process_words([" ".join(r) for r in refs], [" ".join(h) for h in hyps])


@pytest.mark.parametrize("seed", range(4))
def test_matches_jiwer_on_random_corpora(seed):
    rng = random.Random(seed)
    allow_empty = JIWER_MAJOR >= 4
    for _ in range(500):
        refs, hyps = _random_corpus(rng, allow_empty)
        if sum(map(len, refs)) == 0 and JIWER_MAJOR < 4:
            continue
        ours = wer_details(refs, hyps)
        theirs = _jiwer(refs, hyps)
        assert abs(ours.wer - theirs.wer) <= 1e-12
        assert (ours.substitutions, ours.deletions, ours.insertions, ours.hits) == (
            theirs.substitutions, theirs.deletions, theirs.insertions, theirs.hits)
        # string input gives the same as token lists
        assert wer([" ".join(r) for r in refs], [" ".join(h) for h in hyps]) == ours.wer


def test_alignment_positions_match_jiwer():
    rng = random.Random(7)
    kind = {"equal": "C", "substitute": "S", "delete": "D", "insert": "I"}
    for _ in range(300):
        refs, hyps = _random_corpus(rng, allow_empty_refs=JIWER_MAJOR >= 4)
        if sum(map(len, refs)) == 0 and JIWER_MAJOR < 4:
            continue
        ours = wer_details(refs, hyps)
        theirs = _jiwer(refs, hyps)
        for sent, chunks in zip(ours.sentences, theirs.alignments):
            expanded = []
            for c in chunks:
                span = max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                for k in range(span):
                    r = c.ref_start_idx + k if c.type != "insert" else None
                    h = c.hyp_start_idx + k if c.type != "delete" else None
                    expanded.append((kind[c.type], r, h))
            assert [(p.op, p.ref_index, p.hyp_index) for p in sent.pairs] == expanded


def test_corpus_level_not_sentence_average():
    refs = ["A B C D", "E"]
    hyps = ["A B C D", "X"]
    # 1 error over 5 words, not the mean of 0/4 and 1/1
    assert wer(refs, hyps) == pytest.approx(0.2)


def test_hand_cases():
    d = wer_details(["A B C"], ["A X C D"])
    assert (d.substitutions, d.deletions, d.insertions, d.hits) == (1, 0, 1, 2)
    assert d.wer == pytest.approx(2 / 3)
    assert d.sub_rate == pytest.approx(1 / 3) and d.ins_rate == pytest.approx(1 / 3)
    assert d.del_rate == 0
    d = wer_details(["A B C"], [""])
    assert (d.substitutions, d.deletions, d.insertions) == (0, 3, 0) and d.wer == 1.0
    d = wer_details(["A"], ["B C D"])
    assert d.wer == 3.0  # WER can exceed 1
    assert wer("A B", "A B") == 0.0
    assert wer([["A", "B"]], [["B", "A"]]) == 1.0


def test_empty_references():
    # a sentence with an empty reference adds insertions
    assert wer(["A B", ""], ["A B", "C"]) == pytest.approx(0.5)
    # all references empty: jiwer 4 convention, the insertion count
    assert wer([""], [""]) == 0.0
    assert wer(["", ""], ["A", "B C"]) == 3.0
    if JIWER_MAJOR >= 4:
        assert jiwer.wer(["", ""], ["A", "B C"]) == 3


def test_alignment_pretty_and_pairs():
    s = align("A B C D", "A C D E")
    assert [p.op for p in s.pairs] == ["C", "D", "C", "C", "I"]
    assert s.errors == 2
    # equal-cost alternatives resolve like jiwer: two substitutions rather than D + I
    assert [p.op for p in align("A B C", "A C D").pairs] == ["C", "S", "S"]
    text = s.pretty()
    assert text.splitlines()[0].startswith("REF: A B C D")


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        wer(["A", "B"], ["A"])


def test_write_ctm(tmp_path):
    path = tmp_path / "hyp.ctm"
    write_ctm(path, ["utt-1", "utt-2", "utt-3"], ["A B", [], ["C"]])
    assert path.read_text().splitlines() == [
        "utt-1 1 0.00 0.01 A",
        "utt-1 1 0.01 0.01 B",
        "utt-2 1 0.00 0.01 [EMPTY]",
        "utt-3 1 0.00 0.01 C",
    ]
    write_ctm(path, ["u"], [""], empty_token=None)
    assert path.read_text() == ""
    with pytest.raises(ValueError):
        write_ctm(path, ["bad id"], ["A"])


def test_write_stm(tmp_path):
    path = tmp_path / "ref.stm"
    write_stm(path, ["utt-1", "utt-2"], ["__ON__ A B", ["C"]], speakers=["signer05", "signer01"])
    assert path.read_text().splitlines() == [
        "utt-1 1 signer05 0.0 1.79769e+308 __ON__ A B",
        "utt-2 1 signer01 0.0 1.79769e+308 C",
    ]
    write_stm(path, ["u"], [""])
    assert path.read_text() == "u 1 unknown 0.0 1.79769e+308\n"
