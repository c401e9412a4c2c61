"""DiffSign: continuous sign language recognition as diffusion-based gloss generation.

Follows "DiffSign" (../shared/papers/diffsign-diffusion-cslr.md, sections 3-4). A video's features are
encoded to V [B, N, D]; the label to a fixed-length gloss feature sequence G [B, N', D]; a DiT generates
G' from noise conditioned on V, and a transformer decoder turns G' into CTC log-probs.

Shapes: B batch, N frames of V (after the visual encoder's temporal convolutions), N' gloss slots
(``gloss_tokens``), D hidden, C classes (blank 0), S tokens of whatever the decoder reads (V, G or G'),
L glosses of a label; T alone is the number of diffusion steps.

* :class:`GlossEncoder` (the paper uses a module derived from mBART; this compact transformer is the
  documented substitute): the label is laid out on N' = ``gloss_tokens`` slots as
  ``[g1, sep, g2, sep, ..., gL, sep, pad, ...]`` (a label holds at most N'/2 glosses), embedded, with
  learned positions, through ``gloss_layers`` transformer layers and a LayerNorm without affine
  parameters, so every token has zero mean and unit variance, the scale a diffusion model expects.
  The separators keep repeated glosses ("A A") apart for CTC.
* The visual encoder is the ``ctc`` baseline itself (:class:`CTCBaseline`: temporal convolutions, BiLSTM
  and its CTC head) over the cached features; V is its BiLSTM output, and its head's reading of V is
  stage 1's answer (the paper builds on a CTC-trained CSLR model). :meth:`initialise_from` loads it
  from a trained ``ctc`` checkpoint, frozen.
* :class:`Decoder`: ``decoder_layers`` (4) transformer layers + a linear classifier, with CTC (blank 0).
* :class:`DiT`: ``dit_layers`` (12) blocks of self-attention over the gloss tokens and MLP, both under
  adaLN-Zero modulation by the timestep embedding plus pooled V (Peebles & Xie), and cross-attention
  from the tokens to V. It predicts G (``prediction="x0"``) or the noise ("epsilon", the paper).
* The diffusion process is :class:`GaussianDiffusion` (Eq. 1-2): linear betas, T = ``num_steps``,
  ``beta_end`` 0.02 by default (the paper's 0.99 empties alpha_bar within the first 15 % of the chain,
  see :mod:`cslr_pipe.training.diffusion`; ``beta_end=0.99`` gives the paper's values), and the paper's
  ancestral variance Sigma = beta_t I (``variance_type="fixed_large"``).

Training runs in the paper's two stages (``phases``): **stage1** trains the visual encoder on the
baseline's loss CTC(head(V)), and the gloss encoder and the decoder on CTC(decoder(G)). **stage2**
freezes the gloss encoder and the decoder (in eval mode) and trains the DiT; the visual encoder keeps
learning CTC(head(V)) (``stage2_visual="train"``; "frozen" is the paper's), detached from the DiT, so
that the baseline inside DiffSign trains for every epoch, as ``ctc`` does. The DiT's loss is

    L = L_CTC + L_RSM + L_GFE + gamma L_DDM                                             (Eq. 8)

* L_DDM: the MSE of the DiT's prediction (G with ``prediction="x0"``, the default; the noise with
  "epsilon", the paper's) at a timestep drawn uniformly or, with ``ddm_timesteps="high"`` (default),
  with a density rising linearly towards T.
* The sampling losses run the reverse chain with gradients from pure noise (the paper's chain has T
  steps, too long to backpropagate through): with ``train_grid="random"`` (default) each batch runs
  k ~ U{1..``train_sampling_steps``} DDIM steps from T - 1 through k - 1 random timesteps, so the
  chains of training cover every inference grid; with "fixed", DDIM's grid of
  ``train_sampling_steps``. L_RSM = sum_i w_i CTC(decoder(X_i)) (Eq. 6), with w_i = 1 / k
  (``rsm_weights="uniform"``, default: each estimate is a whole answer) or the paper's delta, linear
  from ``delta_start`` (1e-4, the noisiest step) to ``delta_end`` (0.01) and scaled by T / k so they
  sum to what the paper's T weights sum to ("delta"); X_i is the x0 estimate of step i
  (``stepwise_ctc="x0"``, default: the one-step prediction from pure noise is trained too, and every
  term can be met) or the DDIM state after step i ("state", the literal reading: all states but the
  last are mostly noise and cannot decode). L_CTC = CTC(decoder(G')), the generated result.
* L_GFE (Eq. 7), per sampling step: M = the last block's cross-attention logits (q . k / sqrt(d) per
  head, averaged over heads), tokens x visual embeddings. Each valid visual embedding j is an anchor;
  if its attention over the tokens, softmax_i(M_ij), reaches ``tau`` (0.15) for its best token, that
  token is its positive and the loss is the InfoNCE term -log softmax_i(M_ij)[positive]; otherwise it
  is a transition with no positive and the loss log(1 + sum_i exp(M_ij)) pushes it away from every
  token. The per-step mean over anchors is weighted by the same w_i. (Eq. 7 writes one log around
  the weighted sum over steps and anchors; the weighted sum of per-anchor terms is the usual reading
  and keeps one easy anchor from masking the others.)
* ``use_rsm`` / ``use_gfe`` switch L_RSM and L_GFE off for ablations.

Not in the paper, each an option (docs/training.md says why each is on by default):
``ordinal_keys`` (each frame of V carries a sinusoidal code of its gloss slot, from stage 1's greedy
CTC reading of V), ``alignment_prior`` (a Gaussian bias of the cross-attention around that slot),
``null_memory`` (a learned memory entry beside V, for the separator and padding slots that no frame
belongs to), ``self_condition`` (the DiT also reads the previous step's x0 estimate), ``rescore``
(joint CTC rescoring of the hypothesis from G' against stage 1's, :func:`choose_reading`).
``memory="decoder"`` attends to the frozen decoder's hidden states over V instead of V itself (then the
decoder learns CTC(decoder(V)) in stage 1 too); ``dit_input="zeros"`` is the ablation of a DiT that never sees x_t.

Inference (``recognize``): before stage 2 has started, stage 1's reading; after, V -> G' sampled from
x_T ~ N(0, I) with DDIM in ``sampling_steps`` steps (eta 0, deterministic) or, with ``sampling_steps=0``,
the full T-step ancestral DDPM chain -> decoder -> CTC log-probs over the N' slots, or with ``rescore``
the log-probs of whichever reading the joint CTC score keeps. Seeded per video: x_T and DDPM's step
noise come from one random stream seeded from (``sampling_seed``, its id), whatever its batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn

from cslr_pipe.features.errors import InputError
from cslr_pipe.training.decoding import greedy_decode
from cslr_pipe.training.diffusion import DiffusionConfig, GaussianDiffusion
from cslr_pipe.training.models.ctc import CTCBaseline, CTCConfig, ctc_loss, join_streams
from cslr_pipe.training.models.layers import padding_mask, sinusoidal
from cslr_pipe.features.registry import checked_options

PHASES = ("stage1", "stage2")


@dataclass
class DiffSignConfig:
    """DiffSign's options (defaults: the paper's sizes); departures from the paper are marked."""

    hidden: int = 512                 # D
    lstm_layers: int = CTCConfig.lstm_layers  # visual encoder (the ctc baseline's)
    dropout: float = 0.1
    heads: int = 8
    gloss_tokens: int = 64            # N'
    gloss_layers: int = 2             # gloss encoder
    decoder_layers: int = 4           # the paper's decoder
    dit_layers: int = 12              # the paper's DiT
    num_steps: int = DiffusionConfig.num_steps  # T
    beta_end: float = DiffusionConfig.beta_end  # DDPM's 0.02; 0.99 = the paper's schedule (see the module docstring)
    prediction: str = "x0"            # what the DiT predicts: "x0" (default) or "epsilon" (the paper)
    gamma: float = 10.0               # weight of L_DDM
    ddm_timesteps: str = "high"       # L_DDM's t: "high" (density rising linearly with t) or "uniform" (the paper)
    delta_start: float = 1e-4         # delta of the noisiest sampling state (Eq. 6-7)
    delta_end: float = 0.01
    rsm_weights: str = "uniform"      # "uniform" (1/k per step) or "delta" (the paper's, above)
    tau: float = 0.15                 # GFE threshold on an embedding's attention to its best token
    stepwise_ctc: str = "x0"          # L_RSM's CTC on decoder(x0 estimate) of each step, or "state" (the paper)
    train_sampling_steps: int = 4     # DDIM steps run with gradients for L_CTC, L_RSM, L_GFE (at most, if random)
    train_grid: str = "random"        # "random": k ~ U{1..train_sampling_steps} steps from T-1 at random
                                      # timesteps; "fixed": DDIM's grid of train_sampling_steps (the paper's)
    sampling_steps: int = 4           # DDIM steps at inference; 0 = the full DDPM chain
    sampling_seed: int = 0            # x_T of each video at inference comes from (seed, video id)
    self_condition: bool = True       # the DiT also reads the previous step's x0 estimate (Chen et al. 2023)
    stage1_fraction: float = 0.4      # the paper: 40 of 100 epochs (at least 1 epoch each, see ``phases``)
    stage2_visual: str = "train"      # "train": the visual encoder and its CTC head keep learning their CTC
                                      # loss in stage 2, detached from the DiT; "frozen": the paper's
    use_rsm: bool = True
    use_gfe: bool = True
    ordinal_keys: bool = True         # not in the paper: tell the DiT which gloss slot each frame of V is
    null_memory: bool = True          # not in the paper: a learned entry beside V for slots without frames
    memory: str = "visual"            # what the DiT attends to: "visual" (V, the paper) or "decoder" (the
                                      # frozen decoder's last hidden states over V; it then also learns V in stage 1)
    rescore: bool = True              # not in the paper: per video, keep the reading of G' or stage 1's, whichever
                                      # both CTC heads find likelier (``choose_reading``); False = G' alone
    dit_input: str = "x_t"            # "zeros": an ablation, the DiT sees zeros instead of x_t (in training
                                      # too, or at inference only when set by `eval --model-option`)
    alignment_prior: float = 1.0      # not in the paper: sigma (slots) of a Gaussian cross-attention prior
                                      # around each frame's slot (see ``condition``); 0 = off

    def __post_init__(self):
        if self.gloss_tokens < 2 or not 0 <= self.stage1_fraction <= 1:
            raise InputError("need gloss_tokens >= 2 and 0 <= stage1_fraction <= 1")
        if not 1 <= self.train_sampling_steps <= self.num_steps or not 0 <= self.sampling_steps <= self.num_steps:
            raise InputError(f"sampling steps must be in 1..{self.num_steps} (0 = full DDPM at inference)")
        for name, value, allowed in (("stepwise_ctc", self.stepwise_ctc, ("x0", "state")),
                                     ("train_grid", self.train_grid, ("random", "fixed")),
                                     ("memory", self.memory, ("visual", "decoder")),
                                     ("stage2_visual", self.stage2_visual, ("train", "frozen")),
                                     ("dit_input", self.dit_input, ("x_t", "zeros")),
                                     ("rsm_weights", self.rsm_weights, ("delta", "uniform")),
                                     ("ddm_timesteps", self.ddm_timesteps, ("uniform", "high"))):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def encoder_layers(c: DiffSignConfig, layers: int) -> nn.TransformerEncoder:
    """Pre-norm transformer encoder layers over [B, S, D], a final LayerNorm."""
    layer = nn.TransformerEncoderLayer(c.hidden, c.heads, 4 * c.hidden, c.dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(c.hidden), enable_nested_tensor=False)


class GlossEncoder(nn.Module):
    """Labels -> G [B, N', D]: glosses and separators on N' slots, zero mean and unit variance per token."""

    def __init__(self, c: DiffSignConfig, num_classes: int):
        super().__init__()
        self.slots = c.gloss_tokens
        self.embed = nn.Embedding(num_classes + 2, c.hidden)  # + separator, padding
        self.separator, self.pad = num_classes, num_classes + 1
        self.position = nn.Parameter(0.02 * torch.randn(1, c.gloss_tokens, c.hidden))
        self.layers = encoder_layers(c, c.gloss_layers)
        self.norm = nn.LayerNorm(c.hidden, elementwise_affine=False)

    def layout(self, labels: torch.Tensor, label_lengths: torch.Tensor, ids: list[str]) -> torch.Tensor:
        """Token ids [B, N']: ``g1 sep g2 sep ... gL sep pad ...``."""
        tokens = torch.full((len(label_lengths), self.slots), self.pad, dtype=torch.long, device=labels.device)
        for b, (glosses, video_id) in enumerate(zip(labels.split(label_lengths.tolist()), ids)):
            if 2 * len(glosses) > self.slots:
                raise InputError(f"{video_id}: {len(glosses)} glosses do not fit gloss_tokens={self.slots} "
                                 f"(at most {self.slots // 2}); raise the model option gloss_tokens")
            tokens[b, 0:2 * len(glosses):2] = glosses
            tokens[b, 1:2 * len(glosses):2] = self.separator
        return tokens

    def forward(self, labels: torch.Tensor, label_lengths: torch.Tensor, ids: list[str]) -> torch.Tensor:
        tokens = self.layout(labels, label_lengths, ids)  # (B, N')
        return self.norm(self.layers(self.embed(tokens) + self.position))  # (B, N', D)


class Decoder(nn.Module):
    """Token features [B, S, D] (V, G or G') -> CTC log-probs [B, S, C]."""

    def __init__(self, c: DiffSignConfig, num_classes: int):
        super().__init__()
        self.layers = encoder_layers(c, c.decoder_layers)
        self.classifier = nn.Linear(c.hidden, num_classes)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None, return_hidden: bool = False):
        hidden = self.layers(x, src_key_padding_mask=pad)  # (B, S, D)
        log_probs = self.classifier(hidden).float().log_softmax(-1)  # (B, S, C)
        return (log_probs, hidden) if return_hidden else log_probs


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, S, D] scaled and shifted per sequence by [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class CrossAttention(nn.Module):
    """Multi-head attention from gloss tokens to V; also returns its logits averaged over heads, M."""

    def __init__(self, c: DiffSignConfig):
        super().__init__()
        self.heads = c.heads
        self.q, self.k, self.v, self.out = (nn.Linear(c.hidden, c.hidden) for _ in range(4))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor,
                prior: torch.Tensor | None = None):
        """``prior`` [B, N', N]: added to every head's logits (the alignment prior), or None."""
        q, k, v = self.q(x), self.k(memory), self.v(memory)  # (B, N', D), (B, N, D), (B, N, D)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  (B, heads, S, D / heads)
        mask = ~memory_pad[:, None, None, :]  # (B, 1, 1, N)
        if prior is not None:
            mask = prior[:, None].to(q.dtype).masked_fill(~mask, float("-inf"))  # (B, 1, N', N)
        attended = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v),
                                                              attn_mask=mask)  # (B, heads, N', D / heads)
        head_dim = q.shape[-1] // self.heads
        logits = q.float() @ k.float().transpose(1, 2) / (self.heads * head_dim ** 0.5)  # (B, N', N)
        logits = logits if prior is None else logits + prior
        return self.out(attended.transpose(1, 2).flatten(2)), logits  # (B, N', D), (B, N', N)


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention and MLP (DiT), with cross-attention to V in between."""

    def __init__(self, c: DiffSignConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(c.hidden, c.heads, dropout=c.dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(c.hidden)
        self.cross = CrossAttention(c)
        self.norm2 = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c.hidden, 4 * c.hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * c.hidden, c.hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, 6 * c.hidden))

    def forward(self, x, cond, memory, memory_pad, prior=None):
        """Tokens x [B, N', D], conditioning cond [B, D], memory [B, N, D] with its padding mask [B, N]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond).chunk(6, dim=-1)  # (B, 6 D) -> 6 x (B, D)
        h = modulate(self.norm1(x), shift1, scale1)  # (B, N', D)
        x = x + gate1[:, None] * self.attn(h, h, h, need_weights=False)[0]  # (B, N', D)
        attended, similarity = self.cross(self.norm_cross(x), memory, memory_pad, prior)  # (B, N', D), (B, N', N)
        x = x + attended
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, N', D)
        return x, similarity


class DiT(nn.Module):
    """(G_t [B, N', D], t [B], V, V's padding mask) -> the prediction (noise or G), last cross-attention
    similarity."""

    def __init__(self, c: DiffSignConfig):
        super().__init__()
        self.position = nn.Parameter(0.02 * torch.randn(1, c.gloss_tokens, c.hidden))
        # with ordinal keys, slot s meets the frames whose slot 2 (ordinal - 1) is s; a fixed
        # buffer, rebuilt from the config, so loading a checkpoint (resume into stage 2) cannot erase it
        code = sinusoidal(torch.arange(c.gloss_tokens), c.hidden)[None] if c.ordinal_keys else torch.zeros(1, 1, 1)
        self.register_buffer("slot_code", code, persistent=False)
        self.self_condition = nn.Linear(c.hidden, c.hidden) if c.self_condition else None
        # a learned memory entry every slot may attend to: where no frame is its own (separators, padding)
        self.null = nn.Parameter(0.02 * torch.randn(1, 1, c.hidden)) if c.null_memory else None
        self.time = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.pooled = nn.Linear(c.hidden, c.hidden)
        self.blocks = nn.ModuleList(DiTBlock(c) for _ in range(c.dit_layers))
        self.final_norm = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, 2 * c.hidden))
        self.final = nn.Linear(c.hidden, c.hidden)
        self.initialise()

    def initialise(self) -> None:
        """adaLN-Zero: every modulation, the output layer and the self-conditioning input start at 0, so
        each block starts as the identity and the DiT's first prediction is 0 (the rest keep torch's init)."""
        zeroed = [block.ada[1] for block in self.blocks] + [self.final_ada[1], self.final]
        for layer in zeroed + ([self.self_condition] if self.self_condition is not None else []):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, memory, memory_pad, previous_x0=None, prior=None):
        """x [B, N', D], t [B], memory [B, N, D] and its padding mask [B, N]; previous_x0 [B, N', D] or None,
        prior [B, N', N] or None."""
        valid = (~memory_pad).unsqueeze(-1).to(memory.dtype)  # (B, N, 1)
        pooled = (memory * valid).sum(1) / valid.sum(1).clamp(min=1)  # (B, D)
        cond = self.time(sinusoidal(t, x.shape[-1])) + self.pooled(pooled)  # (B, D)
        x = x + self.position + self.slot_code  # (B, N', D)
        if self.self_condition is not None and previous_x0 is not None:
            x = x + self.self_condition(previous_x0)
        if self.null is not None:
            memory = torch.cat([self.null.expand(x.shape[0], 1, -1).to(memory.dtype), memory], 1)  # (B, 1 + N, D)
            memory_pad = nn.functional.pad(memory_pad, (1, 0), value=False)  # (B, 1 + N)
            prior = None if prior is None else nn.functional.pad(prior, (1, 0))  # (B, N', 1 + N)
        similarity = None
        for block in self.blocks:
            x, similarity = block(x, cond, memory, memory_pad, prior)  # (B, N', D), (B, N', N or 1 + N)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)  # 2 x (B, D)
        similarity = similarity if self.null is None else similarity[..., 1:]  # (B, N', N): frames only
        return self.final(modulate(self.final_norm(x), shift, scale)), similarity  # (B, N', D), (B, N', N)


