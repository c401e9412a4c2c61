"""Reference points for a WER: what guessing scores on the same test sentences.

* chance: random sentences, their lengths drawn from the training sentences' lengths and their
  glosses from the training gloss frequencies, averaged over seeded draws;
* majority: the most frequent training sentence, predicted for every test video.

A recogniser that does not beat both has learnt nothing from the videos.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from cslr_pipe.training.metrics import wer_details

Sentence = Sequence[str]


def majority_sentence(train: Sequence[Sentence]) -> list[str]:
    """The most frequent training sentence (the first seen among equally frequent ones)."""
    return list(Counter(tuple(s) for s in train).most_common(1)[0][0])


def majority_wer(train: Sequence[Sentence], test: Sequence[Sentence]) -> float:
    """WER of predicting :func:`majority_sentence` for every test sentence."""
    guess = majority_sentence(train)
    return wer_details([list(s) for s in test], [guess] * len(test)).wer


def chance_wer(train: Sequence[Sentence], test: Sequence[Sentence], draws: int = 100, seed: int = 0) -> float:
    """Mean WER over ``draws`` seeded sets of random sentences (training lengths and gloss frequencies)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(s) for s in train])
    glosses, counts = zip(*Counter(g for s in train for g in s).items())
    p = np.array(counts, np.float64) / sum(counts)
    refs = [list(s) for s in test]
    total = 0.0
    for _ in range(draws):
        hyps = [[glosses[k] for k in rng.choice(len(glosses), size=rng.choice(lengths), p=p)] for _ in refs]
        total += wer_details(refs, hyps).wer
    return total / draws
