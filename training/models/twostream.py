"""TwoStream-SLR over cached feature sequences (Chen et al. 2022; ../shared/papers/twostream-slr-notes-zh.md).

Shapes: B batch, T steps, D_s features of stream s, H hidden, T_k steps after stage k, T' = T_2 steps
after the second temporal block, C classes (blank 0).

Two streams, ``config.streams`` = [video, keypoint] (e.g. features.rgb, features.keypoint; exactly two),
aligned in time as in :mod:`fusion` (zero-padded to the longer stream). The paper's S3D encoders become
the per-stream :class:`StreamEncoder` of :mod:`streams` (input projection, two K5-P2 temporal blocks;
not shared between the streams).

* Bidirectional lateral connections (``lateral``, default on): after the input projection and after the
  first temporal block, features of the same resolution are exchanged by element-wise addition,
  f_v' = f_v + L_kv(f_k) and f_k' = f_k + L_vk(f_v) (both from the features before the exchange). The
  paper adapts spatial resolutions with strided / transposed convolutions; pooled features share their
  resolution, so L is a linear map per direction and stage.
* Heads (one per stream and a *joint* head on the concatenation [f_v, f_k]): ``head="conv"`` follows
  the paper's head network: a linear layer, BatchNorm, ReLU, a temporal convolution block (two Conv1d
  of kernel 3, stride 1, ReLU between them), a linear layer and ReLU, giving the gloss representation,
  then a linear classifier (padded frames are zeroed before every convolution, so they cannot leak).
  ``head="lstm"`` replaces the head network with the baseline's BiLSTM (``lstm_layers``).
* Late ensemble: ``recognize`` averages the three heads' frame-level gloss probabilities,
  p = (p_video + p_keypoint + p_joint) / 3, and returns log p (:func:`ensemble_log_probs`);
  ``decode`` = joint | video | keypoint decodes one head alone instead (an inference option).
* Frame-level self-distillation: the detached ensemble p is the pseudo-target of every head,
  distill = sum over the three heads of the mean over valid frames of KL(p || p_head)
  (:func:`self_distillation_loss`), weight ``lambda_distill``.
* Auxiliary CTC on an intermediate level (``aux_ctc`` > 0 is its weight; default off): a two-level sign
  pyramid per stream, P = f_block1 + ConvTranspose1d(f_block2) (x2 upsampling in time, zero-padded to
  f_block1's length), a linear classifier and CTC at that resolution. Training only.

Losses: ``ctc_video``, ``ctc_keypoint``, ``ctc_joint``, ``distill`` (and ``aux_ctc``);
loss = ctc_video + ctc_keypoint + ctc_joint + lambda_distill distill (+ aux_ctc x the auxiliary CTCs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from cslr_pipe.features.errors import InputError
from cslr_pipe.training.models.ctc import ctc_loss
from cslr_pipe.training.models.layers import padding_mask
from cslr_pipe.training.models.streams import StreamEncoder, align_streams, stage_lengths, zero_padding
from cslr_pipe.features.registry import checked_options

HEADS = ("video", "keypoint", "joint")


@dataclass
class TwoStreamConfig:
    """TwoStream-SLR's options: sizes, head network, lateral connections, loss weights, decoded head."""

    hidden: int = 512
    head: str = "conv"           # conv (the paper's head network) | lstm (the baseline's BiLSTM)
    lstm_layers: int = 2         # head="lstm"
    dropout: float = 0.2
    lateral: bool = True         # bidirectional lateral connections after stages 1 and 2
    lambda_distill: float = 1.0  # frame-level self-distillation; 0 = off
    aux_ctc: float = 0.0         # weight of the pyramid's auxiliary CTC; 0 = off
    decode: str = "ensemble"     # ensemble | joint | video | keypoint (inference)

    def __post_init__(self):
        if self.head not in ("conv", "lstm"):
            raise InputError(f"head must be 'conv' or 'lstm', got {self.head!r}")
        if self.decode not in ("ensemble", *HEADS):
            raise InputError(f"decode must be one of ensemble, {', '.join(HEADS)}, got {self.decode!r}")
        if self.lambda_distill < 0 or self.aux_ctc < 0:
            raise InputError("lambda_distill and aux_ctc must be >= 0")


def ensemble_log_probs(log_probs: list[torch.Tensor]) -> torch.Tensor:
    """log of the average of the heads' probabilities, each [B, T, C]."""
    stacked = torch.stack([lp.float() for lp in log_probs])  # (heads, B, T, C)
    return torch.logsumexp(stacked, 0) - torch.log(torch.tensor(float(len(log_probs))))  # (B, T, C)


