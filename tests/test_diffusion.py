"""GaussianDiffusion: closed-form checks (always) and agreement with diffusers' DDPM/DDIM schedulers (if installed)."""

from __future__ import annotations

import math

import pytest
import torch

from cslr_pipe.training.diffusion import DiffusionConfig, GaussianDiffusion

T = 1000


def diffusion(**kw) -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig(**kw))


def oracle(d: GaussianDiffusion, x0: torch.Tensor):
    """A denoiser that knows the clean sample: returns x0, or the noise that x0 implies at (x_t, t)."""
    if d.config.prediction == "x0":
        return lambda x_t, t: x0.expand_as(x_t)
    return lambda x_t, t: d.predict_eps_from_x0(x_t, t, x0.expand_as(x_t))


def smooth_denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, deterministic stand-in for a network: depends on x_t and t."""
    return 0.5 * torch.tanh(x_t) + 0.1 * torch.cos(t.float() / 100.0).reshape(-1, *([1] * (x_t.ndim - 1)))


# ---------------------------------------------------------------------------------------- closed form

def test_alpha_bar_at_known_t():
    d = diffusion()
    beta = lambda i: 1e-4 + (0.02 - 1e-4) * i / (T - 1)  # noqa: E731  (0-indexed: beta_{i+1} of the paper)
    for t in (0, 1, 9, 499, 999):
        expected = math.prod(1 - beta(i) for i in range(t + 1))
        assert d.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-12)
    assert d.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, rel=1e-12)
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    assert d.betas.dtype == torch.float64
    assert torch.all(d.alphas_cumprod[1:] < d.alphas_cumprod[:-1])


def test_q_sample_is_eq2_and_batched_over_t():
    d = diffusion()
    x0 = torch.randn(4, 3, 5)
    noise = torch.randn(4, 3, 5)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    ab = d.alphas_cumprod[t].float().reshape(4, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # each row equals the single-timestep call, and an int broadcasts
    for i in range(4):
        torch.testing.assert_close(x_t[i:i + 1], d.q_sample(x0[i:i + 1], int(t[i]), noise[i:i + 1]))


def test_q_sample_statistics_match_eq1_chain():
    """The marginal of Eq. 2 equals running the Markov chain of Eq. 1 (mean and variance over many samples)."""
    d = diffusion()
    torch.manual_seed(0)
    n, t_max = 20000, 300
    x0 = torch.full((n,), 1.5)
    x = x0.clone()
    for t in range(t_max + 1):  # Eq. 1, step by step
        x = torch.sqrt(1 - d.betas[t]).float() * x + d.betas[t].sqrt().float() * torch.randn(n)
    direct = d.q_sample(x0.reshape(1, n), t_max)[0]  # Eq. 2, one shot
    ab = d.alphas_cumprod[t_max].item()
    for sample in (x, direct):
        assert sample.mean().item() == pytest.approx(math.sqrt(ab) * 1.5, abs=4 * math.sqrt((1 - ab) / n))
        assert sample.var().item() == pytest.approx(1 - ab, rel=0.05)


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x0) from Bayes: precision = 1/(1 - ab_{t-1}) + alpha_t / beta_t."""
    d = diffusion()
    x0, x_t = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    t = torch.tensor([1, 250, 999])
    mean, var = d.posterior_mean_variance(x0, x_t, t)
    ab_prev, a, b = d.alphas_cumprod[t - 1], d.alphas[t], d.betas[t]
    expected_var = 1 / (1 / (1 - ab_prev) + a / b)
    expected_mean = expected_var[:, None] * (ab_prev.sqrt()[:, None] * x0 / (1 - ab_prev)[:, None]
                                             + a.sqrt()[:, None] * x_t / b[:, None])
    torch.testing.assert_close(var.flatten(), expected_var)
    torch.testing.assert_close(mean, expected_mean)
    # at t = 0 the posterior is the point x0
    mean0, var0 = d.posterior_mean_variance(x0, x_t, 0)
    assert torch.all(var0 == 0)
    torch.testing.assert_close(mean0, x0)


