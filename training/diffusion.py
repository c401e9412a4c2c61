"""Gaussian diffusion over feature sequences (DDPM training and sampling, DDIM sampling in k steps).

Compact and linear (DiT / nanoGPT style): one plain dataclass config, one class. It is the noise
process of DiffSign (sections 3.2 and 4.1): gloss features ``G`` are noised by the DDPM forward process

    q(G_t | G_{t-1}) = N(sqrt(1 - beta_t) G_{t-1}, beta_t I)                      (Eq. 1)
    G_t = sqrt(alpha_bar_t) G_0 + sqrt(1 - alpha_bar_t) eps,  alpha_bar_t = prod_{s<=t} (1 - beta_s)  (Eq. 2)

and a denoiser (a DiT conditioned on the video features) runs the reverse chain.

Conventions
-----------
* Timesteps are 0-indexed like diffusers: index ``t`` in ``0..num_steps-1`` is the paper's step ``t + 1``
  (``betas[0]`` is the paper's beta_1). Every method takes a ``[B]`` tensor of timesteps (an int is
  broadcast) and tensors of any trailing shape ``[B, ...]``. Shapes: B batch, T = ``num_steps`` (the
  schedule's buffers are [T]), k sampling steps; ``...`` whatever follows the batch (DiffSign: N', D).
* The schedule is built and kept in float64 (buffers, also after ``.to(dtype)``/``.half()``); the
  per-sample coefficients are formed in float64 and the arithmetic runs in float32 (float64 inputs stay
  float64), so bf16/fp16 model outputs under autocast are upcast, and results are float32.
* ``prediction`` says what ``denoise_fn``/``model_out`` predicts: ``"epsilon"`` (the noise) or ``"x0"``
  (the clean features). DiffSign predicts the noise ("We adopt a 12-layer DiT to predict the noise",
  section 4.1; "Utilizing the predicted noise from the DDM", section 3.2.1), hence the default.
* ``variance_type`` of the ancestral DDPM step: ``"fixed_small"`` = the true posterior variance
  beta~_t (default, DDPM and diffusers default) or ``"fixed_large"`` = beta_t, which is what DiffSign
  writes (Sigma_theta = beta_t I, section 3.2.1). Ho et al. report both give similar samples.

Schedule: the paper versus the default
--------------------------------------
DiffSign states T = 1000 and beta linear from 1e-4 to **0.99**. The DDPM value is 0.02, the default
here; the paper's values are :meth:`DiffusionConfig.diffsign`. With ``beta_end=0.99`` beta grows by
~1e-3 per step, so alpha_bar collapses within the first ~15 % of the chain: alpha_bar = 0.29 at t=49,
6.2e-3 at t=99, 8.5e-6 at t=149, 6.3e-10 at t=199, 1.8e-66 at t=499 and ~1e-415 at t=999 (it is
exactly 0 in float32 from t=422 on, and in float64 from t=936 on). So 87 % of the timesteps have
SNR = alpha_bar / (1 - alpha_bar) < 1e-4: x_t is pure noise there, uniform-t training spends most
of its steps on inputs that carry no signal, and x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)
is infinitely ill-conditioned for epsilon prediction (this class forms the DDPM/DDIM updates without
dividing by sqrt(alpha_bar) where it can, so they stay finite, but ``predict_x0_from_eps`` is inf
where alpha_bar underflows). With 0.02, alpha_bar_T = 4.0e-5 and only 4.6 % of the steps have
SNR < 1e-4. If you do use the paper's schedule, prefer ``prediction="x0"``.

DDIM timesteps use diffusers' ``"trailing"`` spacing: ``round(T - i T / k) - 1`` for i = 0..k-1, i.e.
[999, 979, ..., 19] for k=50. Unlike ``"leading"`` ([980, ..., 0]) it starts at the last training
timestep, where the sampler's N(0, I) start matches q(x_T) (Lin et al., "Common diffusion noise
schedules and sample steps are flawed", Table 2), and the last step goes to alpha_bar = 1 (diffusers'
``set_alpha_to_one=True``), so the sample is the final x0 prediction. ``sample`` steps from each
timestep to the next one in that list (diffusers' DDIMScheduler instead steps to ``t - T // k``, which
is the same list when k divides T).

DiffSign's step-wise weights delta_t (Eq. 6 and 7) rise linearly from 1e-4 to 0.01. The paper's
rationale ("in the initial few iterations ... the generated gloss features are mostly noise", so they
get the small weights) fixes the order: :meth:`GaussianDiffusion.step_weights` is in *sampling order*,
entry i weighting the state after sampling iteration i (the first, noisiest iteration gets ``start``),
aligned with the trajectory that ``sample(..., return_trajectory=True)`` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import torch
from torch import nn

from cslr_pipe.features.errors import InputError

PREDICTIONS = ("epsilon", "x0")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
SCHEDULES = ("linear", "cosine")


@dataclass
class DiffusionConfig:
    """The noise schedule (T, betas), what the denoiser predicts and the ancestral step's variance."""

    num_steps: int = 1000           # T
    beta_start: float = 1e-4        # beta_1
    beta_end: float = 0.02          # beta_T (DDPM default; DiffSign states 0.99, see the module docstring)
    schedule: str = "linear"        # "linear" (DDPM, DiffSign) or "cosine" (Nichol & Dhariwal; ignores beta_*)
    prediction: str = "epsilon"     # what the denoiser predicts: "epsilon" (DiffSign) or "x0"
    variance_type: str = "fixed_small"  # ancestral step variance: "fixed_small" (posterior) or "fixed_large" (beta_t)

    def __post_init__(self):
        if self.num_steps < 1:
            raise InputError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise InputError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES),
                                     ("prediction", self.prediction, PREDICTIONS),
                                     ("variance_type", self.variance_type, VARIANCE_TYPES)):
            if value not in allowed:
                raise InputError(f"{name} must be one of {allowed}, got {value!r}")

    @classmethod
    def diffsign(cls, **overrides) -> "DiffusionConfig":
        """The values DiffSign states: T=1000, beta linear 1e-4 -> 0.99, noise prediction, Sigma = beta_t I."""
        values = dict(num_steps=1000, beta_start=1e-4, beta_end=0.99, schedule="linear", prediction="epsilon",
                      variance_type="fixed_large")
        values.update(overrides)
        return cls(**values)


