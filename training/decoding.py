"""CTC decoding (blank index 0 by default) in plain numpy: greedy and prefix beam search.

Inputs are log-probabilities (e.g. ``log_softmax`` outputs), either one sequence ``[T, C]`` or a
batch ``[B, T, C]`` with optional ``lengths`` (``[B]``; frames past a length are ignored). numpy
arrays and torch tensors (any device, any float dtype) are accepted; computation is float64
numpy. One sequence gives a list of token ids, a batch a list of such lists.

``beam_search_decode`` is the CTC prefix beam search (Hannun et al. 2014, "First-pass large
vocabulary continuous speech recognition using bi-directional recurrent DNNs"; Graves 2012
thesis sec. 7.5): each prefix keeps the log-probability of all frame paths that collapse to it
and end in a blank (``p_b``) or in its last label (``p_nb``); a repeated label only starts a new
output token after a blank. No language model, no external binary or extension.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

__all__ = ["greedy_decode", "beam_search_decode", "ctc_collapse", "BeamHypothesis"]

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # noqa: F821

NEG_INF = -np.inf


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if hasattr(x, "double"):
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def _lengths(lengths, batch: int, frames: int) -> list[int]:
    if lengths is None:
        return [frames] * batch
    lens = [int(v) for v in _to_numpy(lengths).reshape(-1)]
    if len(lens) != batch:
        raise ValueError(f"{len(lens)} lengths for a batch of {batch}")
    for v in lens:
        if v < 0 or v > frames:
            raise ValueError(f"length {v} outside [0, {frames}]")
    return lens


def ctc_collapse(path: Sequence[int], blank: int = 0) -> list[int]:
    """Merge consecutive repeats, then remove blanks (the CTC many-to-one map)."""
    out: list[int] = []
    prev = None
    for s in path:
        s = int(s)
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return out


def _greedy_one(lp: np.ndarray, blank: int) -> list[int]:
    if lp.shape[0] == 0:
        return []
    return ctc_collapse(np.argmax(lp, axis=-1).tolist(), blank)


def greedy_decode(log_probs: ArrayLike, lengths=None, blank: int = 0):
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks.

    ``[T, C]`` -> ``list[int]``; ``[B, T, C]`` (+ ``lengths``) -> ``list[list[int]]``. Ties in the
    argmax go to the lowest index (numpy's rule).
    """
    lp = _to_numpy(log_probs)
    if lp.ndim == 2:
        if lengths is not None:
            raise ValueError("lengths are for a batch [B, T, C]")
        return _greedy_one(lp, blank)
    if lp.ndim != 3:
        raise ValueError(f"expected [T, C] or [B, T, C], got shape {lp.shape}")
    lens = _lengths(lengths, lp.shape[0], lp.shape[1])
    return [_greedy_one(lp[b, : lens[b]], blank) for b in range(lp.shape[0])]


class BeamHypothesis(tuple):
    """``(tokens, log_prob)``: a labelling and the log of the total probability of its paths
    (within the beam's approximation)."""

    __slots__ = ()

    def __new__(cls, tokens: list[int], log_prob: float):
        return super().__new__(cls, (tokens, log_prob))

    @property
    def tokens(self) -> list[int]:
        return self[0]

    @property
    def log_prob(self) -> float:
        return self[1]


