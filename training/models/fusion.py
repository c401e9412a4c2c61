"""SignVTCL-style multi-stream fusion over cached feature sequences (../shared/papers/signvtcl-supplementary.md).

Shapes: B batch, T steps, S streams (branches), D_s features of stream s, H hidden, T' steps after
S3, L glosses of the longest label, C classes (blank 0).

One branch per stream (``config.streams``, e.g. features.rgb, features.keypoint, features.flow). A
branch is :class:`StreamEncoder` of :mod:`streams`: an input projection (BatchNorm over the raw features,
a 1x1 temporal convolution to ``hidden``, BatchNorm, ReLU) and the baseline's two temporal blocks (Conv1d
kernel 5 without padding, BatchNorm, ReLU, MaxPool 2; :class:`TemporalConv`'s K5-P2-K5-P2, same output
lengths). The streams are aligned in time as :func:`join_streams` does (:func:`align_streams`):
zero-padded to the longest stream of the batch, lengths = the per-item maximum (flow has one step fewer
than frames).

Fusion happens at up to three stages (``fusion_stages``, default all): S1 after the input projection, S2
after the first and S3 after the second temporal block. With branch features f_1..f_S [B, T, H] (f^v,
f^k, f^o in the paper) and (+) the channel-wise concatenation:

* ``mlp`` (Eq. 1-2): f^m = W2 GELU(W1 (f_1 (+) ... (+) f_S)), W1: S*H -> H, W2: H -> H (two linear layers,
  GELU after the first only); f_s' = f_s + f^m for every branch.
* ``conv`` (Eq. 3-4): f^m = Conv(f_1 (+) ... (+) f_S); f_s' = f_s + f^m. The paper's Conv is a 3x3x3
  convolution over (time, height, width) of branches that still have spatial maps; cached features are
  pooled per frame, so here it is the temporal part alone, a Conv1d S*H -> H with kernel ``conv_kernel``
  (3) and 'same' zero padding.
* ``attention`` (Eq. 5-7): f_s' = f_s + sum_{r != s} Attn(f_s, f_r), Attn a multi-head cross-attention
  (queries from branch s, keys and values from branch r, one module per ordered pair and stage) over
  pre-LayerNormed inputs, with sinusoidal positions added to queries and keys (pooled features carry no
  position, and the streams are aligned in time) and padded frames masked as keys.
* ``none``: no fusion (late fusion only: the branches meet at the sequence model).

The gate (``gate``, default on): every fusion module scales its fused term by a learned scalar alpha
that starts at 0 (f_s' = f_s + alpha f^m; ReZero), so a fused model starts as its unfused branches and
lets the fused term in as it becomes useful. It does not change what the model can express (alpha W2
is just another W2) but it does change training: with the plain sum (``gate=false``, alpha = 1 and
fixed) Adam's per-parameter steps grow f^m through the wide concatenation layer to several times the
branch features within the first epoch, the branches become copies of f^m and CTC stalls (on the
demo corpus: 2.3 train loss and 100 % dev WER after 4 epochs, where the gated model reaches 0.9 and the
unfused one 1.0; docs/benchmarks.md). One scalar moves by about the learning rate per step, so the
fused term can only grow slowly.

Padded frames are zeroed before every fusion, so results do not depend on what the padding holds. With a
single stream there is nothing to fuse and the fusion is the identity (the single-branch ablation rows of
the supplementary's Table 1); that model is the CTC baseline with an extra input projection.

Per-branch supervision (``branch_ctc``, its weight; default 1, 0 turns it off): a linear classifier per
branch on its S3 features and a CTC loss on each, averaged (loss ``branch_ctc``; the auxiliary "visual"
CTC of VAC, per stream). Training only: inference is the paper's model. Not in the supplementary; on
the demo corpus it was the largest gain of the ablation (test WER 20.1 -> 8.3 % with 40 training
videos, docs/benchmarks.md), as every branch must stay discriminative on its own.

After S3 the branches are merged, concatenated (``merge="concat"``, default: [B, T', S*H]) or summed
(``merge="sum"``: [B, T', H]), and a BiLSTM (``lstm_layers``, H/2 per direction) and a linear classifier
give CTC log-probs (blank 0). Loss ``ctc``.

Visual-textual alignment (optional, ``gloss_align`` / ``sentence_align``, default off); the textual side
is a learned gloss embedding table E [num_classes, H] (the paper uses a text encoder):

* gloss level: the fused sequence h [B, T', H] (BiLSTM output) is cut into one segment per gloss of the
  label by the CTC Viterbi alignment (:func:`ctc_forced_alignment` of :mod:`cslr_pipe.training.alignment`,
  from the model's own detached log-probs; uniform segments where the label does not fit), and each
  segment is averaged into a visual gloss feature v_i. With t_j = E[y_j], the similarity matrix
  S_ij = cos(W v_i, t_j) / ``temperature`` of a sentence is matched to the ground truth G_ij = [y_i == y_j]
  (:func:`alignment_ground_truth`, 1 on the diagonal and wherever a gloss repeats) by a multi-positive
  contrastive loss: the cross-entropy of softmax(S_i.) against G_i. / sum(G_i.), over rows (visual ->
  text) and columns (text -> visual), averaged (:func:`multi_positive_contrastive`). Losses
  ``gloss_align``, weight ``lambda_gloss``.
* sentence level: the valid-frame mean of h (projected) against the mean gloss embedding of the label
  (projected) across the batch, the same loss with G = [label_b == label_b'] (identical sentences in a
  batch are positives of each other). Loss ``sentence_align``, weight ``lambda_sentence``.

``recognize`` never reads labels: the alignment modules only shape h during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from cslr_pipe.features.errors import InputError
from cslr_pipe.training.alignment import ctc_forced_alignment
from cslr_pipe.training.models.ctc import ctc_loss
from cslr_pipe.training.models.layers import padding_mask, sinusoidal
from cslr_pipe.training.models.streams import StreamEncoder, align_streams, stage_lengths, zero_padding
from cslr_pipe.features.registry import checked_options

FUSIONS = ("mlp", "conv", "attention", "none")


@dataclass
class FusionConfig:
    """The fusion model's options: how and where branches fuse, sizes, alignment and branch losses."""

    fusion: str = "mlp"               # mlp | conv | attention | none
    fusion_stages: tuple = (1, 2, 3)  # S1 input projection, S2 first block, S3 second block
    gate: bool = True                 # fused term times a learned scalar that starts at 0; False = plain sum
    merge: str = "concat"             # branches into the sequence model: concat | sum
    hidden: int = 512
    lstm_layers: int = 2
    dropout: float = 0.2
    heads: int = 4                    # attention fusion
    conv_kernel: int = 3              # conv fusion (temporal part of the paper's 3x3x3)
    gloss_align: bool = False
    sentence_align: bool = False
    lambda_gloss: float = 1.0
    lambda_sentence: float = 1.0
    temperature: float = 0.1          # alignment logits = cosine / temperature
    branch_ctc: float = 1.0           # weight of the branches' own CTC after S3 (training only); 0 = off

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.merge not in ("concat", "sum"):
            raise InputError(f"merge must be 'concat' or 'sum', got {self.merge!r}")
        stages = self.fusion_stages
        if isinstance(stages, (int, str)):
            stages = [int(s) for s in str(stages).replace(",", " ").split()]
        self.fusion_stages = tuple(sorted({int(s) for s in stages}))
        if not set(self.fusion_stages) <= {1, 2, 3}:
            raise InputError(f"fusion_stages must be a subset of 1, 2, 3, got {list(self.fusion_stages)}")
        if self.fusion == "attention" and self.hidden % self.heads:
            raise InputError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise InputError(f"conv_kernel must be odd and positive, got {self.conv_kernel}")
        if self.temperature <= 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        if self.branch_ctc < 0:
            raise InputError(f"branch_ctc must be >= 0, got {self.branch_ctc}")