def self_distillation_loss(log_probs: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the mean over valid frames of KL(p_ensemble || p_head), the ensemble detached."""
    teacher = ensemble_log_probs(log_probs).detach()  # (B, T, C)
    valid = (~padding_mask(lengths, teacher.shape[1])).float()  # (B, T)
    total = teacher.new_zeros(())
    for lp in log_probs:
        kl = (teacher.exp() * (teacher - lp.float())).sum(-1)  # (B, T)
        total = total + (kl * valid).sum() / valid.sum()
    return total


class ConvHead(nn.Module):
    """The paper's head network: linear, BN, ReLU, two k3 temporal convs, linear, ReLU; classifier."""

    def __init__(self, input_dim: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        self.project = nn.Linear(input_dim, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.conv1, self.conv2 = nn.Conv1d(hidden, hidden, 3, padding=1), nn.Conv1d(hidden, hidden, 3, padding=1)
        self.translate = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, D] (D = H, or 2 H for the joint head) and lengths [B] -> log-probs [B, T, C]."""
        x = self.project(x).transpose(1, 2)  # (B, H, T): BatchNorm1d and Conv1d take channels first
        x = torch.relu(self.norm(x)).transpose(1, 2)  # (B, T, H)
        x = zero_padding(x, lengths).transpose(1, 2)  # (B, H, T)
        x = torch.relu(self.conv1(x)).transpose(1, 2)  # (B, T, H)
        x = zero_padding(x, lengths).transpose(1, 2)  # (B, H, T)
        x = self.conv2(x).transpose(1, 2)  # (B, T, H)
        x = torch.relu(self.translate(x))
        return self.classifier(self.dropout(x)).float().log_softmax(-1)  # (B, T, C)


class LSTMHead(nn.Module):
    """The baseline's BiLSTM and a classifier."""

    def __init__(self, input_dim: int, hidden: int, num_classes: int, dropout: float, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden // 2, num_layers=layers, bidirectional=True, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, D] (D = H, or 2 H for the joint head) and lengths [B] -> log-probs [B, T, C]."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])  # (B, T, H)
        return self.classifier(self.dropout(h)).float().log_softmax(-1)  # (B, T, C)


class Pyramid(nn.Module):
    """P = f_block1 + up(f_block2), classified: the intermediate level's log-probs."""

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.up = nn.ConvTranspose1d(hidden, hidden, 2, stride=2)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """The first block's features [B, T_1, H] and the second's [B, T_2, H] -> log-probs [B, T_1, C]."""
        up = self.up(high.transpose(1, 2))  # (B, H, 2 T_2)
        up = up.transpose(1, 2)[:, :low.shape[1]]  # (B, min(2 T_2, T_1), H)
        up = nn.functional.pad(up, (0, 0, 0, low.shape[1] - up.shape[1]))  # (B, T_1, H)
        return self.classifier(low + up).float().log_softmax(-1)  # (B, T_1, C)


class TwoStreamRecognizer(nn.Module):
    """Video and keypoint encoders, lateral connections, three heads, ensemble and self-distillation."""

    def __init__(self, streams: list[str], input_dims: dict[str, int], num_classes: int, c: TwoStreamConfig):
        super().__init__()
        self.streams, self.config = list(streams), c
        self.encoders = nn.ModuleList([StreamEncoder(input_dims[s], c.hidden) for s in self.streams])
        if c.lateral:  # [stage][direction]: 0 = keypoint -> video, 1 = video -> keypoint
            self.lateral = nn.ModuleList([nn.ModuleList([nn.Linear(c.hidden, c.hidden) for _ in range(2)])
                                          for _ in range(2)])

        def head(width: int) -> nn.Module:
            if c.head == "conv":
                return ConvHead(width, c.hidden, num_classes, c.dropout)
            return LSTMHead(width, c.hidden, num_classes, c.dropout, c.lstm_layers)

        self.heads = nn.ModuleDict({"video": head(c.hidden), "keypoint": head(c.hidden), "joint": head(2 * c.hidden)})
        if c.aux_ctc > 0:
            self.pyramids = nn.ModuleList([Pyramid(c.hidden, num_classes) for _ in range(2)])

    def encode(self, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per stream, the outputs of the three stages; and the valid lengths of each stage."""
        feats, lengths = align_streams(batch, self.streams)  # (B, T, D_s) per stream, (B,)
        outputs, valids = [], []
        for k, valid in enumerate(stage_lengths(lengths)):
            feats = [encoder.stage(k, f) for encoder, f in zip(self.encoders, feats)]  # (B, T_k, H) per stream
            valid = valid.clamp(max=feats[0].shape[1])
            if self.config.lateral and k < 2:
                video, keypoint = (zero_padding(f, valid) for f in feats)
                to_video, to_keypoint = self.lateral[k]
                feats = [video + to_video(keypoint), keypoint + to_keypoint(video)]
            outputs.append(feats)
            valids.append(valid)
        return outputs, valids

    def head_log_probs(self, outputs, valids) -> dict[str, torch.Tensor]:
        video, keypoint = outputs[-1]
        lengths = valids[-1]
        return {"video": self.heads["video"](video, lengths),
                "keypoint": self.heads["keypoint"](keypoint, lengths),
                "joint": self.heads["joint"](torch.cat([video, keypoint], -1), lengths)}  # (B, T', C) each

    def recognize(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, valids = self.encode(batch)
        heads = self.head_log_probs(outputs, valids)
        if self.config.decode != "ensemble":
            return heads[self.config.decode], valids[-1]
        return ensemble_log_probs(list(heads.values())), valids[-1]

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        c = self.config
        outputs, valids = self.encode(batch)
        heads = self.head_log_probs(outputs, valids)
        losses = {f"ctc_{name}": ctc_loss(lp, valids[-1], batch) for name, lp in heads.items()}
        total = sum(losses.values())
        if c.lambda_distill > 0:
            losses["distill"] = self_distillation_loss(list(heads.values()), valids[-1])
            total = total + c.lambda_distill * losses["distill"]
        if c.aux_ctc > 0:
            losses["aux_ctc"] = sum(ctc_loss(pyramid(low, high), valids[1], batch)
                                    for pyramid, low, high in zip(self.pyramids, outputs[1], outputs[2]))
            total = total + c.aux_ctc * losses["aux_ctc"]
        return {"loss": total, **losses}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.losses(batch)  # DistributedDataParallel calls forward


def build_twostream(config, input_dims: dict[str, int], num_classes: int) -> TwoStreamRecognizer:
    c = checked_options("twostream", TwoStreamConfig, config.model_options)
    if len(config.streams) != 2:
        raise InputError(f"twostream needs exactly two streams (video, keypoint), got {len(config.streams)}: "
                         f"{', '.join(config.streams)}")
    return TwoStreamRecognizer(config.streams, input_dims, num_classes, c)