def gloss_contrastive_loss(logits: torch.Tensor, memory_pad: torch.Tensor, tau: float) -> torch.Tensor:
    """GFE term of one sampling step: mean over valid visual anchors (see the module docstring).

    ``logits`` [B, N', N] (tokens x embeddings), ``memory_pad`` [B, N] True on padding.
    """
    logits = logits.transpose(1, 2)  # (B, N, N') anchors x tokens
    normaliser = logits.logsumexp(-1)  # (B, N)
    best, positive = logits.max(-1)  # (B, N), (B, N)
    matched = normaliser - best  # -log softmax at the best token
    transition = nn.functional.softplus(normaliser)  # log(1 + sum_i exp(logit_i))
    per_anchor = torch.where((best - normaliser).exp() >= tau, matched, transition)
    valid = (~memory_pad).float()
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1)


class DiffSignRecognizer(nn.Module):
    """DiffSign with the trainer's interface: ``phases``/``set_phase``, ``losses``, ``recognize``."""

    def __init__(self, streams: list[str], input_dim: int, num_classes: int, c: DiffSignConfig):
        super().__init__()
        self.streams, self.config = list(streams), c
        # the CTC baseline itself (temporal convs + BiLSTM + CTC head): V is its hidden sequence
        self.visual = CTCBaseline(CTCConfig(input_dim=input_dim, hidden=c.hidden, lstm_layers=c.lstm_layers,
                                            dropout=c.dropout, num_classes=num_classes))
        self.gloss = GlossEncoder(c, num_classes)
        self.decoder = Decoder(c, num_classes)
        self.dit = DiT(c)
        self.diffusion = GaussianDiffusion(DiffusionConfig(num_steps=c.num_steps, beta_end=c.beta_end,
                                                           prediction=c.prediction, variance_type="fixed_large"))
        self.register_buffer("generating", torch.tensor(False))  # saved: which path recognize takes
        self.register_buffer("visual_pretrained", torch.tensor(False))  # set by initialise_from: never trained here
        self.set_phase("stage1")

    # ---------------------------------------------------------------- phases
    def phases(self, epochs: int) -> list[tuple[str, int]]:
        """``stage1_fraction`` of the epochs (rounded) for stage 1, the rest for stage 2; each stage
        gets at least one epoch when there are two."""
        first = min(max(round(self.config.stage1_fraction * epochs), 1), max(epochs - 1, 1))
        return [("stage1", first), ("stage2", epochs - first)]

    @property
    def visual_learns(self) -> bool:
        """Whether the visual encoder trains in the current phase."""
        if self.visual_pretrained:
            return False
        return not self.generating or self.config.stage2_visual == "train"

    def set_phase(self, name: str) -> None:
        """stage1: visual encoder, gloss encoder and decoder learn; stage2: the DiT learns, and the visual
        encoder too with ``stage2_visual="train"``. A visual encoder from ``initialise_from`` never learns."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; DiffSign has {', '.join(PHASES)}")
        self.generating.fill_(name == "stage2")
        for module in (self.gloss, self.decoder):
            module.requires_grad_(name == "stage1")
        self.visual.requires_grad_(self.visual_learns)
        self.dit.requires_grad_(name == "stage2")

    def train(self, mode: bool = True):
        super().train(mode)
        frozen = ((self.gloss, self.decoder) if self.generating else ()) + (() if self.visual_learns else (self.visual,))
        for module in frozen:  # no dropout, BatchNorm statistics stay
            module.eval()
        return self

    def initialise_from(self, state: dict, source: str) -> None:
        """Take the visual encoder and CTC head from a trained ``ctc`` checkpoint (its ``net.*``), frozen
        from then on: stage 1 trains only the gloss encoder and decoder. Raises InputError (one line)
        when the checkpoint is no ``ctc`` model of the same size."""
        model = state["config"].get("model")
        if model != "ctc":
            raise InputError(f"{source}: a {model!r} checkpoint; --init-from takes a `cslr-pipe train ctc` checkpoint")
        weights = {k[len("net."):]: v for k, v in state["model"].items() if k.startswith("net.")}
        expected = self.visual.state_dict()
        differ = sorted(k for k in expected if k not in weights or weights[k].shape != expected[k].shape)
        if differ:
            options = state["config"].get("model_options", {})
            raise InputError(f"{source}: its ctc model has other sizes than this diffsign's visual encoder "
                             f"({', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''}); the ctc run used "
                             f"hidden={options.get('hidden')}, lstm_layers={options.get('lstm_layers')}: "
                             f"give diffsign the same")
        self.visual.load_state_dict(weights)
        self.visual_pretrained.fill_(True)
        self.set_phase("stage2" if self.generating else "stage1")

    # a one-step chain without a self-conditioning input leaves dit.self_condition out of the graph (DDP)
    skips_parameters = True

    @property
    def stochastic(self) -> bool:
        """Recognition draws x_T (after stage 1 has ended): ``eval`` decodes several seeds."""
        return bool(self.generating)

    # ---------------------------------------------------------------- pieces
    def encode_video(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """V [B, N, D] and its padding mask [B, N] (True = padding)."""
        v, lengths = self.visual.encode(*join_streams(batch, self.streams))  # (B, N, D), (B,)
        return v, padding_mask(lengths, v.shape[1])  # (B, N, D), (B, N)

    def read_visual(self, v: torch.Tensor) -> torch.Tensor:
        """The CTC head's log-probs over V [B, N, C]: stage 1's reading, as the ``ctc`` baseline reads."""
        return self.visual.classifier(v).float().log_softmax(-1)  # (B, N, C)

    def condition(self, v: torch.Tensor, v_pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the DiT attends to: V layer-normalised (or the decoder's hidden states over V), plus with
        ``ordinal_keys`` an encoding of each frame's gloss slot; and the cross-attention prior [B, N', N]
        (``alignment_prior`` > 0) or None.

        Stage 1's CTC head reads V; the number of glosses its greedy reading has emitted up to frame j,
        o_j (a frame emits when its best class is no blank and differs from the previous frame's),
        places frame j at slot s_j = 2 (o_j - 1) of the layout. Its sinusoidal encoding is added to the
        memory; the prior adds -(s - s_j)^2 / (2 sigma^2) to the logits of slot s for frame j.
        """
        c = self.config
        v = v.detach()  # the DiT's losses never reach the visual encoder
        normalised = nn.functional.layer_norm(v, v.shape[-1:])  # (B, N, D): the scale of the slot codes
        if not c.ordinal_keys and not c.alignment_prior and c.memory == "visual":
            return normalised, None
        with torch.no_grad():
            best = self.read_visual(v).argmax(-1)  # (B, N)
            emits = (best != 0) & (best != nn.functional.pad(best, (1, 0))[:, :-1]) & ~v_pad  # (B, N)
            slot = 2 * (emits.cumsum(1) - 1).to(v.dtype)  # (B, N)
            memory = self.decoder(v, v_pad, return_hidden=True)[1] if c.memory == "decoder" else normalised
        prior = None
        if c.alignment_prior:
            slots = torch.arange(c.gloss_tokens, device=v.device, dtype=slot.dtype)  # (N',)
            prior = -(slots[None, :, None] - slot[:, None, :]) ** 2 / (2 * c.alignment_prior ** 2)  # (B, N', N)
        return (memory + sinusoidal(slot, v.shape[-1]).to(v.dtype) if c.ordinal_keys else memory), prior  # (B, N, D)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor,
                previous: torch.Tensor | None, prior: torch.Tensor | None):
        """The DiT's (prediction, similarity) at (x_t, t); with ``dit_input="zeros"`` it never sees x_t."""
        x = torch.zeros_like(x_t) if self.config.dit_input == "zeros" else x_t  # (B, N', D)
        return self.dit(x.to(memory.dtype), t, memory, memory_pad, previous, prior)  # (B, N', D), (B, N', N)

    def x0_estimate(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The DiT's estimate of G from its output at (x_t, t)."""
        return out.float() if self.config.prediction == "x0" else self.diffusion.predict_x0_from_eps(x_t, t, out)

    def training_grid(self) -> list[int]:
        """Timesteps of the chain run with gradients in stage 2 (descending, from T - 1)."""
        c = self.config
        if c.train_grid == "fixed":
            return self.diffusion.ddim_timesteps(c.train_sampling_steps).tolist()
        k = int(torch.randint(1, c.train_sampling_steps + 1, ()))
        return [c.num_steps - 1] + torch.randperm(c.num_steps - 1)[:k - 1].sort(descending=True).values.tolist()

    def video_generators(self, ids: list[str]) -> list[torch.Generator]:
        """One random stream per video, seeded from (``sampling_seed``, its id): x_T first, then DDPM's
        step noise, so a video's G' does not depend on the batch it is decoded in."""
        return [torch.Generator().manual_seed(zlib.crc32(f"{self.config.sampling_seed}/{video_id}".encode()))
                for video_id in ids]

    def initial_noise(self, ids: list[str], device, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """x_T [B, N', D]: each video's first draw from its own stream (:meth:`video_generators`)."""
        shape = (self.config.gloss_tokens, self.config.hidden)
        generators = self.video_generators(ids) if generators is None else generators
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)  # (B, N', D)

    def generate(self, v: torch.Tensor, v_pad: torch.Tensor, timesteps: list[int] | None,
                 noise: torch.Tensor | None = None, generator=None, prior: torch.Tensor | None = None):
        """G' from noise conditioned on V, by DDIM over ``timesteps`` (descending) or the full DDPM chain (None).

        ``generator``: one torch.Generator, or one per video. Returns (G', states after each step,
        x0 estimates of each step, cross-attention logits of each step).
        """
        shape = (v.shape[0], self.config.gloss_tokens, self.config.hidden)  # (B, N', D)
        estimates, similarities = [], []  # (B, N', D), (B, N', N) per step

        def denoise(x, t):
            previous = estimates[-1].detach().to(v.dtype) if estimates and self.config.self_condition else None
            out, similarity = self.denoise(x, t, v, v_pad, previous, prior)
            estimates.append(self.x0_estimate(out, x, t))
            similarities.append(similarity)
            return out

        g, states = self.diffusion.sample(denoise, shape, timesteps=timesteps, noise=noise, generator=generator,
                                          device=v.device, return_trajectory=True)  # (B, N', D), per step too
        return g, states, estimates, similarities

    def step_weights(self, k: int) -> torch.Tensor:
        """Weights of a k-step chain's terms: delta scaled by T / k, so they sum to what the paper's T
        weights sum to; or, with ``rsm_weights="uniform"``, 1 / k each."""
        c = self.config
        if c.rsm_weights == "uniform":
            return torch.full((k,), 1 / k)
        return self.diffusion.step_weights(c.delta_start, c.delta_end, steps=k) * (c.num_steps / k)

    def ddm_timesteps(self, n: int, device) -> torch.Tensor:
        """L_DDM's t [n]: uniform over 0..T-1, or with "high" a density rising linearly towards T - 1."""
        u = torch.rand(n, device=device)
        if self.config.ddm_timesteps == "high":
            u = u.sqrt()
        return (u * self.config.num_steps).long().clamp(max=self.config.num_steps - 1)

    # ---------------------------------------------------------------- trainer interface
    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        c = self.config
        v, v_pad = self.encode_video(batch)  # (B, N, D), (B, N)
        lengths = (~v_pad).sum(1)  # (B,)
        losses = {}
        if self.visual_learns:  # the baseline's own objective, in both stages
            losses["ctc_visual"] = ctc_loss(self.read_visual(v), lengths, batch)
        if not self.generating:
            g = self.gloss(batch["labels"], batch["label_lengths"], batch["ids"])  # (B, N', D)
            losses["ctc_gloss"] = ctc_loss(self.decoder(g), torch.full_like(batch["label_lengths"], g.shape[1]), batch)
            if c.memory == "decoder":  # the decoder reads V too, so its hidden states over V can be the memory
                losses["ctc_decoder_visual"] = ctc_loss(self.decoder(v, v_pad), lengths, batch)
            losses["loss"] = sum(losses.values())
            return losses
        v, prior = self.condition(v, v_pad)
        with torch.no_grad():
            g = self.gloss(batch["labels"], batch["label_lengths"], batch["ids"])  # (B, N', D)
        t = self.ddm_timesteps(g.shape[0], g.device)  # (B,)
        noise = torch.randn_like(g)
        g_t = self.diffusion.q_sample(g, t, noise)  # (B, N', D)
        previous = None
        if c.self_condition and torch.rand(()) < 0.5:  # half the time, the DiT's own first estimate
            with torch.no_grad():
                previous = self.x0_estimate(self.denoise(g_t, t, v, v_pad, None, prior)[0], g_t, t)
        prediction = self.denoise(g_t, t, v, v_pad, previous, prior)[0]  # (B, N', D)
        ddm = nn.functional.mse_loss(prediction.float(), self.diffusion.prediction_target(g, noise))
        _, states, estimates, similarities = self.generate(v, v_pad, self.training_grid(), prior=prior)
        decoded = estimates if c.stepwise_ctc == "x0" else states  # the last of both is G'
        weights = self.step_weights(len(decoded)).to(v.device)  # (k,)
        full = torch.full_like(batch["label_lengths"], c.gloss_tokens)  # (B,): every slot is read
        step_ctc = [ctc_loss(self.decoder(x.to(v.dtype)), full, batch) for x in decoded]
        losses.update(ctc=step_ctc[-1], ddm=ddm)
        losses["rsm"] = sum(w * l for w, l in zip(weights, step_ctc)) if c.use_rsm else ddm.new_zeros(())
        losses["gfe"] = (sum(w * gloss_contrastive_loss(s, v_pad, c.tau)
                             for w, s in zip(weights, similarities)) if c.use_gfe else ddm.new_zeros(()))
        losses["loss"] = (losses["ctc"] + losses["rsm"] + losses["gfe"] + c.gamma * ddm
                          + losses.get("ctc_visual", 0.0))
        return losses

    forward = losses  # DistributedDataParallel calls forward

    def recognize_for_selection(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """What dev WER selects best.pt on: G' alone, never rescored (rescoring falls back on stage 1's
        reading, which would make an untrained DiT at the start of stage 2 look best)."""
        return self.recognize(batch, rescore=False)

    def recognize(self, batch: dict, sampling_steps: int | None = None,
                  rescore: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probs and lengths; ``sampling_steps`` and ``rescore`` override the config (0 = full DDPM).

        Seeded per video: x_T and DDPM's step noise come from (``sampling_seed``, video id).
        """
        v, v_pad = self.encode_video(batch)  # (B, N, D), (B, N)
        if not self.generating:
            return self.read_visual(v), (~v_pad).sum(1)  # (B, N, C), (B,)
        steps = self.config.sampling_steps if sampling_steps is None else sampling_steps
        timesteps = self.diffusion.ddim_timesteps(steps).tolist() if steps else None
        generators = self.video_generators(batch["ids"])
        noise = self.initial_noise(batch["ids"], v.device, generators)  # (B, N', D)
        memory, prior = self.condition(v, v_pad)  # (B, N, D), (B, N', N) or None
        g = self.generate(memory, v_pad, timesteps, noise, generators, prior)[0]  # (B, N', D)
        generated = self.decoder(g.to(v.dtype))  # (B, N', C)
        slots = torch.full((v.shape[0],), g.shape[1], device=v.device)  # (B,)
        if not (self.config.rescore if rescore is None else rescore):
            return generated, slots
        return choose_reading(self.read_visual(v), (~v_pad).sum(1), generated, slots)


def choose_reading(stage1: torch.Tensor, stage1_lengths: torch.Tensor, generated: torch.Tensor,
                   generated_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per video, the log-probs (padded to the longer of [B, N, C] and [B, N', C]) and length of the reading
    whose greedy hypothesis has the higher joint score log p_CTC(h | stage 1) + log p_CTC(h | G'); ties and
    hypotheses neither can emit go to G'. Joint CTC rescoring of two candidates, as speech recognisers
    rescore attention hypotheses with a CTC head: G' can correct stage 1 only where stage 1 finds the
    correction plausible too, and a sentence G' breaks is caught where stage 1 finds it unlikely."""
    readings = [(stage1, stage1_lengths), (generated, generated_lengths)]
    scores = []
    for hypotheses in (greedy_decode(lp, lengths) for lp, lengths in readings):
        targets = torch.tensor([g for h in hypotheses for g in h], dtype=torch.long)
        target_lengths = torch.tensor([len(h) for h in hypotheses])
        scores.append(-sum(nn.functional.ctc_loss(lp.float().transpose(0, 1).cpu(), targets, lengths.cpu(),
                                                  target_lengths, reduction="none") for lp, lengths in readings))
    keep_stage1 = scores[0] > scores[1]  # (B,): -inf (not emittable) never wins
    steps = max(stage1.shape[1], generated.shape[1])
    pad = lambda x: nn.functional.pad(x, (0, 0, 0, steps - x.shape[1]))  # noqa: E731
    keep = keep_stage1.to(stage1.device)
    chosen = torch.where(keep[:, None, None], pad(stage1), pad(generated))  # (B, max(N, N'), C)
    return chosen, torch.where(keep, stage1_lengths, generated_lengths)


def build_diffsign(config, input_dims: dict[str, int], num_classes: int) -> DiffSignRecognizer:
    c = checked_options("diffsign", DiffSignConfig, config.model_options)
    return DiffSignRecognizer(config.streams, sum(input_dims[s] for s in config.streams), num_classes, c)


# Named sizes, as model options. "paper": the defaults (the paper's hidden 512, a 12-layer DiT, 4 decoder
# layers); "cpu": minutes per run on 2 CPU cores, the size of bench/trainers.py and bench/diffsign_probe.py.
SIZES = {
    "paper": {},
    "cpu": {"hidden": 128, "lstm_layers": 2, "dropout": 0.1, "heads": 4, "gloss_layers": 1, "decoder_layers": 2,
            "dit_layers": 4, "gloss_tokens": 16},
}

# The paper's optimisation (section 4.1), for a ResNet-34 trained end to end on PHOENIX: Adam, lr 1e-4,
# weight decay 1e-4, batch 2, 40 + 60 epochs, lr x 0.2 at epochs 20 and 35 of stage 1 and 30 and 50 of
# stage 2 (fractions 0.5, 0.85 of each stage). Not the defaults: on cached features DiffSign trains with
# the ctc baseline's settings, so that the two compare at the same epochs (docs/training.md).
PAPER_TRAINING = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4, "batch_size": 2, "epochs": 100,
                  "lr_schedule": "step", "lr_milestones": [0.5, 0.85], "lr_gamma": 0.2}