def test_x0_eps_conversions_roundtrip():
    d = diffusion()
    x0, eps = torch.randn(5, 4, 6), torch.randn(5, 4, 6)
    t = torch.tensor([0, 3, 100, 700, 999])
    x_t = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_eps_from_x0(x_t, t, x0), eps, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(d.predict_x0_from_eps(x_t, t, eps), x0, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_epsilon_and_x0_parameterisations_give_the_same_step(variance_type):
    de = diffusion(prediction="epsilon", variance_type=variance_type)
    dx = diffusion(prediction="x0", variance_type=variance_type)
    x0, eps = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    t = torch.tensor([0, 1, 400, 999])
    x_t = de.q_sample(x0, t, eps)
    me, ve, x0e = de.p_mean_variance(eps, x_t, t)
    mx, vx, _ = dx.p_mean_variance(x0, x_t, t)
    torch.testing.assert_close(me, mx)
    torch.testing.assert_close(ve, vx)
    torch.testing.assert_close(x0e, x0)
    expected_var = de.posterior_variance[t] if variance_type == "fixed_small" else de.betas[t]
    torch.testing.assert_close(ve.flatten(), expected_var)
    noise = torch.randn(4, 8, dtype=torch.float64)
    for k in (1, 7, 50):
        tp = torch.clamp(t - T // k, min=-1)
        torch.testing.assert_close(de.ddim_step(eps, x_t, t, tp, eta=0.7, noise=noise),
                                   dx.ddim_step(x0, x_t, t, tp, eta=0.7, noise=noise))


def test_ddim_eta_one_variance_is_the_posterior_variance_for_adjacent_steps():
    d = diffusion(prediction="x0")
    x0, x_t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    t = torch.tensor([1, 500, 999])
    zero = torch.zeros_like(x_t)
    noise = torch.ones_like(x_t)
    sigma = d.ddim_step(x0, x_t, t, t - 1, eta=1.0, noise=noise) - d.ddim_step(x0, x_t, t, t - 1, eta=1.0, noise=zero)
    torch.testing.assert_close(sigma[:, 0] ** 2, d.posterior_variance[t])
    # and its mean is then the DDPM posterior mean
    mean, _ = d.posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(d.ddim_step(x0, x_t, t, t - 1, eta=1.0, noise=zero), mean)


def test_ddim_timesteps_trailing():
    d = diffusion()
    assert d.ddim_timesteps(50).tolist() == list(range(999, 0, -20))
    assert d.ddim_timesteps(1).tolist() == [999]
    assert d.ddim_timesteps(T).tolist() == list(range(999, -1, -1))
    assert d.ddim_timesteps(3).tolist() == [999, 666, 332]
    for k in (7, 48, 61, 333):
        ts = d.ddim_timesteps(k)
        assert len(ts) == k and ts[0] == T - 1 and ts.min() >= 0 and torch.all(ts[1:] < ts[:-1])
    with pytest.raises(ValueError):
        d.ddim_timesteps(0)
    with pytest.raises(ValueError):
        d.ddim_timesteps(T + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
@pytest.mark.parametrize("k", [1, 7, 50])
def test_ddim_eta0_with_oracle_recovers_x0_exactly(prediction, k, dtype):
    d = diffusion(prediction=prediction)
    x0 = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)
    noise = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(2), dtype=dtype)
    out = d.sample(oracle(d, x0), None, steps=k, noise=noise)
    assert out.dtype == dtype
    # exact up to rounding; an epsilon oracle's rounding error is amplified by 1 / sqrt(alpha_bar_999) = 157
    tol = 1e-10 if dtype == torch.float64 else (1e-6 if prediction == "x0" else 2e-4)
    torch.testing.assert_close(out, x0, atol=tol, rtol=0)


@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
def test_ddpm_with_oracle_recovers_x0_and_visits_q_marginals(prediction):
    d = diffusion(prediction=prediction)
    n = 4000
    x0 = torch.linspace(-2, 2, 4)[:, None].expand(4, n)  # [4, n]: n chains (elements) per clean value
    out, traj = d.sample(oracle(d, x0), (4, n), generator=torch.Generator().manual_seed(3), return_trajectory=True)
    assert len(traj) == T and traj[-1] is out
    # the last step (t=0) adds no noise and its posterior mean is x0 itself
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)
    # with the true x0 the chain is exact ancestral sampling of q, so x_t ~ q(x_t | x0) = N(sqrt(ab) x0, 1 - ab)
    for t in (800, 300, 50):
        x_t = traj[T - 1 - t]
        ab = d.alphas_cumprod[t].item()
        torch.testing.assert_close(x_t.mean(1), math.sqrt(ab) * x0[:, 0], atol=5 * math.sqrt((1 - ab) / n), rtol=0)
        torch.testing.assert_close(x_t.var(1), torch.full((4,), 1 - ab), rtol=0.1, atol=0)


