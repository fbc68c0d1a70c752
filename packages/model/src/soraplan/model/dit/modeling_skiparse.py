"""Skiparse DiT: a text-to-video diffusion transformer over VAE latents (Open-Sora-Plan v1.3).

latents (B, C, T, H, W) -> 1x2x2 patches -> blocks of [sparse self-attn, text cross-attn, MLP]
with adaLN-single timestep modulation (PixArt-alpha) -> unpatchify to (B, C, T, H, W).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from soraplan.model.auto import AutoModelFiles
from soraplan.model.dit.attention import (
    AttentionMode,
    CrossAttention,
    Grid,
    LayerKind,
    RopePairing,
    SelfAttention,
    layer_kinds,
    patch_grid,
    rope_3d,
)
from torch import Tensor, nn


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, kind: LayerKind, sparse_k: int,
                 mlp_ratio: float, cross_attn_norm: bool = True,
                 rope_pairing: RopePairing = "adjacent") -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, kind, sparse_k, rope_pairing)
        # Off: cross-attention reads the raw hidden states (PixArt, Open-Sora-Plan v1.3).
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        # adaLN-single: one shared timestep projection, plus a learned per-block offset.
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: Tensor, time_mod: Tensor, text: Tensor, text_mask: Tensor | None,
                grid: Grid, rope: tuple[Tensor, Tensor], valid: Tensor | None) -> Tensor:
        mods = (self.scale_shift_table[None] + time_mod).unbind(1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (m[:, None] for m in mods)
        h = self.norm_attn(x) * (1 + scale_a) + shift_a
        x = x + gate_a * self.attn(h, grid, rope, valid)
        x = x + self.cross_attn(self.norm_cross(x), text, text_mask)
        h = self.norm_mlp(x) * (1 + scale_m) + shift_m
        return x + gate_m * self.mlp(h)


class SkiparseDiT(AutoModelFiles, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        num_layers: int = 32,
        num_heads: int = 24,
        head_dim: int = 96,
        text_dim: int = 4096,
        attention_mode: AttentionMode = "skiparse",
        sparse_k: int = 4,
        full_layers: list[int] | None = None,
        patch_size: int = 2,
        patch_size_t: int = 1,
        mlp_ratio: float = 4.0,
        rope_theta: float = 10000.0,
        cross_attn_norm: bool = True,  # LayerNorm (learned affine) before text cross-attention
        rope_pairing: RopePairing = "adjacent",  # "halves": Open-Sora-Plan's RoPE channel layout
    ) -> None:
        super().__init__()
        dim = num_heads * head_dim
        patch_dim = in_channels * patch_size_t * patch_size * patch_size
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, dim)
        self.time_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.caption_projection = PixArtAlphaTextProjection(text_dim, dim)
        kinds = layer_kinds(attention_mode, num_layers,
                            [0, 1, -2, -1] if full_layers is None else full_layers)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, num_heads, kind, sparse_k, mlp_ratio, cross_attn_norm, rope_pairing)
            for kind in kinds)
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, patch_dim)
        nn.init.zeros_(self.proj_out.weight)  # start as a zero predictor, as in DiT
        nn.init.zeros_(self.proj_out.bias)
        self.gradient_checkpointing = False

    def token_grid(self, latent_shape: tuple[int, int, int]) -> Grid:
        return patch_grid(latent_shape, self.config.patch_size_t, self.config.patch_size)

    def forward(self, latents: Tensor, timestep: Tensor, text_states: Tensor,
                text_mask: Tensor | None = None, latent_mask: Tensor | None = None) -> Tensor:
        """latents (B, C, T, H, W); timestep (B,); text_states (B, L, text_dim); text_mask (B, L);
        latent_mask (B, T, H, W), true on real latents (a patch is real if any of it is)."""
        pt, p = self.config.patch_size_t, self.config.patch_size
        grid = self.token_grid(tuple(latents.shape[2:]))
        x = self.patch_embed(rearrange(
            latents, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)", pt=pt, ph=p, pw=p))
        valid = None
        if latent_mask is not None:
            valid = rearrange(latent_mask.bool(), "b (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw)",
                              pt=pt, ph=p, pw=p).any(-1)
        time_emb = self.time_embed(self.time_proj(timestep).to(x.dtype))
        time_mod = self.time_mod(time_emb).unflatten(1, (6, -1))
        text = self.caption_projection(text_states.to(x.dtype))
        rope = rope_3d(grid, self.config.head_dim, self.config.rope_theta, x.device,
                       torch.promote_types(x.dtype, torch.float32))
        for block in self.blocks:
            args = (x, time_mod, text, text_mask, grid, rope, valid)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, *args)
            else:
                x = block(*args)
        shift, scale = (self.out_scale_shift_table[None] + time_emb[:, None]).unbind(1)
        x = self.proj_out(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])
        t, h, w = grid
        return rearrange(x, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                         t=t, h=h, w=w, pt=pt, ph=p, pw=p)
