"""WF-VAE training losses: L1 (+ optional L2) + LPIPS, KL, wavelet-coefficient L1, and a 3D PatchGAN hinge loss
whose weight adapts to the ratio of gradient norms at the decoder's last layer (taming's rule).

As in the WF-VAE/taming recipe, the reconstruction, KL and wavelet terms are summed over pixels
and averaged over the batch, so `kl_weight` 1e-6 and `wavelet_weight` 0.1 mean what they do there.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from soraplan.core.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from soraplan.model.vae.modeling_wfvae import Decoder, WFVAEOutput

log = logging.getLogger(__name__)


@dataclass
class VAELossConfig:
    l1_weight: NonNegativeFloat = 1.0
    # Squared error: on sparse footage (a small object on a flat background) it learns the object
    # several times faster than L1, whose constant-size gradient on the background drowns it.
    l2_weight: NonNegativeFloat = 0.0
    lpips_weight: NonNegativeFloat = 1.0
    lpips_net: Literal["vgg", "alex"] = "vgg"
    # torchvision state dict (.pth / .safetensors) of the LPIPS backbone (vgg16 or alexnet);
    # unset or missing -> LPIPS is off with a warning (torchvision would download it).
    lpips_backbone_weights: str | None = None
    kl_weight: NonNegativeFloat = 1e-6
    wavelet_weight: NonNegativeFloat = 0.1
    disc_weight: NonNegativeFloat = 0.5
    disc_start_step: NonNegativeInt = 2000  # optimizer step from which the GAN terms are on
    disc_channels: PositiveInt = 64
    disc_layers: PositiveInt = 3
    adaptive_weight_max: PositiveFloat = 1e4


class PatchDiscriminator3D(nn.Module):
    """PatchGAN over space-time: stride-2 3D convs, one logit per patch. Works for T = 1 too."""

    def __init__(self, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            # GroupNorm, not BatchNorm: no running statistics, so replicas and resumes agree.
            layers += [
                nn.Conv3d(width, out, (3, 4, 4), stride, 1),
                nn.GroupNorm(min(32, out), out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv3d(width, 1, (3, 4, 4), 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def video_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), batch-major."""
    return x.transpose(1, 2).flatten(0, 1)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def load_lpips(net: str, backbone_weights: str | None) -> nn.Module | None:
    """LPIPS with its calibrated linear heads (shipped in the `lpips` wheel, the `lpips` extra of
    soraplan-model) on a backbone loaded from `backbone_weights`; None, with a warning, when those
    weights are not available."""
    if not backbone_weights or not Path(backbone_weights).is_file():
        warnings.warn(
            f"LPIPS is off: no {net} backbone weights at {backbone_weights!r} (set "
            "loss.lpips_backbone_weights to a torchvision state dict); training without the perceptual term",
            stacklevel=2,
        )
        return None
    try:
        import lpips  # deferred: importing lpips takes ~15 s
    except ImportError:
        raise ImportError(
            "LPIPS needs the lpips package: install the lpips extra of soraplan-model "
            "(pip install 'soraplan-model[lpips]'), or set loss.lpips_weight=0"
        ) from None

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if backbone_weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(backbone_weights)
    else:
        state = torch.load(backbone_weights, map_location="cpu", weights_only=True)
    # lpips keeps torchvision's `features.<i>` layers in slices named `slice<k>.<i>`.
    mapped = {
        name: state[f"features.{name.split('.', 1)[1]}"] for name, _ in model.net.named_parameters()
    }
    model.net.load_state_dict(mapped)
    return model.eval().requires_grad_(False)


