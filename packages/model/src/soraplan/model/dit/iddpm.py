"""IDDPM's hybrid loss (Nichol & Dhariwal 2021; Open-Sora v1's training objective).

The model outputs 2C channels: the noise eps and v in [-1, 1], which interpolates the log
variance of p(x_{t-1} | x_t) between the posterior variance (v = -1) and beta_t (v = 1).
loss = mean (eps - noise)^2 + L_vb, where L_vb (bits per dimension) is KL(q(x_{t-1} | x_t, x_0) ||
p(x_{t-1} | x_t)) for t > 0 and the discretised Gaussian decoder NLL of x_0 at t = 0, computed with
the predicted noise detached, so the bound trains only the variance (IDDPM's `LossType.MSE` with
`learn_sigma`). The schedule's tables come from the diffusers scheduler used for training.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from soraplan.model.dit.diffusion import masked_mean, seeded_normal, seeded_timesteps
from torch import Tensor, nn

if TYPE_CHECKING:
    from diffusers import DDPMScheduler


def posterior_tables(scheduler: DDPMScheduler) -> dict[str, Tensor]:
    """Float64 per-timestep tables of q(x_{t-1} | x_t, x_0) (the log variance clipped at t = 0
    to the value at t = 1, where the posterior variance is 0)."""
    betas = scheduler.betas.double()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    variance = betas * (1 - prev) / (1 - alphas_cumprod)
    return {
        "alphas_cumprod": alphas_cumprod,
        "log_variance": torch.log(torch.cat([variance[1:2], variance[1:]])),
        "log_beta": torch.log(betas),
        "coef_x0": betas * prev.sqrt() / (1 - alphas_cumprod),
        "coef_xt": (1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
    }


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of N(mean, e^(2 log_scale)) integrated over x's 8-bit bin of [-1, 1] (the edge
    bins open-ended), with the tanh approximation of the normal CDF, as IDDPM."""

    def cdf(z: Tensor) -> Tensor:
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))

    inv_std = torch.exp(-log_scale)
    cdf_plus = cdf(inv_std * (x - mean + 1 / 255))
    cdf_min = cdf(inv_std * (x - mean - 1 / 255))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus_min, log_delta))


def hybrid_loss(model: nn.Module, scheduler: DDPMScheduler, latents: Tensor, text_states: Tensor,
                text_mask: Tensor | None, seeds: list[int], latent_mask: Tensor | None = None,
                timesteps: Tensor | None = None) -> Tensor:
    """Per-sample loss (B,): noise MSE + variational-bound term, each averaged over the sample's
    real latents. Noise and timesteps come from the seeds (timesteps may be given)."""
    noise = seeded_normal(tuple(latents.shape[1:]), seeds).to(latents)
    if timesteps is None:
        timesteps = seeded_timesteps(scheduler.config.num_train_timesteps, seeds)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    out = model(noisy, timesteps, text_states, text_mask, latent_mask)
    eps, var_values = out.to(torch.promote_types(out.dtype, torch.float32)).chunk(2, 1)
    mse = masked_mean((eps - noise.to(eps.dtype)) ** 2, latent_mask)

    tables = {k: v.to(latents.device)[timesteps].view(-1, 1, 1, 1, 1)
              for k, v in posterior_tables(scheduler).items()}
    x0, xt = latents.double(), noisy.double()
    true_mean = tables["coef_x0"] * x0 + tables["coef_xt"] * xt
    ac = tables["alphas_cumprod"]
    x0_pred = (xt - (1 - ac).sqrt() * eps.detach().double()) / ac.sqrt()
    model_mean = tables["coef_x0"] * x0_pred + tables["coef_xt"] * xt
    frac = (var_values.double() + 1) / 2
    model_log_var = frac * tables["log_beta"] + (1 - frac) * tables["log_variance"]
    kl = normal_kl(true_mean, tables["log_variance"], model_mean, model_log_var)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    first = (timesteps == 0).view(-1, 1, 1, 1, 1)
    vb = masked_mean(torch.where(first, nll, kl), latent_mask) / math.log(2.0)
    return mse + vb.to(mse.dtype)
