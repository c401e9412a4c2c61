"""CTC greedy and prefix beam search decoding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cslr_pipe.training.decoding import beam_search_decode, ctc_collapse, greedy_decode


def logp(rows):
    """Log of a [T, C] probability table given as nested lists (rows need not be normalised)."""
    p = np.asarray(rows, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(p)


def exhaustive(lp: np.ndarray) -> dict[tuple[int, ...], float]:
    """Probability of every labelling: the sum over all frame paths that collapse to it."""
    T, C = lp.shape
    p = np.exp(lp)
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(C), repeat=T):
        label = tuple(ctc_collapse(path))
        totals[label] = totals.get(label, 0.0) + float(np.prod(p[np.arange(T), path]))
    return totals


# --- greedy -----------------------------------------------------------------------------------

def test_collapse():
    assert ctc_collapse([0, 1, 1, 0, 1, 2, 2, 0]) == [1, 1, 2]
    assert ctc_collapse([3, 3, 3]) == [3]
    assert ctc_collapse([0, 0]) == []
    assert ctc_collapse([1, 0, 2], blank=2) == [1, 0]


def test_greedy_hand_cases():
    # argmax path: 1 1 0 1 2 2 0 -> [1, 1, 2]: a blank separates the repeated 1s
    lp = logp([
        [0.1, 0.8, 0.1],
        [0.1, 0.7, 0.2],
        [0.6, 0.3, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.1, 0.8],
        [0.2, 0.1, 0.7],
        [0.9, 0.05, 0.05],
    ])
    assert greedy_decode(lp) == [1, 1, 2]
    # without the blank the repeat merges
    assert greedy_decode(np.delete(lp, 2, axis=0)) == [1, 2]
    assert greedy_decode(logp([[0.9, 0.1], [0.8, 0.2]])) == []
    assert greedy_decode(np.zeros((0, 4))) == []


def test_greedy_batch_lengths_and_torch():
    a = logp([[0.1, 0.9, 0.0], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]])
    b = logp([[0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    batch = np.stack([a, b])
    assert greedy_decode(batch) == [[1, 2], [2, 1]]
    assert greedy_decode(batch, lengths=[1, 2]) == [[1], [2]]
    t = torch.tensor(batch, dtype=torch.float32)
    assert greedy_decode(t, lengths=torch.tensor([3, 0])) == [[1, 2], []]
    assert greedy_decode(t[0]) == [1, 2]
    with pytest.raises(ValueError):
        greedy_decode(batch, lengths=[1, 2, 3])


# --- beam search ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_beam_search_finds_most_probable_labelling(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        T = int(rng.integers(1, 6))
        C = int(rng.integers(2, 4))
        lp = np.log(rng.dirichlet(np.full(C, 0.7), size=T))
        totals = exhaustive(lp)
        ranked = sorted(totals.values(), reverse=True)
        if len(ranked) > 1 and ranked[0] - ranked[1] < 1e-9:
            continue  # near tie: either answer is right
        best = max(totals, key=totals.get)
        assert beam_search_decode(lp, beam_width=64) == list(best)
        # the scores are the exact labelling probabilities when nothing is pruned
        hyps = beam_search_decode(lp, beam_width=64, return_scores=True, top_k=len(totals))
        assert len(hyps) == len(totals)
        for h in hyps:
            assert np.exp(h.log_prob) == pytest.approx(totals[tuple(h.tokens)], abs=1e-12)
        assert abs(sum(np.exp(h.log_prob) for h in hyps) - 1.0) < 1e-9


def test_beam_search_beats_greedy_where_paths_merge():
    # greedy path is blank-blank (p=0.36), but the labelling [1] has p=0.64
    lp = logp([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(lp) == []
    assert beam_search_decode(lp, beam_width=1) == []  # width 1 keeps "" after frame 1
    assert beam_search_decode(lp, beam_width=2) == [1]
    best = beam_search_decode(lp, beam_width=2, return_scores=True)[0]
    assert best.tokens == [1] and np.exp(best.log_prob) == pytest.approx(0.64)


def test_beam_width_one_can_differ_from_greedy():
    # frame 1 is certain "1"; at frame 2 greedy takes "2" (0.4), but staying on [1]
    # (blank 0.3 + repeated 1 0.3 = 0.6) is more probable: width 1 keeps [1].
    lp = logp([[0.0, 1.0, 0.0], [0.3, 0.3, 0.4]])
    assert greedy_decode(lp) == [1, 2]
    assert beam_search_decode(lp, beam_width=1) == [1]
    assert max(exhaustive(lp).items(), key=lambda kv: kv[1])[0] == (1,)


def test_repeated_labels_need_a_blank():
    # "1 1" can only be produced as 1 blank 1
    lp = logp([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    assert beam_search_decode(lp, beam_width=8) == [1, 1]
    lp = logp([[0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.05, 0.9, 0.05]])
    assert beam_search_decode(lp, beam_width=8) == [1]


def test_beam_width_one_equals_greedy_when_best_path_dominates():
    # If the best path has probability > 1/2, width 1 keeps its prefix at every frame.
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(3000):
        T = int(rng.integers(1, 8))
        C = int(rng.integers(2, 5))
        lp = np.log(rng.dirichlet(np.full(C, 0.2), size=T))
        if lp.max(axis=1).sum() <= np.log(0.5) + 1e-9:
            continue
        checked += 1
        assert beam_search_decode(lp, beam_width=1) == greedy_decode(lp)
    assert checked > 100


def test_beam_search_batch_torch_lengths_and_token_pruning():
    rng = np.random.default_rng(3)
    lp = np.log(rng.dirichlet(np.full(6, 0.5), size=(3, 7)))
    lengths = [7, 4, 0]
    batch = beam_search_decode(torch.tensor(lp), beam_width=5, lengths=torch.tensor(lengths))
    single = [beam_search_decode(lp[b, :n], beam_width=5) for b, n in enumerate(lengths)]
    assert batch == single
    assert batch[2] == []
    # keeping all 5 labels per frame is the same as no pruning
    assert beam_search_decode(lp, beam_width=5, token_top_k=5) == beam_search_decode(lp, beam_width=5)
    with pytest.raises(ValueError):
        beam_search_decode(lp[0], beam_width=0)


def test_beam_search_other_blank_index():
    lp = logp([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]])
    assert beam_search_decode(lp, blank=2) == greedy_decode(lp, blank=2) == [0, 0]
