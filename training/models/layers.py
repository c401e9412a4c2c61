"""Pieces the attention models share: sinusoidal embeddings and padding masks."""

from __future__ import annotations

import math

import torch


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings [..., dim] of positions or timesteps [...]."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=positions.device) / (dim // 2))
    angles = positions.float().unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def padding_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] bool, True on padding (the convention of torch's key_padding_mask)."""
    return torch.arange(steps, device=lengths.device) >= lengths[:, None]
