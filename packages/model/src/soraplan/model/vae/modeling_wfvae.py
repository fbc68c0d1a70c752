"""WF-VAE: a causal video VAE whose encoder and decoder are guided by a multi-level Haar wavelet.

Compression is 4x in time and 8x in height and width: T = 1 + 4n frames -> 1 + n latents.
Wavelet levels: 3D Haar on the RGB input (level 0), 2D Haar on its low band (level 1), 3D Haar
on that low band (level 2). The "energy flow": each level's low-frequency subband is projected
and concatenated into the matching encoder stage, and the decoder predicts the low band of
each level and adds it back before the matching inverse wavelet step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from soraplan.model.auto import AutoModelFiles
from soraplan.model.vae.modules import (
    HAAR3D_TAP,
    CausalConv3d,
    FrameAligner,
    FrameAttention,
    FrameConv2d,
    HaarWavelet2D,
    HaarWavelet3D,
    InverseHaarWavelet2D,
    InverseHaarWavelet3D,
    NormType,
    ResnetBlock,
    SpatialDownsample,
    SpatialUpsample,
    SpatioTemporalDownsample,
    SpatioTemporalUpsample,
    UpsampleMode,
    causal_stream,
    make_norm,
    mark_last_chunk,
)

RGB = 3
WaveletCoeffs = tuple[torch.Tensor, torch.Tensor]  # (level 1: 12 channels, level 2: 24 channels)


class DiagonalGaussianDistribution:
    """Posterior N(mean, exp(logvar)) from the encoder's 2*latent_channels output.

    Our own small class rather than diffusers': its KL sums dims 1-3 only (images), and
    importing diffusers.models.autoencoders costs seconds.
    """

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per batch item, summed over channels, time and space."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


@dataclass
class DecoderOutput(BaseOutput):
    sample: torch.Tensor


def _mid_block(
    in_channels: int, channels: int, out_channels: int, norm: NormType, attention: bool
) -> nn.Sequential:
    layers: list[nn.Module] = [ResnetBlock(in_channels, channels, norm, temporal=True)]
    if attention:
        layers.append(FrameAttention(channels, norm))
    layers.append(ResnetBlock(channels, out_channels, norm, temporal=True))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(
        self,
        latent_channels: int,
        base_channels: int,
        num_res_blocks: int,
        energy_flow_channels: int,
        norm_type: NormType,
        use_attention: bool,
        haar3d_tap: float = HAAR3D_TAP,
    ) -> None:
        super().__init__()
        c, e = base_channels, energy_flow_channels
        self.wavelet_in = HaarWavelet3D(haar3d_tap)
        self.wavelet_l1 = HaarWavelet2D()
        self.wavelet_l2 = HaarWavelet3D(haar3d_tap)
        self.down1 = nn.Sequential(
            FrameConv2d(8 * RGB, c, 3, padding=1),
            *[ResnetBlock(c, c, norm_type, temporal=False) for _ in range(num_res_blocks)],
            SpatialDownsample(c),
        )
        self.connect_l1 = FrameConv2d(4 * RGB, e, 3, padding=1)
        self.down2 = nn.Sequential(
            FrameConv2d(c + e, 2 * c, 3, padding=1),
            *[ResnetBlock(2 * c, 2 * c, norm_type, temporal=True) for _ in range(num_res_blocks)],
            SpatioTemporalDownsample(2 * c),
        )
        self.connect_l2 = FrameConv2d(8 * RGB, e, 3, padding=1)
        self.mid = _mid_block(2 * c + e, 4 * c, 4 * c, norm_type, use_attention)
        self.norm_out = make_norm(norm_type, 4 * c)
        self.conv_out = CausalConv3d(4 * c, 2 * latent_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, WaveletCoeffs]:
        coeffs = self.wavelet_in(x)
        l1_coeffs = self.wavelet_l1(coeffs[:, :RGB])
        l2_coeffs = self.wavelet_l2(l1_coeffs[:, :RGB])
        h = self.down1(coeffs)
        h = self.down2(torch.cat([h, self.connect_l1(l1_coeffs)], dim=1))
        h = self.mid(torch.cat([h, self.connect_l2(l2_coeffs)], dim=1))
        moments = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return moments, (l1_coeffs, l2_coeffs)


class Decoder(nn.Module):
    def __init__(
        self,
        latent_channels: int,
        base_channels: int,
        num_res_blocks: int,
        energy_flow_channels: int,
        connect_res_blocks: int,
        norm_type: NormType,
        use_attention: bool,
        upsample: UpsampleMode = "nearest",
        haar3d_tap: float = HAAR3D_TAP,
    ) -> None:
        super().__init__()
        c, e = base_channels, energy_flow_channels
        self.energy_flow_channels = e
        self.conv_in = CausalConv3d(latent_channels, 4 * c)
        self.mid = _mid_block(4 * c, 4 * c, 4 * c + e, norm_type, use_attention)
        self.up2 = nn.Sequential(
            *[ResnetBlock(4 * c, 4 * c, norm_type, temporal=True) for _ in range(num_res_blocks)],
            SpatioTemporalUpsample(4 * c, upsample),
            ResnetBlock(4 * c, 4 * c + e, norm_type, temporal=True),
        )
        self.up1 = nn.Sequential(
            *[
                ResnetBlock(4 * c if i == 0 else 2 * c, 2 * c, norm_type, temporal=True)
                for i in range(num_res_blocks)
            ],
            SpatialUpsample(2 * c),
            ResnetBlock(2 * c, 2 * c, norm_type, temporal=True),
        )
        self.up0 = nn.Sequential(
            ResnetBlock(2 * c, c, norm_type, temporal=True),
            ResnetBlock(c, c, norm_type, temporal=True),
        )
        self.connect_l2 = nn.Sequential(
            *[ResnetBlock(e, e, norm_type, temporal=True) for _ in range(connect_res_blocks)],
            FrameConv2d(e, 8 * RGB, 3, padding=1),
        )
        self.connect_l1 = nn.Sequential(
            *[ResnetBlock(e, e, norm_type, temporal=True) for _ in range(connect_res_blocks)],
            FrameConv2d(e, 4 * RGB, 3, padding=1),
        )
        self.norm_out = make_norm(norm_type, c)
        self.conv_out = FrameConv2d(c, 8 * RGB, 3, padding=1)
        self.inverse_wavelet_l2 = InverseHaarWavelet3D(haar3d_tap)
        self.inverse_wavelet_l1 = InverseHaarWavelet2D()
        self.inverse_wavelet_out = InverseHaarWavelet3D(haar3d_tap)
        # With "trilinear" upsampling a stream's up2 path runs a frame behind the level-2 band.
        self.align_l2 = FrameAligner()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, WaveletCoeffs, torch.Tensor]:
        """Video, the predicted wavelet low bands, and the input of the last layer `conv_out`."""
        e = self.energy_flow_channels
        h = self.mid(self.conv_in(z))
        l2_coeffs = self.connect_l2(h[:, -e:])
        l2_low = self.inverse_wavelet_l2(l2_coeffs)
        h = self.up2(h[:, :-e])
        l1_coeffs, l2_low = self.align_l2(self.connect_l1(h[:, -e:]), l2_low)
        l1_coeffs = torch.cat([l1_coeffs[:, :RGB] + l2_low, l1_coeffs[:, RGB:]], dim=1)
        l1_low = self.inverse_wavelet_l1(l1_coeffs)
        h = self.up1(h[:, :-e])  # rebinding h frees up2's output before up0 runs
        features = nn.functional.silu(self.norm_out(self.up0(h)))
        del h
        coeffs = self.conv_out(features)
        coeffs = torch.cat([coeffs[:, :RGB] + l1_low, coeffs[:, RGB:]], dim=1)
        return self.inverse_wavelet_out(coeffs), (l1_coeffs, l2_coeffs), features


@dataclass
class WFVAEOutput(BaseOutput):
    sample: torch.Tensor  # reconstruction, same shape as the input
    latent_dist: DiagonalGaussianDistribution
    encoder_coeffs: WaveletCoeffs  # wavelet low bands computed from the input
    decoder_coeffs: WaveletCoeffs  # the decoder's predictions of the same
    decoder_features: torch.Tensor  # input of decoder.conv_out, for the adaptive GAN weight


class WFVAEModel(AutoModelFiles, ModelMixin, ConfigMixin):
    temporal_compression = 4
    spatial_compression = 8

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        base_channels: int = 128,
        encoder_num_res_blocks: int = 2,
        decoder_num_res_blocks: int = 2,
        encoder_energy_flow_channels: int = 64,
        decoder_energy_flow_channels: int = 128,
        connect_res_blocks: int = 1,
        use_attention: bool = True,
        norm_type: NormType = "layernorm",
        # Decoder's 2x time-and-space upsampling: "nearest" repeats frames and pixels,
        # "trilinear" interpolates as upstream WF-VAE releases (both decode losslessly in chunks).
        decoder_upsample: UpsampleMode = "nearest",
        # Magnitude of the 3D Haar filter taps: orthonormal 2**-1.5; upstream rounds it to 0.3536.
        haar3d_tap: float = HAAR3D_TAP,
        # Latents for the DiT are (z - shift_factor) * scaling_factor, per channel when these are
        # lists (`soraplan-vae latent-stats` writes the channel means and 1 / stds here, as
        # upstream WF-VAE releases carry them).
        scaling_factor: float | list[float] = 1.0,
        shift_factor: float | list[float] = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(
            latent_channels,
            base_channels,
            encoder_num_res_blocks,
            encoder_energy_flow_channels,
            norm_type,
            use_attention,
            haar3d_tap,
        )
        self.decoder = Decoder(
            latent_channels,
            base_channels,
            decoder_num_res_blocks,
            decoder_energy_flow_channels,
            connect_res_blocks,
            norm_type,
            use_attention,
            decoder_upsample,
            haar3d_tap,
        )

    def _latent_affine(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale) broadcastable over latents (B, C, T, H, W)."""
        shift, scale = (torch.as_tensor(v, dtype=like.dtype, device=like.device)
                        for v in (self.config.shift_factor, self.config.scaling_factor))
        return shift.reshape(1, -1, 1, 1, 1), scale.reshape(1, -1, 1, 1, 1)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Posterior latents -> the DiT's latents (zero mean, unit variance per channel)."""
        shift, scale = self._latent_affine(z)
        return (z - shift) * scale

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shift, scale = self._latent_affine(latents)
        return latents / scale + shift

    def _check_video(self, x: torch.Tensor) -> None:
        s = self.spatial_compression
        if (
            x.ndim != 5
            or x.shape[1] != RGB
            or (x.shape[2] - 1) % self.temporal_compression
            or x.shape[3] % s
            or x.shape[4] % s
        ):
            raise ValueError(
                f"expected video (B, 3, 1+4n, H, W) with H and W divisible by {s}, got {tuple(x.shape)}"
            )

    @staticmethod
    def _chunks(t: int, chunk: int | None) -> list[slice]:
        """Time slices: the first frame plus `chunk` more, then `chunk` at a time."""
        if chunk is None or chunk + 1 >= t:
            return [slice(0, t)]
        if chunk < 1:
            raise ValueError(f"chunk length must be >= 1, got {chunk}")
        return [slice(0, chunk + 1)] + [
            slice(s, min(s + chunk, t)) for s in range(chunk + 1, t, chunk)
        ]

    @staticmethod
    def _stream(module: nn.Module, x: torch.Tensor, chunks: list[slice]) -> torch.Tensor:
        """`module`'s first output for `x`, computed chunk by chunk along time. The last chunk
        is marked, so no layer keeps frames for a next one (a single chunk keeps none)."""
        parts = []
        with causal_stream(module):
            for i, s in enumerate(chunks):
                if i == len(chunks) - 1:
                    mark_last_chunk(module)
                parts.append(module(x[:, :, s])[0])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def encode(
        self, x: torch.Tensor, chunk_frames: int | None = None, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Posterior over latents of video `x` in [-1, 1]; `chunk_frames` bounds memory, exactly."""
        self._check_video(x)
        moments = self._stream(self.encoder, x, self._chunks(x.shape[2], chunk_frames))
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(
        self, z: torch.Tensor, chunk_latents: int | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Video from latents; `chunk_latents` decodes that many latent frames at a time, exactly."""
        video = self._stream(self.decoder, z, self._chunks(z.shape[2], chunk_latents))
        return DecoderOutput(sample=video) if return_dict else (video,)

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> WFVAEOutput:
        """Full (unchunked) pass for training, with the wavelet bands the losses compare."""
        self._check_video(x)
        moments, encoder_coeffs = self.encoder(x)
        posterior = DiagonalGaussianDistribution(moments)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        video, decoder_coeffs, features = self.decoder(z)
        return WFVAEOutput(video, posterior, encoder_coeffs, decoder_coeffs, features)
