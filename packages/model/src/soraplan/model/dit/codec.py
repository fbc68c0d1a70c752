"""The small interface the DiT needs from a video autoencoder, and its WF-VAE adapter."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class LatentCodec(Protocol):
    temporal_compression: int
    spatial_compression: int
    latent_channels: int

    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, 1 + 4n, H, W) in [-1, 1] -> DiT latents (B, C, 1 + n, H / s, W / s)."""
        ...

    def decode(self, latents: Tensor) -> Tensor:
        """DiT latents -> video in [-1, 1]."""
        ...


class WFVAECodec:
    """WF-VAE (diffusers-style encode/decode) with its latent shift and scale applied."""

    def __init__(self, vae: nn.Module, chunk_frames: int | None = None) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.temporal_compression = vae.temporal_compression
        self.spatial_compression = vae.spatial_compression
        self.latent_channels = vae.config.latent_channels
        self.chunk_frames = chunk_frames

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        z = self.vae.encode(video, chunk_frames=self.chunk_frames).latent_dist.mode()
        return self.vae.normalize_latents(z)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z = self.vae.denormalize_latents(latents)
        chunk = None if self.chunk_frames is None else max(1, self.chunk_frames // 4)
        return self.vae.decode(z, chunk_latents=chunk).sample.clamp(-1, 1)


def load_wfvae_codec(pretrained: str, config_key: str, device: str | torch.device = "cpu",
                     chunk_frames: int | None = None) -> WFVAECodec:
    """The WF-VAE saved at `pretrained` (local dir or HF id); errors name `config_key`."""
    from soraplan.model.vae.configs import load_pretrained

    return WFVAECodec(load_pretrained(pretrained, config_key=config_key).to(device), chunk_frames)


def codec_of(vae: nn.Module, chunk_frames: int | None = None) -> LatentCodec:
    """The codec of a loaded autoencoder: per-frame for a diffusers AutoencoderKL, else WF-VAE."""
    if type(vae).__name__ == "AutoencoderKL":
        from soraplan.model.dit.image_codec import ImageVAECodec

        return ImageVAECodec(vae, chunk_frames)
    return WFVAECodec(vae, chunk_frames)


def load_codec(pretrained: str, config_key: str, device: str | torch.device = "cpu",
               chunk_frames: int | None = None) -> LatentCodec:
    """The codec saved at `pretrained`: a diffusers AutoencoderKL (Open-Sora v1's per-frame image
    VAE, `image_codec`) or a WF-VAE; errors name `config_key`."""
    from soraplan.model.dit.image_codec import is_image_vae, load_image_vae_codec

    if is_image_vae(pretrained):
        return load_image_vae_codec(pretrained, config_key, device, chunk_frames)
    return load_wfvae_codec(pretrained, config_key, device, chunk_frames)