def _beam_one(lp: np.ndarray, beam_width: int, blank: int, top_k: int, token_top_k: int | None,
              ) -> list[BeamHypothesis]:
    T, C = lp.shape
    # Beam: parallel lists of prefixes (tuples) and their (log p_b, log p_nb).
    prefixes: list[tuple[int, ...]] = [()]
    p_b = np.array([0.0])
    p_nb = np.array([NEG_INF])
    labels = np.array([c for c in range(C) if c != blank], dtype=np.int64)

    for t in range(T):
        row = lp[t]
        if token_top_k is not None and token_top_k < labels.size:
            cand = labels[np.argpartition(-row[labels], token_top_k - 1)[:token_top_k]]
        else:
            cand = labels
        n = len(prefixes)
        total = np.logaddexp(p_b, p_nb)  # [n]
        last = np.array([p[-1] if p else -1 for p in prefixes])

        # Staying on the same prefix: a blank after anything, or the last label repeated
        # (merges into it when the path already ends in that label).
        stay_b = total + row[blank]
        stay_nb = np.full(n, NEG_INF)
        has_last = last >= 0
        stay_nb[has_last] = p_nb[has_last] + row[last[has_last]]

        # Extending prefix i with label c: from both endings, except that the prefix's own last
        # label can only be appended again after a blank.
        ext = total[:, None] + row[cand][None, :]  # [n, k]
        same = cand[None, :] == last[:, None]
        ext = np.where(same, p_b[:, None] + row[cand][None, :], ext)

        # An extension may equal a prefix already in the beam: merge its mass into that entry.
        index = {p: i for i, p in enumerate(prefixes)}
        cand_pos = {int(c): j for j, c in enumerate(cand)}
        for q, p in enumerate(prefixes):
            if not p:
                continue
            parent = index.get(p[:-1])
            j = cand_pos.get(p[-1])
            if parent is not None and j is not None:
                stay_nb[q] = np.logaddexp(stay_nb[q], ext[parent, j])
                ext[parent, j] = NEG_INF

        stay_total = np.logaddexp(stay_b, stay_nb)
        scores = np.concatenate([stay_total, ext.reshape(-1)])
        keep = min(beam_width, int(np.isfinite(scores).sum()) or 1)
        if keep < scores.size:
            top = np.argpartition(-scores, keep - 1)[:keep]
        else:
            top = np.arange(scores.size)
        # Stable order: best first, ties by position (stay entries before extensions).
        top = top[np.lexsort((top, -scores[top]))]

        new_prefixes, new_b, new_nb = [], [], []
        k = cand.size
        for s in top.tolist():
            if s < n:
                new_prefixes.append(prefixes[s])
                new_b.append(stay_b[s])
                new_nb.append(stay_nb[s])
            else:
                i, j = divmod(s - n, k)
                new_prefixes.append(prefixes[i] + (int(cand[j]),))
                new_b.append(NEG_INF)
                new_nb.append(ext[i, j])
        prefixes = new_prefixes
        p_b = np.array(new_b)
        p_nb = np.array(new_nb)

    total = np.logaddexp(p_b, p_nb)
    order = sorted(range(len(prefixes)), key=lambda i: (-total[i], i))
    return [BeamHypothesis(list(prefixes[i]), float(total[i])) for i in order[:top_k]]


def beam_search_decode(
    log_probs: ArrayLike,
    beam_width: int = 10,
    lengths=None,
    blank: int = 0,
    *,
    top_k: int = 1,
    token_top_k: int | None = None,
    return_scores: bool = False,
):
    """CTC prefix beam search on log-probabilities.

    Returns the most probable labelling found (``list[int]``; a list of them for a batch). With
    ``return_scores=True`` returns instead, per sequence, the ``top_k`` best
    ``BeamHypothesis(tokens, log_prob)`` (best first). ``token_top_k`` limits the labels tried
    at each frame to that many most probable ones (speed for large vocabularies; ``None`` tries
    all). With ``beam_width`` at least the number of distinct labellings the search is exact.
    """
    if beam_width < 1:
        raise ValueError("beam_width must be >= 1")
    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    if token_top_k is not None and token_top_k < 1:
        raise ValueError("token_top_k must be >= 1")
    lp = _to_numpy(log_probs)

    def one(x: np.ndarray):
        if not 0 <= blank < x.shape[-1]:
            raise ValueError(f"blank index {blank} outside the {x.shape[-1]} classes")
        hyps = _beam_one(x, beam_width, blank, top_k, token_top_k)
        return hyps if return_scores else hyps[0].tokens

    if lp.ndim == 2:
        if lengths is not None:
            raise ValueError("lengths are for a batch [B, T, C]")
        return one(lp)
    if lp.ndim != 3:
        raise ValueError(f"expected [T, C] or [B, T, C], got shape {lp.shape}")
    lens = _lengths(lengths, lp.shape[0], lp.shape[1])
    return [one(lp[b, : lens[b]]) for b in range(lp.shape[0])]
