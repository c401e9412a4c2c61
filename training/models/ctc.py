"""The CSLR baseline: temporal convolutions + BiLSTM + CTC classifier (as in VAC / CorrNet).

Shapes: B batch, T steps, D features, H hidden, T' = ((T - 4) // 2 - 4) // 2 steps after the
convolutions, C classes (blank 0).

Input: a feature sequence [B, T, D] (any cached stream, or several concatenated along D) with
lengths [B]. Two blocks of (Conv1d kernel 5, no padding, BatchNorm, ReLU, MaxPool 2) reduce T
about four-fold and model local motion; a 2-layer BiLSTM models the sentence; a linear layer gives
per-step gloss logits for CTC (blank = index 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cslr_pipe.features.registry import checked_options


@dataclass
class CTCConfig:
    """Sizes of the baseline; input_dim and num_classes come from the data, the rest are its options."""

    input_dim: int = 512
    hidden: int = 512
    lstm_layers: int = 2
    dropout: float = 0.2
    num_classes: int = 2  # vocabulary size including the blank; 0 = no classifier (an encoder)


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean CTC loss (blank 0) of log-probs [B, T, C] against the batch's labels, in float32."""
    return nn.functional.ctc_loss(log_probs.float().transpose(0, 1), batch["labels"], lengths,
                                  batch["label_lengths"], blank=0, zero_infinity=True)


class TemporalConv(nn.Module):
    """K5-P2-K5-P2 over time: [B, D, T] -> [B, H, T'] with T' = ((T - 4) // 2 - 4) // 2."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(input_dim),  # streams differ wildly in scale (pixels, heatmap features)
            nn.Conv1d(input_dim, hidden, 5), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.MaxPool1d(2),
            nn.Conv1d(hidden, hidden, 5), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.MaxPool1d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, D, T) -> (B, H, T')

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """T' of each input length, at least 1."""
        return (((lengths - 4) // 2 - 4) // 2).clamp(min=1)


class CTCBaseline(nn.Module):
    """Temporal conv + BiLSTM + linear classifier; ``forward`` returns log-probs and lengths."""

    def __init__(self, config: CTCConfig):
        super().__init__()
        self.config = config
        self.temporal = TemporalConv(config.input_dim, config.hidden)
        self.lstm = nn.LSTM(config.hidden, config.hidden // 2, num_layers=config.lstm_layers,
                            bidirectional=True, batch_first=True, dropout=config.dropout)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden, config.num_classes) if config.num_classes else None

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence representations [B, T', H] and their lengths [B] (before the classifier)."""
        min_length = 16  # the convolutions need T >= 16 to leave one step
        if x.shape[1] < min_length:
            x = nn.functional.pad(x, (0, 0, 0, min_length - x.shape[1]))  # (B, 16, D)
        h = self.temporal(x.transpose(1, 2)).transpose(1, 2)  # (B, T', H)
        out_lengths = TemporalConv.output_lengths(lengths).clamp(max=h.shape[1])  # (B,)
        packed = pack_padded_sequence(h, out_lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=int(out_lengths.max()))  # (B, T', H)
        return self.dropout(h), out_lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, out_lengths = self.encode(x, lengths)  # (B, T', H), (B,)
        return self.classifier(h).log_softmax(-1), out_lengths  # (B, T', C), (B,)


def join_streams(batch: dict, streams: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Streams of a collated batch as one sequence [B, T, sum D] (each flattened after time and
    zero-padded to the longest stream; flow has one step fewer than frames) and lengths [B]."""
    tensors = [batch["inputs"][s].flatten(2).float() for s in streams]  # (B, T_s, D_s)
    longest = max(t.shape[1] for t in tensors)
    tensors = [nn.functional.pad(t, (0, 0, 0, longest - t.shape[1])) for t in tensors]  # (B, T, D_s)
    lengths = torch.stack([batch["stream_lengths"][s] for s in streams]).max(dim=0).values  # (B,)
    return torch.cat(tensors, dim=-1), lengths  # (B, T, sum D_s), (B,)


class CTCRecognizer(nn.Module):
    """The trainer's interface around CTCBaseline: ``losses`` and ``recognize`` on batches."""

    def __init__(self, streams: list[str], config: CTCConfig):
        super().__init__()
        self.streams = list(streams)
        self.net = CTCBaseline(config)

    def recognize(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = join_streams(batch, self.streams)
        return self.net(x, lengths)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": ctc_loss(*self.recognize(batch), batch)}

    forward = losses


def build_ctc(config, input_dims: dict[str, int], num_classes: int) -> CTCRecognizer:
    c = checked_options("ctc", CTCConfig, config.model_options,
                        input_dim=sum(input_dims[s] for s in config.streams), num_classes=num_classes)
    return CTCRecognizer(config.streams, c)
