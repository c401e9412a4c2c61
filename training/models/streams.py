"""The multi-stream kit of the fusion and twostream models: streams aligned in time, and one branch per stream.

A branch (:class:`StreamEncoder`) is an input projection (BatchNorm over the raw features, a 1x1 temporal
convolution to ``hidden``, BatchNorm, ReLU) and the ``ctc`` baseline's two temporal blocks (Conv1d kernel 5
without padding, BatchNorm, ReLU, MaxPool 2; :class:`TemporalConv`'s K5-P2-K5-P2, same output lengths),
run stage by stage so that a model can exchange features between branches after each stage.

Shapes: B batch, T steps (of the longest stream), D_s features of stream s, H hidden, T_k steps after
stage k (T_0 = T, T_1 = (T - 4) // 2, T_2 = (T_1 - 4) // 2).
"""

from __future__ import annotations

import torch
from torch import nn

from cslr_pipe.training.models.ctc import TemporalConv
from cslr_pipe.training.models.layers import padding_mask

MIN_LENGTH = 16  # the two K5-P2 blocks need T >= 16 to leave one step


def align_streams(batch: dict, streams: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each stream flattened after time [B, T, D_s], zero past its own length and padded to the longest
    stream (and to at least MIN_LENGTH steps), and the lengths [B] (the per-item maximum over streams,
    as the ``ctc`` baseline's :func:`join_streams`)."""
    tensors = [batch["inputs"][s].flatten(2).float() for s in streams]  # (B, T_s, D_s) each
    longest = max(MIN_LENGTH, *(t.shape[1] for t in tensors))
    tensors = [zero_padding(nn.functional.pad(t, (0, 0, 0, longest - t.shape[1])), batch["stream_lengths"][s])
               for s, t in zip(streams, tensors)]  # (B, T, D_s) each, zero past its own length
    lengths = torch.stack([batch["stream_lengths"][s] for s in streams]).max(dim=0).values  # (B,)
    return tensors, lengths


def stage_lengths(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Valid steps after the input projection (S1), the first (S2) and the second block (S3)."""
    first = ((lengths - 4) // 2).clamp(min=1)
    return [lengths, first, TemporalConv.output_lengths(lengths)]


def zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, H] with the steps at and after ``lengths`` set to 0."""
    return x.masked_fill(padding_mask(lengths, x.shape[1])[..., None], 0.0)


def temporal_block(hidden: int) -> nn.Sequential:
    """Conv1d kernel 5 (no padding), BatchNorm, ReLU, MaxPool 2: [B, H, T] -> [B, H, (T - 4) // 2]."""
    return nn.Sequential(nn.Conv1d(hidden, hidden, 5), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.MaxPool1d(2))


class StreamEncoder(nn.Module):
    """One branch: input projection and two temporal blocks, applied stage by stage on [B, T, *]."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.BatchNorm1d(input_dim),  # streams differ wildly in scale
                          nn.Conv1d(input_dim, hidden, 1), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)),
            temporal_block(hidden),
            temporal_block(hidden),
        ])

    def stage(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Stage k (0, 1, 2): [B, T', D] -> [B, T_k, H]; the input is the stream (T' = T, D = D_s) at
        stage 0, then the previous stage's output (T' = T_{k-1}, D = H)."""
        return self.stages[k](x.transpose(1, 2)).transpose(1, 2)  # (B, D, T') -> (B, H, T_k) -> (B, T_k, H)