class VAELoss(nn.Module):
    """Generator and discriminator objectives (the discriminator itself is trained apart)."""

    def __init__(self, cfg: VAELossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lpips = (
            load_lpips(cfg.lpips_net, cfg.lpips_backbone_weights) if cfg.lpips_weight > 0 else None
        )

    def disc_active(self, step: int) -> bool:
        return step >= self.cfg.disc_start_step

    def generator_loss(
        self,
        x: torch.Tensor,
        out: WFVAEOutput,
        step: int,
        discriminator: nn.Module,
        decoder: Decoder,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """A surrogate scalar whose gradient is that of the generator loss, and the loss terms.

        The pixel terms (L1, LPIPS, adversarial) are evaluated on a detached copy of the
        reconstruction, and their gradient there is pushed through the model with one backward
        of <reconstruction, gradient>. So the model graph sees a single backward, which DeepSpeed
        requires (its hooks fire on every backward pass through an engine's graph). The adaptive
        weight's last-layer gradients come from a small replay of `decoder`'s tail instead.
        """
        cfg, b = self.cfg, x.shape[0]
        recon = out.sample.detach().requires_grad_(True)
        per_pixel = cfg.l1_weight * (x - recon).abs()
        if cfg.l2_weight:
            per_pixel = per_pixel + cfg.l2_weight * (x - recon).square()
        lpips_value = torch.zeros((), device=x.device)
        if self.lpips is not None:
            per_frame = self.lpips(video_frames(x).float(), video_frames(recon).float()).to(x.dtype)
            lpips_value = per_frame.mean()
            per_pixel = per_pixel + cfg.lpips_weight * per_frame.view(b, 1, -1, 1, 1)
        nll = per_pixel.sum() / b
        pixel_loss = nll
        stats = {
            "l1": (x - recon).abs().mean().item(),
            "lpips": lpips_value.item(),
            "nll": nll.item(),
        }
        if self.disc_active(step):
            g_loss = -discriminator(recon).mean()
            d_weight = self.adaptive_weight(nll, g_loss, recon, decoder, out.decoder_features)
            pixel_loss = nll + d_weight * g_loss
            stats.update(g_loss=g_loss.item(), d_weight=d_weight.item())
        (grad_recon,) = torch.autograd.grad(pixel_loss, recon)
        kl = out.latent_dist.kl().mean()
        wavelet = (
            sum((e - d).abs().sum() for e, d in zip(out.encoder_coeffs, out.decoder_coeffs)) / b
        )
        extra = cfg.kl_weight * kl + cfg.wavelet_weight * wavelet
        surrogate = (out.sample * grad_recon).sum() + extra
        stats.update(kl=kl.item(), wavelet=wavelet.item(), loss=pixel_loss.item() + extra.item())
        return surrogate, stats

    def adaptive_weight(
        self,
        nll: torch.Tensor,
        g_loss: torch.Tensor,
        recon: torch.Tensor,
        decoder: Decoder,
        features: torch.Tensor,
    ) -> torch.Tensor:
        """Scale the adversarial term so that its gradient norm at the weight of the decoder's
        last layer matches the reconstruction loss's, clamped.

        After `conv_out` the decoder only adds a low band that does not depend on its weight and
        applies the fixed linear inverse wavelet. So replaying conv_out -> inverse wavelet on the
        stored input `features`, with a detached copy of the weight, gives the exact weight
        gradients from the gradients at the reconstruction `recon`.
        """
        nll_grad = torch.autograd.grad(nll, recon, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, recon, retain_graph=True)[0]
        conv = decoder.conv_out
        weight = conv.weight.detach().requires_grad_(True)
        params = {"weight": weight, "bias": conv.bias.detach()}
        replay = decoder.inverse_wavelet_out(
            torch.func.functional_call(conv, params, (features.detach(),))
        )
        nll_w, g_w = (
            torch.autograd.grad(replay, weight, grad, retain_graph=True)[0]
            for grad in (nll_grad, g_grad)
        )
        ratio = nll_w.norm() / (g_w.norm() + 1e-4)
        return ratio.clamp(0.0, self.cfg.adaptive_weight_max) * self.cfg.disc_weight

    def discriminator_loss(
        self, x: torch.Tensor, recon: torch.Tensor, discriminator: nn.Module
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits_real = discriminator(x.detach())
        logits_fake = discriminator(recon.detach())
        loss = hinge_discriminator_loss(logits_real, logits_fake)
        return loss, {
            "d_loss": loss.item(),
            "logits_real": logits_real.mean().item(),
            "logits_fake": logits_fake.mean().item(),
        }
