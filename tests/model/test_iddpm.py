"""IDDPM (learned variance, hybrid loss) against a direct float64 transcription of its formulas."""

import math

import numpy as np
import pytest
import torch
from soraplan.core.config import ConfigError
from soraplan.model.dit.configs import DiTModelConfig
from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents, seeded_normal

DIFFUSION = DiffusionConfig(kind="iddpm")


def direct_hybrid_loss(model_out: np.ndarray, x0: np.ndarray, xt: np.ndarray, noise: np.ndarray,
                       t: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """IDDPM's training_losses (LossType.MSE, LEARNED_RANGE, epsilon), written out in numpy."""
    ac = np.cumprod(1 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    shape = (-1, 1, 1, 1, 1)
    a, b = ac[t].reshape(shape), betas[t].reshape(shape)
    ap = ac_prev[t].reshape(shape)
    c = x0.shape[1]
    eps, v = model_out[:, :c], model_out[:, c:]
    mse = ((eps - noise) ** 2).reshape(len(t), -1).mean(1)

    def posterior_mean(x_start):
        return (b * np.sqrt(ap) / (1 - a)) * x_start + ((1 - ap) * np.sqrt(1 - b) / (1 - a)) * xt

    true_logvar = post_logvar[t].reshape(shape)
    x0_pred = np.sqrt(1 / a) * xt - np.sqrt(1 / a - 1) * eps
    mean = posterior_mean(x0_pred)
    frac = (v + 1) / 2
    logvar = frac * np.log(b) + (1 - frac) * true_logvar
    kl = 0.5 * (-1 + logvar - true_logvar + np.exp(true_logvar - logvar)
                + (posterior_mean(x0) - mean) ** 2 * np.exp(-logvar))
    approx_cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))  # noqa: E731
    inv_std = np.exp(-0.5 * logvar)
    plus, minus = approx_cdf(inv_std * (x0 - mean + 1 / 255)), approx_cdf(inv_std * (x0 - mean - 1 / 255))
    log_probs = np.where(x0 < -0.999, np.log(np.maximum(plus, 1e-12)),
                         np.where(x0 > 0.999, np.log(np.maximum(1 - minus, 1e-12)),
                                  np.log(np.maximum(plus - minus, 1e-12))))
    vb = np.where(t == 0, (-log_probs).reshape(len(t), -1).mean(1), kl.reshape(len(t), -1).mean(1))
    return mse + vb / math.log(2)


def test_hybrid_loss_matches_a_direct_implementation(torch_one_thread):
    torch.manual_seed(0)
    model = DiTModelConfig(name="stdit-tiny").build().double()
    with torch.no_grad():  # a non-trivial variance output
        model.proj_out.weight.normal_(0, 0.2)
    g = torch.Generator().manual_seed(3)
    # Latents near the +-1 edges too, where the decoder NLL takes its open-ended bins.
    x0 = (torch.rand(4, 4, 2, 8, 8, generator=g, dtype=torch.float64) * 2.2 - 1.1)
    text, mask = torch.randn(4, 3, 32, generator=g, dtype=torch.float64), torch.ones(4, 3, dtype=torch.bool)
    seeds, timesteps = [0, 4, 8, 12], torch.tensor([0, 1, 500, 999])
    scheduler = DIFFUSION.train_scheduler()
    loss = DIFFUSION.loss(model, scheduler, x0, text, mask, seeds, timesteps=timesteps)

    noise = seeded_normal(tuple(x0.shape[1:]), seeds).double()
    xt = scheduler.add_noise(x0, noise, timesteps)
    with torch.no_grad():
        out = model(xt, timesteps, text, mask).float().double()
    # The same betas (the scheduler's float32 linear 1e-4..0.02): at t = 0, 1 the posterior
    # variance is ~1e-8, so a rounding of the betas shows in the bound.
    betas = scheduler.betas.double().numpy()
    assert np.allclose(betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-6)
    expected = direct_hybrid_loss(out.numpy(), x0.numpy(), xt.numpy(), noise.numpy(),
                                  timesteps.numpy(), betas)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-5)
    assert (expected > 0).all()

    # The bound trains the variance only: the noise channels get the MSE gradient alone.
    output = out.clone().requires_grad_(True)
    DIFFUSION.loss(lambda *args: output, scheduler, x0, text, mask, seeds,
                   timesteps=timesteps).sum().backward()
    eps_grad = 2 * (out[:, :4] - noise) / noise[0].numel()
    torch.testing.assert_close(output.grad[:, :4], eps_grad)
    assert output.grad[:, 4:].abs().sum() > 0


def test_sampling_scheduler_is_iddpm_respacing_with_learned_range():
    scheduler = DIFFUSION.sample_scheduler()
    scheduler.set_timesteps(100)
    # IDDPM's space_timesteps(1000, "100"): round(i * 999 / 99).
    expected = sorted({round(i * 999 / 99) for i in range(100)}, reverse=True)
    assert scheduler.timesteps.tolist() == expected
    ac = scheduler.alphas_cumprod.double()
    t, prev = scheduler.timesteps[50].item(), scheduler.timesteps[51].item()
    beta = 1 - ac[t] / ac[prev]  # the respaced chain's beta
    post = (1 - ac[prev]) / (1 - ac[t]) * beta
    v = torch.tensor([-1.0, 0.0, 1.0])
    expected_log = (v + 1) / 2 * torch.log(beta) + (1 - v) / 2 * torch.log(post)
    torch.testing.assert_close(scheduler._get_variance(t, v.double()), expected_log.float(),
                               check_dtype=False, rtol=1e-4, atol=1e-5)


def test_sampling_runs_with_guidance_on_the_noise_only(torch_one_thread):
    torch.manual_seed(0)
    model = DiTModelConfig(name="stdit-tiny").build().eval()
    with torch.no_grad():
        model.proj_out.weight.normal_(0, 0.02)
    text, mask = torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.bool)
    null, null_mask = torch.zeros(1, 1, 32), torch.ones(1, 1, dtype=torch.bool)
    runs = [sample_latents(model, DIFFUSION.sample_scheduler(), (4, 2, 8, 8), text, mask, null,
                           null_mask, steps=5, guidance_scale=7.0, seed=s) for s in (0, 0, 1)]
    assert runs[0].shape == (1, 4, 2, 8, 8) and torch.isfinite(runs[0]).all()
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_diffusion_kind_must_fit_the_model():
    with pytest.raises(ConfigError, match="learn_sigma"):
        DiffusionConfig().check_model(DiTModelConfig(name="stdit-tiny").build())
    with pytest.raises(ConfigError, match="learn_sigma"):
        DIFFUSION.check_model(DiTModelConfig(name="tiny").build())
    assert DiffusionConfig.for_model(DiTModelConfig(name="stdit-tiny").build()).kind == "iddpm"
