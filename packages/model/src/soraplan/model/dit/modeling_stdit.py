"""STDiT (Open-Sora v1): a PixArt-alpha image DiT grown into a video DiT with temporal attention.

latents (B, C, T, H, W) -> 1x2x2 patches + sinusoidal positions (spatial, scaled by
`space_scale`) -> blocks of [spatial self-attn (per frame), text cross-attn, temporal self-attn
(per position), MLP] with adaLN-single modulation -> (noise, variance interpolation) per latent.

`temporal=False` is the image model (PixArt-alpha layout, trained on single frames in stage 1);
`init_from_image_dit` loads its weights, or a PixArt-alpha checkpoint, into a video model whose
temporal attention starts with a zero output projection, so the video model first computes the
image model on every frame. As in PixArt-alpha, cross-attention has no norm of its own, and the
temporal branch shares the spatial gate and reads the residual stream directly (with the
temporal position embedding added in the first block only), as Open-Sora v1's STDiT does.
`block_order` picks where temporal attention sits: after cross-attention (default) or right
after spatial attention (Open-Sora v1.0's code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import (
    PixArtAlphaTextProjection,
    TimestepEmbedding,
    Timesteps,
    get_1d_sincos_pos_embed_from_grid,
)
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from soraplan.model.auto import AutoModelFiles
from soraplan.model.dit.attention import CrossAttention, Grid, SelfAttention, grid_positions, patch_grid
from torch import Tensor, nn

BlockOrder = Literal["spatial_cross_temporal", "spatial_temporal_cross"]


def sincos_position_embedding(grid: Grid, dim: int, space_scale: float, time_scale: float,
                              device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(spatial (H*W, dim), temporal (T, dim)) sinusoidal embeddings of positions / scale, as
    Open-Sora v1 (a 256 px model at space_scale 0.5 sees the positions of a 512 px one).
    Spatial: first half of the channels encodes w, second half h (MAE / PixArt-alpha order)."""
    t, h, w = grid
    hw = grid_positions((1, h, w), device)[:, 1:].double() / space_scale
    spatial = torch.cat([get_1d_sincos_pos_embed_from_grid(dim // 2, hw[:, 1]),
                         get_1d_sincos_pos_embed_from_grid(dim // 2, hw[:, 0])], dim=1)
    times = torch.arange(t, device=device, dtype=torch.float64) / time_scale
    return spatial.float(), get_1d_sincos_pos_embed_from_grid(dim, times).float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class STDiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, temporal: bool,
                 block_order: BlockOrder) -> None:
        super().__init__()
        self.block_order = block_order
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, "spatial")
        self.cross_attn = CrossAttention(dim, num_heads)
        self.attn_temp = SelfAttention(dim, num_heads, "temporal") if temporal else None
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: Tensor, time_mod: Tensor, text: Tensor, text_mask: Tensor | None,
                grid: Grid, valid: Tensor | None, temporal_pos: Tensor | None) -> Tensor:
        mods = (self.scale_shift_table[None] + time_mod).unbind(1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (m[:, None] for m in mods)
        x = x + gate_a * self.attn(modulate(self.norm_attn(x), shift_a, scale_a), grid, None, valid)

        def temporal(x: Tensor) -> Tensor:
            if self.attn_temp is None:
                return x
            tokens = x if temporal_pos is None else x + temporal_pos
            return x + gate_a * self.attn_temp(tokens, grid, None, valid)

        if self.block_order == "spatial_temporal_cross":
            x = temporal(x)
        x = x + self.cross_attn(x, text, text_mask)
        if self.block_order == "spatial_cross_temporal":
            x = temporal(x)
        return x + gate_m * self.mlp(modulate(self.norm_mlp(x), shift_m, scale_m))


class STDiT(AutoModelFiles, ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        num_layers: int = 28,
        num_heads: int = 16,
        head_dim: int = 72,
        text_dim: int = 4096,
        patch_size: int = 2,
        patch_size_t: int = 1,
        mlp_ratio: float = 4.0,
        learn_sigma: bool = True,  # also predict the variance interpolation (IDDPM)
        temporal: bool = True,  # False: the image model (PixArt-alpha layout)
        block_order: BlockOrder = "spatial_cross_temporal",
        space_scale: float = 1.0,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        dim = num_heads * head_dim
        patch_dim = in_channels * patch_size_t * patch_size * patch_size
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, dim)
        self.time_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.caption_projection = PixArtAlphaTextProjection(text_dim, dim)
        self.blocks = nn.ModuleList(STDiTBlock(dim, num_heads, mlp_ratio, temporal, block_order)
                                    for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, patch_dim * (2 if learn_sigma else 1))
        for layer in [self.proj_out] + [b.cross_attn.to_out for b in self.blocks]:
            nn.init.zeros_(layer.weight)  # zero predictor, and text enters gradually (PixArt)
            nn.init.zeros_(layer.bias)
        self.zero_temporal_outputs()
        self.gradient_checkpointing = False

    def zero_temporal_outputs(self) -> None:
        """Temporal attention adds nothing until trained: the model computes each frame alone."""
        for block in self.blocks:
            if block.attn_temp is not None:
                nn.init.zeros_(block.attn_temp.to_out.weight)
                nn.init.zeros_(block.attn_temp.to_out.bias)

    def token_grid(self, latent_shape: tuple[int, int, int]) -> Grid:
        return patch_grid(latent_shape, self.config.patch_size_t, self.config.patch_size)

    def forward(self, latents: Tensor, timestep: Tensor, text_states: Tensor,
                text_mask: Tensor | None = None, latent_mask: Tensor | None = None) -> Tensor:
        """latents (B, C, T, H, W); timestep (B,); text_states (B, L, text_dim); text_mask (B, L);
        latent_mask (B, T, H, W), true on real latents. Returns (B, C or 2C, T, H, W): the noise
        and, with learn_sigma, the variance interpolation in [-1, 1] per latent."""
        cfg = self.config
        pt, p = cfg.patch_size_t, cfg.patch_size
        grid = self.token_grid(tuple(latents.shape[2:]))
        t, h, w = grid
        x = self.patch_embed(rearrange(
            latents, "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)", pt=pt, ph=p, pw=p))
        spatial_pos, temporal_pos = sincos_position_embedding(
            grid, x.shape[-1], cfg.space_scale, cfg.time_scale, x.device)
        x = x + spatial_pos.to(x.dtype).repeat(t, 1)
        temporal_pos = temporal_pos.to(x.dtype).repeat_interleave(h * w, dim=0)
        valid = None
        if latent_mask is not None:
            valid = rearrange(latent_mask.bool(), "b (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw)",
                              pt=pt, ph=p, pw=p).any(-1)
        time_emb = self.time_embed(self.time_proj(timestep).to(x.dtype))
        time_mod = self.time_mod(time_emb).unflatten(1, (6, -1))
        text = self.caption_projection(text_states.to(x.dtype))
        for index, block in enumerate(self.blocks):
            args = (x, time_mod, text, text_mask, grid, valid, temporal_pos if index == 0 else None)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, *args)
            else:
                x = block(*args)
        shift, scale = (self.out_scale_shift_table[None] + time_emb[:, None]).unbind(1)
        x = self.proj_out(modulate(self.norm_out(x), shift[:, None], scale[:, None]))
        return rearrange(x, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                         t=t, h=h, w=w, pt=pt, ph=p, pw=p)


# PixArt-alpha (and Open-Sora v1 STDiT) parameter names -> ours; `{}` is a block index.
PIXART_KEYS = {
    "t_embedder.mlp.0": "time_embed.linear_1",
    "t_embedder.mlp.2": "time_embed.linear_2",
    "t_block.1": "time_mod.1",
    "y_embedder.y_proj.fc1": "caption_projection.linear_1",
    "y_embedder.y_proj.fc2": "caption_projection.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.scale_shift_table": "out_scale_shift_table",
    "blocks.{}.scale_shift_table": "blocks.{}.scale_shift_table",
    "blocks.{}.attn.qkv": "blocks.{}.attn.to_qkv",
    "blocks.{}.attn.proj": "blocks.{}.attn.to_out",
    "blocks.{}.cross_attn.q_linear": "blocks.{}.cross_attn.to_q",
    "blocks.{}.cross_attn.kv_linear": "blocks.{}.cross_attn.to_kv",
    "blocks.{}.cross_attn.proj": "blocks.{}.cross_attn.to_out",
    "blocks.{}.mlp.fc1": "blocks.{}.mlp.0",
    "blocks.{}.mlp.fc2": "blocks.{}.mlp.2",
    "blocks.{}.attn_temp.qkv": "blocks.{}.attn_temp.to_qkv",
    "blocks.{}.attn_temp.proj": "blocks.{}.attn_temp.to_out",
}
# Fixed buffers we compute on the fly, and PixArt's learned null caption (we use the empty
# prompt's T5 states as the null condition instead).
PIXART_DROPPED = {"pos_embed", "pos_embed_temporal", "y_embedder.y_embedding"}
_PIXART_PATTERNS = [(re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)") + r"(\..+)?$"),
                     dst) for src, dst in PIXART_KEYS.items()]


