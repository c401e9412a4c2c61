"""Guessing baselines: the most frequent training sentence, and random sentences, scored with jiwer."""

from __future__ import annotations

import jiwer
import pytest

from cslr_pipe.training.baselines import chance_wer, majority_sentence, majority_wer

TRAIN = [("A", "B"), ("C",), ("A", "B"), ("C",), ("B", "B", "A")]
TEST = [("A", "B", "C"), ("C", "C"), ("B",)]


def _jiwer(refs, hyps) -> float:
    return jiwer.wer([" ".join(r) for r in refs], [" ".join(h) for h in hyps])


def test_majority_is_the_most_frequent_sentence_first_seen_on_ties():
    assert majority_sentence(TRAIN) == ["A", "B"]  # A B and C twice each; A B comes first
    assert majority_wer(TRAIN, TEST) == pytest.approx(_jiwer(TEST, [("A", "B")] * 3))


def test_chance_with_one_possible_guess_is_that_guess():
    # one training sentence of one gloss: every random sentence is "C"
    assert chance_wer([("C",)], TEST) == pytest.approx(_jiwer(TEST, [("C",)] * 3))


def test_chance_is_seeded_and_near_total_on_a_large_vocabulary():
    train = [(f"G{i}", f"G{i + 1}", f"G{i + 2}") for i in range(0, 300, 3)]
    test = [(f"G{i}", f"G{i + 7}") for i in range(0, 60, 2)]
    assert chance_wer(train, test, seed=1) == chance_wer(train, test, seed=1)
    assert chance_wer(train, test, seed=1) != chance_wer(train, test, seed=2)
    # 3 random glosses of 300 against 2 words: almost always 2 substitutions + 1 insertion
    assert 1.4 < chance_wer(train, test, draws=20) <= 1.5