def test_sample_is_reproducible_and_ddim_eta_noise_is_used():
    d = diffusion(num_steps=100)
    a = d.sample(smooth_denoiser, (2, 3), steps=10, eta=1.0, generator=torch.Generator().manual_seed(0))
    b = d.sample(smooth_denoiser, (2, 3), steps=10, eta=1.0, generator=torch.Generator().manual_seed(0))
    c = d.sample(smooth_denoiser, (2, 3), steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    noise = torch.randn(2, 3)
    e0 = d.sample(smooth_denoiser, None, steps=10, noise=noise)
    torch.testing.assert_close(e0, d.sample(smooth_denoiser, None, steps=10, noise=noise))


def test_step_weights_endpoints_and_monotone():
    d = diffusion()
    w = d.step_weights()
    assert w.shape == (T,) and w.dtype == torch.float32
    assert w[0].item() == pytest.approx(1e-4) and w[-1].item() == pytest.approx(0.01)
    assert torch.all(w[1:] > w[:-1])
    torch.testing.assert_close(w[1:] - w[:-1], torch.full((T - 1,), (0.01 - 1e-4) / (T - 1)), rtol=1e-3, atol=0)
    w10 = d.step_weights(steps=10)
    assert w10.shape == (10,) and w10[0].item() == pytest.approx(1e-4) and w10[-1].item() == pytest.approx(0.01)
    # aligned with the DDIM trajectory: one weight per sampling iteration, noisiest first
    _, traj = d.sample(smooth_denoiser, (2, 3), steps=10, return_trajectory=True)
    assert len(traj) == len(w10)
    assert d.step_weights(1e-3, 0.1, steps=3).tolist() == pytest.approx([1e-3, 0.0505, 0.1])


def test_training_targets():
    d = diffusion(prediction="x0")
    x0 = torch.randn(64, 5, 3)
    t, noise, x_t = d.training_targets(x0, generator=torch.Generator().manual_seed(0))
    assert t.shape == (64,) and t.dtype == torch.long and 0 <= t.min() and t.max() < T
    assert noise.shape == x0.shape
    torch.testing.assert_close(x_t, d.q_sample(x0, t, noise))
    t2, noise2, _ = d.training_targets(x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, t2) and torch.equal(noise, noise2)
    assert d.prediction_target(x0, noise) is x0
    assert diffusion().prediction_target(x0, noise) is noise


def test_float32_math_under_autocast_and_dtype_casts():
    d = diffusion()
    x0 = torch.randn(2, 6, 8)
    t = torch.tensor([5, 900])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model_out = torch.nn.Linear(8, 8)(x0)  # bf16 under autocast
        assert model_out.dtype == torch.bfloat16
        assert d.q_sample(x0.bfloat16(), t).dtype == torch.float32
        assert d.p_sample_step(model_out, x0, t).dtype == torch.float32
        assert d.ddim_step(model_out, x0, t, t - 1).dtype == torch.float32
    # casting the module (as a submodule of a half model) keeps the schedule in float64
    ref = d.alphas_cumprod.clone()
    d.half()
    assert d.alphas_cumprod.dtype == torch.float64 and torch.equal(d.alphas_cumprod, ref)
    assert d.state_dict() == {}


def test_config_validation_and_paper_preset():
    with pytest.raises(ValueError):
        DiffusionConfig(prediction="v")
    with pytest.raises(ValueError):
        DiffusionConfig(beta_end=1.0)
    with pytest.raises(ValueError):
        DiffusionConfig(variance_type="learned")
    paper = DiffusionConfig.diffsign()
    assert (paper.num_steps, paper.beta_start, paper.beta_end) == (1000, 1e-4, 0.99)
    assert (paper.prediction, paper.variance_type) == ("epsilon", "fixed_large")
    assert DiffusionConfig.diffsign(prediction="x0").prediction == "x0"


def test_paper_schedule_alpha_bar_collapses():
    """beta_end = 0.99 (DiffSign, section 4.1): representable, but alpha_bar is ~0 after the first ~15 % of steps."""
    d = GaussianDiffusion(DiffusionConfig.diffsign())
    ab = d.alphas_cumprod
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.99)
    assert ab[49].item() == pytest.approx(0.2896, rel=1e-3)
    assert ab[99].item() == pytest.approx(6.188e-3, rel=1e-3)
    assert ab[149].item() == pytest.approx(8.455e-6, rel=1e-3)
    assert int((ab < 1e-4).nonzero()[0]) == 133  # pure noise (to 1e-4) from here on
    snr = ab / (1 - ab)
    assert (snr < 1e-4).double().mean().item() == pytest.approx(0.867, abs=1e-3)
    assert d.log_alphas_cumprod[-1].item() / math.log(10) == pytest.approx(-414.7, abs=0.1)
    assert int((ab.float() == 0).nonzero()[0]) == 422  # float32 underflow
    # versus the DDPM default: alpha_bar_T = 4e-5 and only 4.6 % of steps are that noisy
    ab_default = diffusion().alphas_cumprod
    assert (ab_default / (1 - ab_default) < 1e-4).double().mean().item() == pytest.approx(0.046, abs=1e-3)
    # consequences: x_t at late t is exactly the noise, and x0 from eps is inf where alpha_bar underflows
    x0, eps = torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(d.q_sample(x0, 600, eps), eps, atol=0, rtol=0)
    assert d.sqrt_recip_alphas_cumprod[999].float().isinf()
    assert not torch.isfinite(d.predict_x0_from_eps(eps, 999, eps + 1)).any()
    # the reverse steps stay finite, and x0 prediction with an oracle still recovers x0 exactly
    assert torch.isfinite(d.p_sample_step(eps, eps, torch.tensor([999, 999]))).all()
    dx = GaussianDiffusion(DiffusionConfig.diffsign(prediction="x0"))
    target = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(dx.sample(oracle(dx, target), target.shape, steps=20), target, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- against diffusers

def ddpm_scheduler(d: GaussianDiffusion, variance_type: str = "fixed_small", float64: bool = False):
    """diffusers' DDPMScheduler for d's config; ``float64`` rebuilds its (linear) schedule in float64.

    Stock diffusers takes alphas_cumprod in float32, and its step forms beta_t = 1 - ab_t / ab_{t-1} and
    1 / (1 - ab_t) from it: at t = 1..10 that cancellation costs it ~1e-3 relative (up to 4e-4 absolute on
    a step), while ours (float64 coefficients) agrees with a float64 evaluation to 3e-7. With its schedule
    in float64 the two implementations agree to float32 rounding, which is what the step tests check.
    """
    diffusers = pytest.importorskip("diffusers")
    c = d.config
    s = diffusers.DDPMScheduler(
        num_train_timesteps=c.num_steps, beta_start=c.beta_start, beta_end=c.beta_end,
        beta_schedule="linear" if c.schedule == "linear" else "squaredcos_cap_v2",
        prediction_type="sample" if c.prediction == "x0" else "epsilon",
        variance_type=variance_type, clip_sample=False)
    if float64:
        assert c.schedule == "linear"
        s.betas = torch.linspace(c.beta_start, c.beta_end, c.num_steps, dtype=torch.float64)
        s.alphas = 1.0 - s.betas
        s.alphas_cumprod = torch.cumprod(s.alphas, dim=0)
    return s


def ddim_scheduler(d: GaussianDiffusion):
    diffusers = pytest.importorskip("diffusers")
    c = d.config
    return diffusers.DDIMScheduler(
        num_train_timesteps=c.num_steps, beta_start=c.beta_start, beta_end=c.beta_end, beta_schedule="linear",
        prediction_type="sample" if c.prediction == "x0" else "epsilon", clip_sample=False,
        set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")


@pytest.mark.parametrize("kw", [{}, {"beta_end": 0.99}, {"num_steps": 100, "beta_end": 0.05}, {"schedule": "cosine"}])
def test_schedule_matches_diffusers(kw):
    d = diffusion(**kw)
    s = ddpm_scheduler(d)
    torch.testing.assert_close(d.betas.float(), s.betas, rtol=1e-6, atol=1e-7)
    # diffusers takes the cumprod in float32: agree to float32 accumulation error (its values underflow earlier)
    torch.testing.assert_close(d.alphas_cumprod.float(), s.alphas_cumprod, rtol=1e-4, atol=1e-30)


def test_q_sample_matches_add_noise():
    d = diffusion()
    s = ddpm_scheduler(d)
    x0, noise = torch.randn(6, 4, 5), torch.randn(6, 4, 5)
    t = torch.tensor([0, 1, 17, 333, 998, 999])
    torch.testing.assert_close(d.q_sample(x0, t, noise), s.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_step_matches_diffusers(prediction, variance_type):
    d = diffusion(prediction=prediction, variance_type=variance_type)
    s = ddpm_scheduler(d, variance_type, float64=True)
    g = torch.Generator().manual_seed(0)
    for t in (0, 1, 10, 500, 999):
        x_t, model_out = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
        tb = torch.full((3,), t)
        theirs = s.step(model_out, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        ours = d.p_sample_step(model_out, x_t, tb, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        # deterministic part and variance separately
        mean, var, _ = d.p_mean_variance(model_out, x_t, tb)
        if t > 0:
            their_var = s._get_variance(t)
            torch.testing.assert_close(var.flatten().double(), their_var.expand(3), rtol=1e-6, atol=0)
            their_mean = theirs - their_var.sqrt() * torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        else:
            their_mean = theirs
        torch.testing.assert_close(mean, their_mean, rtol=1e-4, atol=1e-5)
        if prediction == "x0":  # the posterior q(x_{t-1} | x_t, x0) is the step mean for an x0 prediction
            posterior_mean, _ = d.posterior_mean_variance(model_out, x_t, tb)
            torch.testing.assert_close(posterior_mean, their_mean, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
def test_ddpm_step_matches_stock_diffusers_to_its_float32_precision(prediction):
    d = diffusion(prediction=prediction)
    s = ddpm_scheduler(d)
    g = torch.Generator().manual_seed(0)
    for t in (0, 1, 2, 10, 100, 500, 999):
        x_t, model_out = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
        theirs = s.step(model_out, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        ours = d.p_sample_step(model_out, x_t, t, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3 if t <= 10 else 1e-5)


@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
def test_full_ddpm_chain_matches_diffusers(prediction):
    d = diffusion(num_steps=200, prediction=prediction)
    s = ddpm_scheduler(d, float64=True)
    shape = (2, 3, 4)
    ours = d.sample(smooth_denoiser, shape, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g)
    for t in s.timesteps:
        x = s.step(smooth_denoiser(x, t.expand(2)), t, x, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_ddim_timesteps_match_diffusers_trailing():
    d = diffusion()
    s = ddim_scheduler(d)
    for k in (1, 2, 3, 4, 5, 7, 10, 20, 25, 50, 100, 250, 1000):
        s.set_timesteps(k)
        assert d.ddim_timesteps(k).tolist() == s.timesteps.tolist(), k


@pytest.mark.parametrize("prediction", ["x0", "epsilon"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("k", [10, 50])
def test_ddim_steps_match_diffusers(prediction, eta, k):
    d = diffusion(prediction=prediction)
    s = ddim_scheduler(d)
    s.set_timesteps(k)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 5, 3, generator=g)
    ours = x.clone()
    timesteps = d.ddim_timesteps(k).tolist()
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < k else -1
        assert t_prev == t - T // k or (t_prev == -1 and t - T // k < 0)
        out = smooth_denoiser(x, torch.full((2,), t))
        noise = torch.randn(x.shape, generator=g)
        theirs = s.step(out, t, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        # step by step, from the same input
        torch.testing.assert_close(d.ddim_step(out, x, t, t_prev, eta=eta, noise=noise), theirs, rtol=1e-4, atol=1e-5)
        x = theirs
        ours = d.ddim_step(smooth_denoiser(ours, torch.full((2,), t)), ours, t, t_prev, eta=eta, noise=noise)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)  # and the whole chain