def from_pixart_layout(state: dict[str, Tensor], patch_size_t: int = 1) -> dict[str, Tensor]:
    """Rename a PixArt-alpha / Open-Sora STDiT state dict to ours. The conv patch embedding
    (out, C, [pt,] p, p) becomes our linear one over (pt ph pw c)-ordered patches."""
    out = {}
    for key, value in state.items():
        if key in PIXART_DROPPED:
            continue
        if key.startswith("x_embedder.proj."):
            if value.ndim == 4:  # Conv2d (PixArt) -> Conv3d with a time extent of 1
                value = value[:, :, None].repeat(1, 1, patch_size_t, 1, 1) / patch_size_t
            if value.ndim == 5:
                value = rearrange(value, "o c pt ph pw -> o (pt ph pw c)")
            out["patch_embed." + key.rsplit(".", 1)[1]] = value
            continue
        for pattern, dst in _PIXART_PATTERNS:
            match = pattern.match(key)
            if match:
                *index, suffix = match.groups()
                out[dst.format(*index) + (suffix or "")] = value
                break
        else:
            raise KeyError(f"unexpected parameter {key!r} in a PixArt-alpha layout checkpoint")
    return out


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Weights of an image DiT: a save_pretrained dir / training run (its EMA weights), a
    .safetensors file, or a torch file read with weights_only (PixArt's {"state_dict": ...})."""
    from soraplan.core.train.checkpoint import resolve_pretrained
    from soraplan.model.upstream import read_weights_file

    path = Path(path)
    if path.is_dir():
        path = resolve_pretrained(path, "image DiT") / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"image DiT weights not found at {str(path)!r}")
    return read_weights_file(path, nested=(("state_dict",), ("ema",), ("module",)))


def init_from_image_dit(model: STDiT, path: str | os.PathLike[str]) -> list[str]:
    """Load an image DiT (ours with temporal=False, or PixArt-alpha's layout) into `model`'s
    spatial attention, cross-attention, MLP, embeddings and final layer; temporal attention keeps
    its initialisation with a zero output projection. A video checkpoint (temporal attention
    included, e.g. the previous stage's) loads whole. Returns the names left as initialised."""
    state = read_state_dict(path)
    if any(key.startswith(("x_embedder.", "t_embedder.")) for key in state):
        state = from_pixart_layout(state, model.config.patch_size_t)
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    unknown = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if ".attn_temp." not in k)
    if wrong or unknown or missing:
        raise ValueError(f"DiT weights at {str(path)!r} do not fit this model: shapes {wrong[:3]}, "
                         f"unknown {unknown[:3]}, missing {missing[:3]}")
    model.load_state_dict(state, strict=False)
    left = sorted(set(own) - set(state))
    if left:
        model.zero_temporal_outputs()
    return left
