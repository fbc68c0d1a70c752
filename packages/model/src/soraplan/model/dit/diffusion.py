"""Training loss and sampling with diffusers schedulers.

Training: DDPM, 1000 steps, linear betas 1e-4..0.02 rescaled to zero terminal SNR,
v-prediction, averaged over real (unpadded) latents, weighted by Min-SNR-gamma (Open-Sora-Plan's
recipe) or not at all. With zero terminal SNR the Min-SNR weight of v-prediction, min(SNR, g) /
(SNR + 1), is about SNR at the noisy end (0.08 at t=500, 0.006 at t=700), so the timesteps where
layout is decided get little gradient: small models trained briefly learn colours but not
shapes or motion there, and train better unweighted (`loss_weighting: none`).
Sampling: Euler-Ancestral with trailing timestep spacing and classifier-free guidance.

`kind: iddpm` is Open-Sora v1's recipe instead (`dit/iddpm.py`): linear betas without the
zero-SNR rescale, the model predicts the noise and a variance interpolation (2C channels), hybrid
loss = noise MSE + the variational-bound term; sampled by diffusers' DDPMScheduler with
`variance_type="learned_range"` on evenly spaced steps (Open-Sora: 100 steps, guidance 7.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import torch
import torch.nn.functional as F
from soraplan.core.config import ConfigError, NonNegativeFloat, PositiveFloat, PositiveInt, Range
from torch import Tensor, nn

if TYPE_CHECKING:  # importing diffusers costs seconds; the config needs it only to build
    from diffusers import DDPMScheduler, EulerAncestralDiscreteScheduler


@dataclass
class DiffusionConfig:
    # v_prediction: zero terminal SNR, v-MSE (Open-Sora-Plan); iddpm: noise + learned variance
    # with the hybrid loss (Open-Sora v1; the model must have learn_sigma).
    kind: Literal["v_prediction", "iddpm"] = "v_prediction"
    num_train_timesteps: PositiveInt = 1000
    beta_start: Annotated[float, Range(gt=0, lt=1)] = 1e-4
    beta_end: Annotated[float, Range(gt=0, lt=1)] = 0.02
    loss_weighting: Literal["min_snr", "none"] = "min_snr"
    snr_gamma: PositiveFloat = 5.0  # gamma of the Min-SNR weight
    sample_steps: PositiveInt = 50
    guidance_scale: NonNegativeFloat = 7.5

    def validate(self) -> None:
        if self.beta_start >= self.beta_end:
            raise ConfigError(f"beta_start {self.beta_start} must be below beta_end "
                              f"{self.beta_end}")

    def min_snr_gamma(self) -> float | None:
        """The gamma `diffusion_loss` weights with; None for an unweighted loss."""
        return self.snr_gamma if self.loss_weighting == "min_snr" else None

    @classmethod
    def for_model(cls, model: nn.Module) -> DiffusionConfig:
        """The default diffusion of a model: iddpm when it predicts a variance."""
        return cls(kind="iddpm" if model.config.get("learn_sigma", False) else "v_prediction")

    def _schedule(self) -> dict[str, object]:
        common = dict(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start,
                      beta_end=self.beta_end, beta_schedule="linear")
        if self.kind == "iddpm":  # linspace = IDDPM's respacing (0, 10, ..., 999 for 100 steps)
            return dict(common, prediction_type="epsilon", variance_type="learned_range",
                        clip_sample=False, timestep_spacing="linspace")
        return dict(common, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                    timestep_spacing="trailing")

    def train_scheduler(self) -> DDPMScheduler:
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self._schedule())

    def sample_scheduler(self) -> EulerAncestralDiscreteScheduler | DDPMScheduler:
        if self.kind == "iddpm":
            return self.train_scheduler()
        from diffusers import EulerAncestralDiscreteScheduler

        return EulerAncestralDiscreteScheduler(**self._schedule())

    def check_model(self, model: nn.Module, key: str = "model") -> None:
        """iddpm needs a model predicting the variance (learn_sigma); v_prediction one that does not."""
        learns = bool(model.config.get("learn_sigma", False))
        if learns != (self.kind == "iddpm"):
            raise ConfigError(f"diffusion.kind {self.kind} does not fit {key} (learn_sigma="
                              f"{learns}); use kind iddpm exactly for models with learn_sigma")

    def loss(self, model: nn.Module, scheduler: DDPMScheduler, latents: Tensor,
             text_states: Tensor, text_mask: Tensor | None, seeds: list[int],
             latent_mask: Tensor | None = None, timesteps: Tensor | None = None) -> Tensor:
        """Per-sample training loss (B,) of this kind."""
        if self.kind == "iddpm":
            from soraplan.model.dit.iddpm import hybrid_loss

            return hybrid_loss(model, scheduler, latents, text_states, text_mask, seeds,
                               latent_mask, timesteps)
        return diffusion_loss(model, scheduler, latents, text_states, text_mask, seeds,
                              self.min_snr_gamma(), latent_mask, timesteps)


def seeded_normal(shape: tuple[int, ...], seeds: list[int]) -> Tensor:
    """One normal draw per sample from its own seed, so a sample's noise does not depend on how
    the global batch is split across ranks."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s))
                        for s in seeds])


