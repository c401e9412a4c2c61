"""ACDR: autoencoder-formed conditional diffusion feature refinement (Guo et al. 2023, arXiv 2305.03614).

A plug-in on the CTC baseline (:mod:`ctc`), trained end to end. The base model's sequence
representations h [B, T', H] (BiLSTM output, before the classifier) give the main CTC loss. Next to it:

* :class:`GlossConditions`: the semantic conditions, gloss embeddings + sinusoidal positions through a
  small transformer encoder, [B, 1 + L, H] with a key padding mask. Key 0 is always a learned *null
  condition*: no row is ever fully masked, and it is all that inference (no labels) can condition on.
* :class:`NoisingEncoder`: h is scaled to unit RMS per sequence (diffusion assumes unit-scale data; the
  scale is detached), noised with a random timestep per sequence, x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps
  (``GaussianDiffusion.q_sample``), a fraction ``mask_ratio`` of the frames is replaced by a learned mask
  token (mask-and-predict), and transformer layers let the frames attend to each other and cross-attend
  to the conditions: the noise is "equipped with semantic conditions".
* :class:`DenoisingDecoder`: transformer layers with a timestep embedding (sinusoidal + MLP), also
  cross-attending to the conditions, predict x0 (the scaled h).

Losses: ``ctc`` = CTC of the base classifier on h; ``rec`` = MSE between the x0 prediction and the
scaled h.detach() over valid frames; ``sem`` (the semantic constraint) = CTC of the *shared* classifier on
the refined representations (the x0 prediction times the scale). ``loss = ctc + lambda_rec rec +
lambda_sem sem``. rec and sem reach the base through x_t. Padding is masked in every attention and mean.

Schedule: DDPM's linear betas 1e-4 -> 0.02 over ``num_steps=200`` steps, so alpha_bar runs 0.9999 -> 0.13
(SNR >= 0.15): every timestep keeps a trace of h, the refiner is a conditional denoising autoencoder of
h rather than a generator from labels alone (with 1000 steps half the sampled timesteps have SNR < 0.1
and their losses barely depend on h).

Shapes: B batch, T' steps of h (after the base's temporal convolutions), H hidden, L glosses of the
longest label, S = 1 + L condition keys, C classes (blank 0); T alone is the number of diffusion steps.

Inference (``recognize``, never reads labels):

* ``refine_at_inference=False`` (default, the paper's plug-in): the refiner only shapes h during
  training; recognize = base encoder + classifier on h, exactly the CTC baseline's computation.
* ``refine_at_inference=True``: training replaces the gloss conditions by the null condition with
  probability ``condition_dropout`` per sequence (only in this mode); recognize noises h at t=0 with
  eps = 0 and no masking (x_t = sqrt(ab_0) x0, deterministic), encodes and decodes it under the null
  condition, and classifies the refined h.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from cslr_pipe.features.errors import InputError
from cslr_pipe.training.diffusion import DiffusionConfig, GaussianDiffusion
from cslr_pipe.training.models.ctc import CTCBaseline, CTCConfig, ctc_loss, join_streams
from cslr_pipe.training.models.layers import padding_mask, sinusoidal
from cslr_pipe.features.registry import checked_options

Conditions = tuple[torch.Tensor, torch.Tensor]  # memory [B, S, H], key padding mask [B, S] (True = padding)


@dataclass
class ACDRConfig:
    """ACDR's options: the base model's sizes (as ``ctc``'s), the refiner's, the diffusion and the loss weights."""

    hidden: int = CTCConfig.hidden    # base model and refiner; the base's sizes default to the ctc baseline's
    lstm_layers: int = CTCConfig.lstm_layers
    dropout: float = CTCConfig.dropout  # base model and refiner transformers
    heads: int = 8
    condition_layers: int = 1         # transformer encoder layers over the gloss embeddings
    refiner_layers: int = 2           # layers of the noising encoder and of the denoising decoder (each)
    num_steps: int = 200              # diffusion steps T (see the module docstring)
    mask_ratio: float = 0.2           # fraction of frames replaced by the mask token in training
    lambda_rec: float = 1.0
    lambda_sem: float = 1.0
    refine_at_inference: bool = False
    condition_dropout: float = 0.1    # used only with refine_at_inference

    def __post_init__(self):
        if not (0.0 <= self.mask_ratio < 1.0 and 0.0 <= self.condition_dropout <= 1.0):
            raise InputError(f"need 0 <= mask_ratio < 1 and 0 <= condition_dropout <= 1, "
                             f"got {self.mask_ratio}, {self.condition_dropout}")


def cross_attending(c: ACDRConfig, layers: int) -> nn.TransformerDecoder:
    """Pre-norm layers of self-attention over frames and cross-attention to the conditions."""
    layer = nn.TransformerDecoderLayer(c.hidden, c.heads, 4 * c.hidden, c.dropout, batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(c.hidden))


class GlossConditions(nn.Module):
    """Gloss labels -> semantic conditions (null condition first, then the encoded glosses)."""

    def __init__(self, c: ACDRConfig, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, c.hidden)
        self.null = nn.Parameter(0.02 * torch.randn(1, 1, c.hidden))
        layer = nn.TransformerEncoderLayer(c.hidden, c.heads, 4 * c.hidden, c.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.condition_layers, norm=nn.LayerNorm(c.hidden),
                                             enable_nested_tensor=False)

    def forward(self, labels: torch.Tensor, label_lengths: torch.Tensor, drop: torch.Tensor) -> Conditions:
        """``labels`` concatenated 1-D, ``label_lengths`` [B]; rows where ``drop`` [B] keep only the null key."""
        glosses = pad_sequence(labels.split(label_lengths.tolist()), batch_first=True)  # (B, L)
        positions = torch.arange(glosses.shape[1], device=glosses.device)  # (L,)
        pad = positions >= label_lengths[:, None]  # (B, L)
        x = self.embed(glosses) + sinusoidal(positions, self.embed.embedding_dim)  # (B, L, H)
        x = self.encoder(x, src_key_padding_mask=pad).masked_fill(pad[..., None], 0.0)  # (B, L, H)
        null, null_pad = self.unconditional(glosses.shape[0])  # (B, 1, H), (B, 1)
        return torch.cat([null, x], 1), torch.cat([null_pad, pad | drop[:, None]], 1)  # (B, S, H), (B, S)

    def unconditional(self, batch_size: int) -> Conditions:
        """The null condition alone: memory [B, 1, H] and its mask [B, 1] (nothing masked)."""
        return self.null.expand(batch_size, 1, -1), torch.zeros(batch_size, 1, dtype=torch.bool,
                                                                device=self.null.device)


class NoisingEncoder(nn.Module):
    """x0 [B, T', H] -> diffusion-noised, partly masked frames that attended to the conditions."""

    def __init__(self, c: ACDRConfig):
        super().__init__()
        self.diffusion = GaussianDiffusion(DiffusionConfig(num_steps=c.num_steps))
        self.mask_token = nn.Parameter(0.02 * torch.randn(c.hidden))
        self.layers = cross_attending(c, c.refiner_layers)

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, masked: torch.Tensor,
                pad: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """x0 [B, T', H], t [B], noise [B, T', H], masked and pad [B, T'] (True = masked / padding)."""
        x = self.diffusion.q_sample(x0, t, noise)  # (B, T', H)
        x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)  # (B, T', H)
        x = x + sinusoidal(torch.arange(x.shape[1], device=x.device), x.shape[-1])  # + (T', H)
        memory, memory_pad = conditions  # (B, S, H), (B, S)
        return self.layers(x, memory, tgt_key_padding_mask=pad, memory_key_padding_mask=memory_pad)  # (B, T', H)


class DenoisingDecoder(nn.Module):
    """Encoded noisy frames [B, T', H] and timesteps [B] -> the x0 prediction [B, T', H]."""

    def __init__(self, c: ACDRConfig):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.layers = cross_attending(c, c.refiner_layers)
        self.out = nn.Linear(c.hidden, c.hidden)

    def forward(self, z: torch.Tensor, t: torch.Tensor, pad: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        z = z + self.time(sinusoidal(t, z.shape[-1]))[:, None]  # (B, T', H) + (B, 1, H)
        memory, memory_pad = conditions  # (B, S, H), (B, S)
        z = self.layers(z, memory, tgt_key_padding_mask=pad, memory_key_padding_mask=memory_pad)  # (B, T', H)
        return self.out(z)


class ACDRRecognizer(nn.Module):
    """CTC baseline + ACDR refiner, with the trainer's ``losses`` / ``recognize`` interface."""

    def __init__(self, streams: list[str], base: CTCConfig, c: ACDRConfig):
        super().__init__()
        self.streams, self.config = list(streams), c
        self.base = CTCBaseline(base)
        self.conditions = GlossConditions(c, base.num_classes)
        self.encoder = NoisingEncoder(c)
        self.decoder = DenoisingDecoder(c)

    def represent(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Base representations h [B, T', H], lengths [B] and the padding mask [B, T'] (True = padding)."""
        h, lengths = self.base.encode(*join_streams(batch, self.streams))  # (B, T', H), (B,)
        return h, lengths, padding_mask(lengths, h.shape[1])

    def refine(self, h: torch.Tensor, pad: torch.Tensor, conditions: Conditions, t: torch.Tensor,
               noise: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and denoise h: the refined h [B, T', H] and the reconstruction MSE over valid frames."""
        valid = (~pad).unsqueeze(-1).float()  # (B, T', 1)
        h = h.float()
        scale = ((h.detach() ** 2 * valid).sum((1, 2)) / (valid.sum((1, 2)) * h.shape[-1])).sqrt()  # (B,)
        scale = scale.clamp(min=1e-6)[:, None, None]  # (B, 1, 1)
        x0 = h / scale  # (B, T', H)
        z = self.encoder(x0, t, noise, masked, pad, conditions)  # (B, T', H)
        x0_hat = self.decoder(z, t, pad, conditions).float()  # (B, T', H)
        rec = (((x0_hat - x0.detach()) ** 2) * valid).sum() / (valid.sum() * h.shape[-1])
        return x0_hat * scale, rec

    def ctc_loss(self, h: torch.Tensor, lengths: torch.Tensor, batch: dict) -> torch.Tensor:
        return ctc_loss(self.base.classifier(h).float().log_softmax(-1), lengths, batch)

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        c = self.config
        h, lengths, pad = self.represent(batch)
        batch_size, steps = pad.shape
        drop_p = c.condition_dropout if (self.training and c.refine_at_inference) else 0.0
        drop = torch.rand(batch_size, device=h.device) < drop_p
        conditions = self.conditions(batch["labels"], batch["label_lengths"], drop)  # (B, S, H), (B, S)
        t = torch.randint(0, c.num_steps, (batch_size,), device=h.device)  # (B,)
        noise = torch.randn(h.shape, device=h.device)  # (B, T', H)
        masked = (torch.rand(batch_size, steps, device=h.device) < c.mask_ratio) & ~pad  # (B, T')
        refined, rec = self.refine(h, pad, conditions, t, noise, masked)
        ctc, sem = self.ctc_loss(h, lengths, batch), self.ctc_loss(refined, lengths, batch)
        return {"loss": ctc + c.lambda_rec * rec + c.lambda_sem * sem, "ctc": ctc, "rec": rec, "sem": sem}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.losses(batch)  # DistributedDataParallel calls forward

    def recognize(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        h, lengths, pad = self.represent(batch)
        if self.config.refine_at_inference:
            batch_size, steps = pad.shape
            t = torch.zeros(batch_size, dtype=torch.long, device=h.device)
            h, _ = self.refine(h, pad, self.conditions.unconditional(batch_size), t,
                               torch.zeros(h.shape, device=h.device), torch.zeros_like(pad))
        return self.base.classifier(h).log_softmax(-1), lengths  # (B, T', C), (B,)


def build_acdr(config, input_dims: dict[str, int], num_classes: int) -> ACDRRecognizer:
    c = checked_options("acdr", ACDRConfig, config.model_options)
    base = CTCConfig(input_dim=sum(input_dims[s] for s in config.streams), hidden=c.hidden,
                     lstm_layers=c.lstm_layers, dropout=c.dropout, num_classes=num_classes)
    return ACDRRecognizer(config.streams, base, c)
