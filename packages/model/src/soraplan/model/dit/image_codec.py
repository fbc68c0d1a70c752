"""Open-Sora v1's codec: a 2D image autoencoder (diffusers `AutoencoderKL`, the sd-vae-ft-ema /
sd-vae-ft-mse class) applied to every frame, so latents are (4, T, H/8, W/8) with no temporal
compression, scaled by the VAE's `scaling_factor` (0.18215 for those VAEs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn


class ImageVAECodec:
    """Frame-by-frame AutoencoderKL behind the `LatentCodec` interface (time factor 1)."""

    temporal_compression = 1

    def __init__(self, vae: nn.Module, chunk_frames: int | None = None) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.spatial_compression = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels
        self.scaling_factor = vae.config.scaling_factor
        self.chunk_frames = chunk_frames  # frames per encoder/decoder call (bounds memory)

    def _per_frame(self, x: Tensor, fn) -> Tensor:
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        step = self.chunk_frames or frames.shape[0]
        out = torch.cat([fn(frames[i : i + step]) for i in range(0, frames.shape[0], step)])
        return rearrange(out, "(b t) c h w -> b c t h w", b=x.shape[0])

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 4, T, H/8, W/8). The posterior mode, not a draw,
        so latent shards are deterministic (Open-Sora v1 samples the posterior)."""
        dtype = next(self.vae.parameters()).dtype
        return self._per_frame(video.to(dtype), lambda f: self.vae.encode(f).latent_dist.mode()
                               * self.scaling_factor)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self._per_frame(latents.to(dtype), lambda z: self.vae.decode(
            z / self.scaling_factor).sample).clamp(-1, 1)


def is_image_vae(pretrained: str) -> bool:
    """True when `pretrained` holds a diffusers AutoencoderKL (read from its config only)."""
    config = Path(pretrained) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    if Path(pretrained).exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False  # a training run or checkpoint (WF-VAE), or nothing to look up
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.load_config(pretrained).get("_class_name") == "AutoencoderKL"
    except OSError:
        return False


def load_image_vae_codec(pretrained: str, config_key: str, device: str | torch.device = "cpu",
                         chunk_frames: int | None = None) -> ImageVAECodec:
    """The AutoencoderKL at `pretrained` (local dir or HF id, e.g. stabilityai/sd-vae-ft-ema)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(pretrained)
    except OSError as exc:
        raise FileNotFoundError(f"image VAE {pretrained!r} not found ({exc}); set {config_key} to "
                                "an AutoencoderKL save_pretrained directory or HF id") from None
    return ImageVAECodec(vae.to(device), chunk_frames)