def seeded_timesteps(num_timesteps: int, seeds: list[int]) -> Tensor:
    return torch.cat([torch.randint(0, num_timesteps, (1,),
                                    generator=torch.Generator().manual_seed(s + 1)) for s in seeds])


def min_snr_weights(scheduler: DDPMScheduler, timesteps: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weight for v-prediction: min(SNR, gamma) / (SNR + 1)."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / (snr + 1)


def masked_mean(values: Tensor, latent_mask: Tensor | None) -> Tensor:
    """Per-sample mean (B,) of (B, C, T, H, W) values over real latents."""
    if latent_mask is None:
        return values.flatten(1).mean(1)
    mask = latent_mask[:, None].expand_as(values).to(values.dtype)
    return (values * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)


def diffusion_loss(model: nn.Module, scheduler: DDPMScheduler, latents: Tensor,
                   text_states: Tensor, text_mask: Tensor | None, seeds: list[int],
                   snr_gamma: float | None = 5.0, latent_mask: Tensor | None = None,
                   timesteps: Tensor | None = None) -> Tensor:
    """Per-sample loss (B,): v-prediction MSE averaged over each sample's real latents, weighted
    by Min-SNR-`snr_gamma` (None: unweighted). Timesteps are drawn from the seeds unless given
    (fixed timesteps for evaluation)."""
    noise = seeded_normal(tuple(latents.shape[1:]), seeds).to(latents)
    if timesteps is None:
        timesteps = seeded_timesteps(scheduler.config.num_train_timesteps, seeds)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    pred = model(noisy, timesteps, text_states, text_mask, latent_mask)
    per_sample = masked_mean((pred.float() - target.float()) ** 2, latent_mask)
    if snr_gamma is None:
        return per_sample
    return per_sample * min_snr_weights(scheduler, timesteps, snr_gamma).float()



# Samplers by name: diffusers schedulers that take the training schedule's config as it is.
SAMPLERS = {"euler_ancestral": "EulerAncestralDiscreteScheduler", "euler": "EulerDiscreteScheduler",
            "ddim": "DDIMScheduler", "dpm_solver": "DPMSolverMultistepScheduler", "ddpm": "DDPMScheduler"}
SamplerName = Literal[tuple(SAMPLERS)]  # a config key's choices, checked when the config loads


def sampler_from_config(name: str, config: dict) -> object:
    """Scheduler `name` (a key of SAMPLERS) on another scheduler's config. Sample clipping is off:
    latents are not images in [-1, 1] (DDIM and DDPM would clip their x0 estimates otherwise)."""
    import diffusers

    if config.get("variance_type") == "learned_range" and name != "ddpm":
        raise ConfigError(f"sampler {name}: this model predicts its variance (IDDPM), which only ddpm samples")
    return getattr(diffusers, SAMPLERS[name]).from_config(config, clip_sample=False)


@torch.no_grad()
def sample_latents(model: nn.Module, scheduler: EulerAncestralDiscreteScheduler,
                   latent_shape: tuple[int, int, int, int], text_states: Tensor, text_mask: Tensor,
                   null_states: Tensor, null_mask: Tensor, steps: int, guidance_scale: float,
                   seed: int | torch.Generator) -> Tensor:
    """Denoise from noise with CFG: v = v_null + scale * (v_text - v_null).
    text_states (B, L, D) and null_states (B, L, D) are the prompt and empty-prompt states.
    A model predicting a variance too (2C channels) is guided on its noise channels only; the
    variance is the prompt's. Noise comes from `seed`, or from a CPU generator given instead (the
    pipeline's `generator`)."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    batch = text_states.shape[0]
    device = text_states.device
    scheduler.set_timesteps(steps)
    latents = torch.randn((batch, *latent_shape), generator=generator).to(device)
    latents = latents * scheduler.init_noise_sigma
    length = max(text_states.shape[1], null_states.shape[1])
    states = torch.cat([F.pad(s, (0, 0, 0, length - s.shape[1]))
                        for s in (null_states, text_states)])
    mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for m in (null_mask, text_mask)])
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        v_null, v_text = model(model_in, t.expand(2 * batch).to(device), states, mask).chunk(2)
        c = latent_shape[0]
        v = torch.cat([v_null[:, :c] + guidance_scale * (v_text[:, :c] - v_null[:, :c]),
                       v_text[:, c:]], dim=1)
        latents = scheduler.step(v, t, latents, generator=generator).prev_sample
    return latents