def make_betas(config: DiffusionConfig) -> torch.Tensor:
    """beta_1..beta_T [T] in float64."""
    T = config.num_steps
    if config.schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    # cosine: alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2), betas capped at 0.999 (diffusers squaredcos_cap_v2)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)


class GaussianDiffusion(nn.Module):
    """The forward process, its posterior, and DDPM / DDIM reverse steps for one schedule."""

    def __init__(self, config: DiffusionConfig | None = None):
        super().__init__()
        self.config = config or DiffusionConfig()
        self.num_steps = self.config.num_steps
        self._build(torch.device("cpu"))

    def _build(self, device: torch.device):
        betas = make_betas(self.config).to(device)
        alphas = 1.0 - betas
        log_ac = torch.cumsum(torch.log1p(-betas), 0)                 # log alpha_bar, finite where alpha_bar underflows
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        buffers = dict(
            betas=betas, alphas=alphas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, log_alphas_cumprod=log_ac,
            sqrt_alphas_cumprod=ac.sqrt(), sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(),
            sqrt_recip_alphas_cumprod=torch.exp(-0.5 * log_ac),
            sqrt_recipm1_alphas_cumprod=torch.sqrt(torch.expm1(-log_ac)),
            # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)
            posterior_variance=betas * (1.0 - ac_prev) / (1.0 - ac),
            posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
        )
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(device) moves the schedule; a dtype cast (.half(), .to(bfloat16)) must not degrade it: rebuild in float64.
        super()._apply(fn, recurse)
        self._build(self.betas.device)
        return self

    # ------------------------------------------------------------------ helpers
    def _timesteps(self, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t  # (B,)
        return t.to(device=self.betas.device, dtype=torch.long)

    def _coef(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample float64 coefficients [B] -> [B, 1, ..., 1] in x's dtype and device."""
        return values.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, ..., 1)

    def _gather(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._coef(getattr(self, name)[t], x)

    def _log_ac(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_bar at t (float64 [B]); t = -1 means "before step 1": alpha_bar = 1."""
        return torch.where(t >= 0, self.log_alphas_cumprod[t.clamp(min=0)], torch.zeros((), dtype=torch.float64,
                                                                                           device=t.device))

    @staticmethod
    def _f32(*xs: torch.Tensor):
        """Upcast to float32 (float64 stays): the math runs in at least float32, also under autocast."""
        out = tuple(x if x.dtype in (torch.float32, torch.float64) else x.float() for x in xs)
        return out if len(out) > 1 else out[0]

    @staticmethod
    def _randn(like: torch.Tensor, generator: torch.Generator | list | None) -> torch.Tensor:
        """Standard normal noise shaped like ``like``, drawn on the generator's device (as diffusers' randn_tensor);
        ``generator`` may be a list, one per item of the batch (each item's noise from its own stream)."""
        if generator is None:
            return torch.randn(like.shape, device=like.device, dtype=like.dtype)
        if isinstance(generator, (list, tuple)):
            if len(generator) != like.shape[0]:
                raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}")
            return torch.stack([torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype)
                                for g in generator]).to(like.device)  # B x (...) -> (B, ...)
        return torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (Eq. 2)."""
        x0 = self._f32(x0)
        t = self._timesteps(t, x0)
        noise = torch.randn_like(x0) if noise is None else self._f32(noise).to(x0.dtype)
        return (self._gather("sqrt_alphas_cumprod", t, x0) * x0
                + self._gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """Mean and variance ([B, 1, ...]) of q(x_{t-1} | x_t, x_0); the variance is 0 at t = 0."""
        x0, x_t = self._f32(x0, x_t)
        t = self._timesteps(t, x_t)
        mean = self._gather("posterior_mean_coef1", t, x_t) * x0 + self._gather("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._gather("posterior_variance", t, x_t)

    def predict_x0_from_eps(self, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        x_t, eps = self._f32(x_t, eps)
        t = self._timesteps(t, x_t)
        return (self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        x_t, x0 = self._f32(x_t, x0)
        t = self._timesteps(t, x_t)
        return ((x_t - self._gather("sqrt_alphas_cumprod", t, x_t) * x0)
                / self._gather("sqrt_one_minus_alphas_cumprod", t, x_t))

    # ------------------------------------------------------------------ training
    def training_targets(self, x0: torch.Tensor, generator: torch.Generator | None = None):
        """(t [B] uniform over 0..T-1, noise, x_t) for one training step; regress ``prediction_target``."""
        x0 = self._f32(x0)
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_steps, (x0.shape[0],), generator=generator, device=device).to(x0.device)  # (B,)
        noise = self._randn(x0, generator)
        return t, noise, self.q_sample(x0, t, noise)

    def prediction_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output for (x0, noise): noise for "epsilon", x0 for "x0"."""
        return noise if self.config.prediction == "epsilon" else x0

    def step_weights(self, start: float = 1e-4, end: float = 0.01, steps: int | None = None) -> torch.Tensor:
        """DiffSign's delta (Eq. 6-7): linear from ``start`` to ``end`` over the sampling iterations, in sampling order.

        ``steps`` None: the T iterations of full DDPM sampling; k: the k DDIM iterations. Entry i weights the
        state after iteration i (the trajectory of ``sample``); the first, noisiest iteration gets ``start``.
        For a diffusion timestep index t of the full chain the weight is ``step_weights()[T - 1 - t]``.
        """
        n = self.num_steps if steps is None else steps
        return torch.linspace(start, end, n, dtype=torch.float64).float()

    # ------------------------------------------------------------------ reverse steps
    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, t):
        """(mean, variance [B, 1, ...], x0 prediction) of p(x_{t-1} | x_t) for the configured prediction/variance."""
        model_out, x_t = self._f32(model_out, x_t)
        t = self._timesteps(t, x_t)
        if self.config.prediction == "x0":
            x0 = model_out
            mean, _ = self.posterior_mean_variance(x0, x_t, t)
        else:
            x0 = self.predict_x0_from_eps(x_t, t, model_out)
            # mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t): no division by sqrt(alpha_bar_t)
            mean = self._coef(self.alphas[t].rsqrt(), x_t) * (
                x_t - self._coef(self.betas[t] / self.sqrt_one_minus_alphas_cumprod[t], x_t) * model_out)
        name = "posterior_variance" if self.config.variance_type == "fixed_small" else "betas"
        return mean, self._gather(name, t, x_t), x0

    def p_sample_step(self, model_out: torch.Tensor, x_t: torch.Tensor, t, generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """One ancestral DDPM step x_t -> x_{t-1} = mean + sqrt(variance) noise (no noise where t = 0)."""
        model_out, x_t = self._f32(model_out, x_t)
        t = self._timesteps(t, x_t)
        mean, variance, _ = self.p_mean_variance(model_out, x_t, t)
        noise = self._randn(x_t, generator) if noise is None else self._f32(noise).to(x_t.dtype)
        nonzero = self._coef((t > 0).double(), x_t)
        return mean + nonzero * variance.sqrt() * noise

    def ddim_timesteps(self, k: int) -> torch.Tensor:
        """k descending timesteps, "trailing" spacing: round(T - i T / k) - 1, i = 0..k-1 (diffusers' DDIMScheduler)."""
        if not 1 <= k <= self.num_steps:
            raise InputError(f"DDIM steps must be in 1..{self.num_steps}, got {k}")
        # exact rational arithmetic (round half to even, as numpy): diffusers' float np.arange can be off by one
        return torch.tensor([round(Fraction(self.num_steps * (k - i), k)) - 1 for i in range(k)], dtype=torch.long)

    def ddim_step(self, model_out: torch.Tensor, x_t: torch.Tensor, t, t_prev, eta: float = 0.0,
                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One DDIM step x_t -> x_{t_prev} (t_prev < t; -1 = the clean end, alpha_bar = 1); eta=0 is deterministic.

        x' = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s noise, s = eta sqrt((1 - ab') / (1 - ab) (1 - ab / ab')).
        """
        model_out, x_t = self._f32(model_out, x_t)
        t, t_prev = self._timesteps(t, x_t), self._timesteps(t_prev, x_t)
        log_ab, log_ab_prev = self._log_ac(t), self._log_ac(t_prev)
        ab, ab_prev = log_ab.exp(), log_ab_prev.exp()
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab) * -torch.expm1(log_ab - log_ab_prev))
        c_dir = torch.sqrt((1 - ab_prev - sigma ** 2).clamp(min=0))
        if self.config.prediction == "x0":
            # eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
            c_x0 = ab_prev.sqrt() - c_dir * ab.sqrt() / (1 - ab).sqrt()
            out = self._coef(c_x0, x_t) * model_out + self._coef(c_dir / (1 - ab).sqrt(), x_t) * x_t
        else:
            # x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab); sqrt(ab' / ab) in log space stays finite where ab underflows
            ratio = torch.exp(0.5 * (log_ab_prev - log_ab))
            out = self._coef(ratio, x_t) * x_t + self._coef(c_dir - ratio * (1 - ab).sqrt(), x_t) * model_out
        if eta > 0:
            noise = self._randn(x_t, generator) if noise is None else self._f32(noise).to(x_t.dtype)
            out = out + self._coef(sigma, x_t) * noise
        return out

    # ------------------------------------------------------------------ sampling
    def sample(self, denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape, steps: int | None = None,
               eta: float = 0.0, generator: torch.Generator | None = None, device=None,
               noise: torch.Tensor | None = None, return_trajectory: bool = False,
               timesteps: list[int] | None = None):
        """Reverse chain from x_T ~ N(0, I) (or ``noise``): full DDPM (``steps`` None) or DDIM in ``steps`` steps
        (or over the given descending ``timesteps``).

        ``denoise_fn(x_t, t)`` gets x_t and a [B] long tensor of timesteps and returns the prediction
        (epsilon or x0, per the config). Gradients flow unless the caller wraps this in ``torch.no_grad()``
        (DiffSign's step-wise losses need them). With ``return_trajectory`` returns (x_0, [state after each
        iteration]), the list aligned with ``step_weights(steps=steps)``.
        """
        if noise is not None:
            x = self._f32(noise)
        else:
            device = torch.device(device) if device is not None else self.betas.device
            x = self._randn(torch.empty(shape, device=device), generator)
        ancestral = steps is None and timesteps is None
        if ancestral:
            timesteps = list(range(self.num_steps - 1, -1, -1))
        elif timesteps is None:
            timesteps = self.ddim_timesteps(steps).tolist()
        elif any(a <= b for a, b in zip(timesteps, timesteps[1:])) or not 0 <= timesteps[-1] <= timesteps[0] < self.num_steps:
            raise ValueError(f"timesteps must descend within 0..{self.num_steps - 1}, got {timesteps}")
        trajectory = []
        for i, t in enumerate(timesteps):
            tb = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
            out = denoise_fn(x, tb)
            if ancestral:
                x = self.p_sample_step(out, x, tb, generator=generator)
            else:
                t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                x = self.ddim_step(out, x, tb, t_prev, eta=eta, generator=generator)
            if return_trajectory:
                trajectory.append(x)
        return (x, trajectory) if return_trajectory else x