# ---------------------------------------------------------------------------------------------- fusion

class Gate(nn.Module):
    """The fused term's scale alpha (a scalar, 0 at initialisation) or the paper's plain sum (1)."""

    def __init__(self, learned: bool):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(())) if learned else None

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return fused if self.alpha is None else self.alpha * fused


class MLPFusion(nn.Module):
    """Eq. 1-2: f^m = W2 GELU(W1 concat(f_s)); every branch gets f_s + alpha f^m."""

    def __init__(self, branches: int, hidden: int, gate: bool = False):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(branches * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.gate = Gate(gate)

    def forward(self, feats: list[torch.Tensor], lengths: torch.Tensor) -> list[torch.Tensor]:
        fused = self.gate(self.mlp(torch.cat(feats, dim=-1)))  # (B, T, S*H) -> (B, T, H)
        return [f + fused for f in feats]


class ConvFusion(nn.Module):
    """Eq. 3-4 on feature sequences: f^m = Conv1d(concat(f_s)) ('same' padding); f_s + alpha f^m."""

    def __init__(self, branches: int, hidden: int, kernel: int, gate: bool = False):
        super().__init__()
        self.conv = nn.Conv1d(branches * hidden, hidden, kernel, padding=kernel // 2)
        self.gate = Gate(gate)

    def forward(self, feats: list[torch.Tensor], lengths: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat(feats, dim=-1).transpose(1, 2)  # (B, S*H, T)
        fused = self.gate(self.conv(x).transpose(1, 2))  # (B, H, T) -> (B, T, H)
        return [f + fused for f in feats]


class CrossAttention(nn.Module):
    """Attn(query branch, key/value branch): pre-LayerNorm multi-head attention, positions on q and k."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        position = sinusoidal(torch.arange(query.shape[1], device=query.device), query.shape[-1])  # (T, H)
        q, kv = self.norm_q(query), self.norm_kv(memory)
        out, _ = self.attention(q + position, kv + position, kv, key_padding_mask=pad, need_weights=False)
        return out


class AttentionFusion(nn.Module):
    """Eq. 5-7: f_s' = f_s + alpha sum over the other branches r of Attn(f_s, f_r)."""

    def __init__(self, branches: int, hidden: int, heads: int, dropout: float, gate: bool = False):
        super().__init__()
        self.pairs = [(s, r) for s in range(branches) for r in range(branches) if r != s]
        self.attend = nn.ModuleList([CrossAttention(hidden, heads, dropout) for _ in self.pairs])
        self.gate = Gate(gate)

    def forward(self, feats: list[torch.Tensor], lengths: torch.Tensor) -> list[torch.Tensor]:
        pad = padding_mask(lengths, feats[0].shape[1])  # (B, T)
        fused = [torch.zeros_like(f) for f in feats]  # (B, T, H) each
        for (s, r), attend in zip(self.pairs, self.attend):
            fused[s] = fused[s] + attend(feats[s], feats[r], pad)  # (B, T, H)
        return [f + self.gate(m) for f, m in zip(feats, fused)]


def make_fusion(c: FusionConfig, branches: int) -> nn.Module:
    if c.fusion == "mlp":
        return MLPFusion(branches, c.hidden, c.gate)
    if c.fusion == "conv":
        return ConvFusion(branches, c.hidden, c.conv_kernel, c.gate)
    return AttentionFusion(branches, c.hidden, c.heads, c.dropout, c.gate)


# ----------------------------------------------------------------------------------- alignment losses

def segment_means(h: torch.Tensor, position: torch.Tensor, num_glosses: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the frames of h [B, T, H] aligned to each label position: [B, L, H], and counts [B, L]."""
    onehot = nn.functional.one_hot(position.clamp(min=0), num_glosses).to(h.dtype)  # (B, T, L)
    onehot = onehot * (position >= 0)[..., None].to(h.dtype)  # (B, T, L)
    counts = onehot.sum(1)  # (B, L)
    return onehot.transpose(1, 2) @ h / counts.clamp(min=1)[..., None], counts  # (B, L, H), (B, L)


def alignment_ground_truth(glosses: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """G [..., L, L]: 1 where the glosses of row and column are the same gloss (the diagonal and every
    repeat), 0 elsewhere and on invalid rows / columns (``valid`` [..., L])."""
    g = (glosses[..., :, None] == glosses[..., None, :]).float()  # (..., L, L)
    if valid is not None:
        g = g * valid[..., :, None].float() * valid[..., None, :].float()
    return g


def multi_positive_contrastive(sim: torch.Tensor, target: torch.Tensor, row_valid: torch.Tensor,
                               col_valid: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss of logits [..., N, M] against a 0/1 ground truth [..., N, M].

    Rows (columns) are softmax-normalised over the valid columns (rows); the loss of a row is the
    cross-entropy against its positives, G_i. / sum(G_i.); the mean over valid rows and over valid
    columns are averaged.
    """
    def one_way(logits, g, valid_rows, valid_cols):
        logits = logits.masked_fill(~valid_cols[..., None, :], -1e4)  # finite: no NaN on empty rows
        log_p = logits.log_softmax(-1)
        positives = g.sum(-1)
        keep = valid_rows & (positives > 0)
        loss = -(g * log_p).sum(-1) / positives.clamp(min=1)
        return (loss * keep).sum() / keep.sum().clamp(min=1)

    sim, target = sim.float(), target.float()
    return 0.5 * (one_way(sim, target, row_valid, col_valid)
                  + one_way(sim.transpose(-1, -2), target.transpose(-1, -2), col_valid, row_valid))


class TextAlignment(nn.Module):
    """The gloss embedding table and the projections of the gloss- and sentence-level alignments."""

    def __init__(self, c: FusionConfig, num_classes: int):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(num_classes, c.hidden)
        self.gloss_visual = nn.Linear(c.hidden, c.hidden) if c.gloss_align else None
        if c.sentence_align:
            self.sentence_visual, self.sentence_text = nn.Linear(c.hidden, c.hidden), nn.Linear(c.hidden, c.hidden)

    def gloss_loss(self, h: torch.Tensor, lengths: torch.Tensor, log_probs: torch.Tensor, batch: dict) -> torch.Tensor:
        labels, label_lengths = batch["labels"], batch["label_lengths"]
        targets = pad_sequence(labels.split(label_lengths.tolist()), batch_first=True)  # (B, L)
        position = ctc_forced_alignment(log_probs.detach(), lengths, labels, label_lengths)  # (B, T')
        visual, counts = segment_means(h.float(), position, targets.shape[1])  # (B, L, H), (B, L)
        text_valid = torch.arange(targets.shape[1], device=h.device) < label_lengths[:, None]  # (B, L)
        visual_valid = text_valid & (counts > 0)
        v = nn.functional.normalize(self.gloss_visual(visual), dim=-1)  # (B, L, H)
        t = nn.functional.normalize(self.embed(targets).float(), dim=-1)  # (B, L, H)
        sim = v @ t.transpose(1, 2) / self.config.temperature  # (B, L, L)
        g = alignment_ground_truth(targets) * visual_valid[..., :, None] * text_valid[..., None, :]
        return multi_positive_contrastive(sim, g, visual_valid, text_valid)

    def sentence_loss(self, h: torch.Tensor, lengths: torch.Tensor, batch: dict) -> torch.Tensor:
        labels, label_lengths = batch["labels"], batch["label_lengths"]
        targets = pad_sequence(labels.split(label_lengths.tolist()), batch_first=True)  # (B, L)
        frames = (~padding_mask(lengths, h.shape[1]))[..., None].float()  # (B, T', 1)
        visual = (h.float() * frames).sum(1) / frames.sum(1).clamp(min=1)  # (B, H)
        glosses = (torch.arange(targets.shape[1], device=h.device) < label_lengths[:, None])[..., None].float()
        text = (self.embed(targets).float() * glosses).sum(1) / glosses.sum(1).clamp(min=1)  # (B, L, H) -> (B, H)
        v = nn.functional.normalize(self.sentence_visual(visual), dim=-1)
        t = nn.functional.normalize(self.sentence_text(text), dim=-1)
        sim = v @ t.T / self.config.temperature  # (B, B)
        same = (targets[:, None] == targets[None]).all(-1) & (label_lengths[:, None] == label_lengths[None])  # (B, B)
        every = torch.ones(len(label_lengths), dtype=torch.bool, device=h.device)
        return multi_positive_contrastive(sim, same.float(), every, every)


# ------------------------------------------------------------------------------------------- the model

class FusionRecognizer(nn.Module):
    """Branches with staged fusion, BiLSTM and CTC classifier, with the trainer's interface."""

    def __init__(self, streams: list[str], input_dims: dict[str, int], num_classes: int, c: FusionConfig):
        super().__init__()
        self.streams, self.config = list(streams), c
        self.branches = nn.ModuleList([StreamEncoder(input_dims[s], c.hidden) for s in self.streams])
        fuse = len(self.streams) > 1 and c.fusion != "none"
        self.fusion = nn.ModuleDict({str(k): make_fusion(c, len(self.streams))
                                     for k in (c.fusion_stages if fuse else ())})
        width = c.hidden * (len(self.streams) if c.merge == "concat" else 1)
        self.lstm = nn.LSTM(width, c.hidden // 2, num_layers=c.lstm_layers, bidirectional=True,
                            batch_first=True, dropout=c.dropout if c.lstm_layers > 1 else 0.0)
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.hidden, num_classes)
        self.branch_classifiers = nn.ModuleList([nn.Linear(c.hidden, num_classes) for _ in self.streams]
                                                if c.branch_ctc > 0 and len(self.streams) > 1 else [])
        self.alignment = TextAlignment(c, num_classes) if (c.gloss_align or c.sentence_align) else None

    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused sequence h [B, T', H] (BiLSTM output, before the classifier) and its lengths [B]."""
        return self.encode_branches(batch)[:2]

    def encode_branches(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """h and its lengths as :meth:`encode`, and every branch's features after S3 [B, T', H]."""
        feats, lengths = align_streams(batch, self.streams)  # (B, T, D_s) per stream, (B,)
        for k, valid in enumerate(stage_lengths(lengths)):
            feats = [branch.stage(k, f) for branch, f in zip(self.branches, feats)]  # (B, T_k, H) per stream
            valid = valid.clamp(max=feats[0].shape[1])
            if str(k + 1) in self.fusion:
                feats = self.fusion[str(k + 1)]([zero_padding(f, valid) for f in feats], valid)
        if self.config.merge == "concat":
            merged = torch.cat(feats, -1)  # (B, T', S*H)
        else:
            merged = torch.stack(feats).sum(0)  # (B, T', H)
        packed = pack_padded_sequence(merged, valid.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=int(valid.max()))  # (B, T', H)
        return self.dropout(h), valid, [f[:, :h.shape[1]] for f in feats]

    def recognize(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        h, lengths = self.encode(batch)
        return self.classifier(h).log_softmax(-1), lengths  # (B, T', C), (B,)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        c = self.config
        h, lengths, branches = self.encode_branches(batch)
        log_probs = self.classifier(h).float().log_softmax(-1)  # (B, T', C)
        ctc = ctc_loss(log_probs, lengths, batch)
        losses = {"loss": ctc, "ctc": ctc}
        if self.branch_classifiers:
            branch = [ctc_loss(classify(self.dropout(f)).float().log_softmax(-1), lengths, batch)
                      for classify, f in zip(self.branch_classifiers, branches)]
            losses["branch_ctc"] = torch.stack(branch).mean()
            losses["loss"] = losses["loss"] + c.branch_ctc * losses["branch_ctc"]
        if c.gloss_align:
            losses["gloss_align"] = self.alignment.gloss_loss(h, lengths, log_probs, batch)
            losses["loss"] = losses["loss"] + c.lambda_gloss * losses["gloss_align"]
        if c.sentence_align:
            losses["sentence_align"] = self.alignment.sentence_loss(h, lengths, batch)
            losses["loss"] = losses["loss"] + c.lambda_sentence * losses["sentence_align"]
        return losses

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.losses(batch)  # DistributedDataParallel calls forward


def build_fusion(config, input_dims: dict[str, int], num_classes: int) -> FusionRecognizer:
    c = checked_options("fusion", FusionConfig, config.model_options)
    return FusionRecognizer(config.streams, input_dims, num_classes, c)
