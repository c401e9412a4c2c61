"""Pieces the recognition models share."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings [..., dim] of positions or timesteps [...]."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=positions.device) / (dim // 2))
    angles = positions.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean CTC loss (blank 0) of log-probs [B, T, C] against the batch's labels, in float32."""
    return nn.functional.ctc_loss(log_probs.float().transpose(0, 1), batch["labels"], lengths,
                                  batch["label_lengths"], blank=0, zero_infinity=True)


def padding_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] bool, True on padding (the convention of torch's key_padding_mask)."""
    return torch.arange(steps, device=lengths.device) >= lengths[:, None]
