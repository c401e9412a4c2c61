"""CTC forced alignment: the Viterbi path of a label through per-frame log-probs (blank = index 0).

Shapes: B batch, T frames, C classes (blank 0), L glosses of the longest label, S = 2 L + 1 states of
the blank-extended label (blank, g1, blank, g2, ..., gL, blank).
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence


@torch.no_grad()
def ctc_forced_alignment(log_probs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                         label_lengths: torch.Tensor) -> torch.Tensor:
    """The CTC Viterbi path: [B, T] index of the label position each frame emits, -1 for blank and padding.

    Labels are concatenated (the batch convention). Where a label cannot fit its sequence (T too short
    for its glosses and repeats) the frames are cut into uniform segments instead (a gloss may then get
    none when T < L).
    """
    log_probs = log_probs.float()
    batch, steps, _ = log_probs.shape
    device = log_probs.device
    targets = pad_sequence(labels.split(label_lengths.tolist()), batch_first=True).to(device)  # (B, L)
    if targets.numel() == 0:
        return torch.full((batch, steps), -1, dtype=torch.long, device=device)
    states = 2 * targets.shape[1] + 1
    ext = torch.zeros(batch, states, dtype=torch.long, device=device)  # (B, S): the blank-extended label
    ext[:, 1::2] = targets
    skip = torch.zeros(batch, states, dtype=torch.bool, device=device)  # (B, S): may come from s - 2
    skip[:, 2:] = (ext[:, 2:] != 0) & (ext[:, 2:] != ext[:, :-2])
    valid = torch.arange(states, device=device) < (2 * label_lengths.to(device) + 1)[:, None]  # (B, S)
    emit = log_probs.gather(2, ext[:, None, :].expand(batch, steps, states))  # (B, T, S)
    neg = torch.tensor(float("-inf"), device=device)
    alpha = torch.full((batch, states), float("-inf"), device=device)  # (B, S): best log-prob ending in s
    alpha[:, :2] = emit[:, 0, :2]
    alpha = alpha.masked_fill(~valid, float("-inf"))
    back = torch.zeros(batch, steps, states, dtype=torch.long, device=device)  # (B, T, S): 0, 1 or 2 states back
    lengths = lengths.to(device)
    for t in range(1, steps):
        prev1 = torch.cat([alpha.new_full((batch, 1), float("-inf")), alpha[:, :-1]], 1)
        prev2 = torch.cat([alpha.new_full((batch, 2), float("-inf")), alpha[:, :-2]], 1)
        best, arg = torch.stack([alpha, prev1, torch.where(skip, prev2, neg)], -1).max(-1)  # (B, S), (B, S)
        step = (best + emit[:, t]).masked_fill(~valid, float("-inf"))
        active = (t < lengths)[:, None]
        alpha = torch.where(active, step, alpha)
        back[:, t] = torch.where(active, arg, 0)  # inactive steps stay put when backtracking
    last = 2 * label_lengths.to(device)
    rows = torch.arange(batch, device=device)
    end_blank, end_label = alpha[rows, last], alpha[rows, (last - 1).clamp(min=0)]
    state = torch.where(end_label > end_blank, last - 1, last)  # (B,)
    feasible = torch.isfinite(torch.maximum(end_blank, end_label)) & (label_lengths.to(device) > 0)
    path = torch.zeros(batch, steps, dtype=torch.long, device=device)  # (B, T): state of each frame
    for t in range(steps - 1, -1, -1):
        path[:, t] = state
        state = (state - back[rows, t, state]).clamp(min=0)
    position = torch.where(path % 2 == 1, (path - 1) // 2, -1)  # (B, T)
    time = torch.arange(steps, device=device)[None]
    uniform = (time * label_lengths.to(device)[:, None]) // lengths[:, None].clamp(min=1)  # (B, T)
    position = torch.where(feasible[:, None], position, uniform)
    return position.masked_fill((time >= lengths[:, None]) | (label_lengths.to(device)[:, None] == 0), -1)
