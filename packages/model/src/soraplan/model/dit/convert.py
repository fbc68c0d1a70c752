"""Convert a released Open-Sora-Plan v1.3 DiT (`OpenSoraT2V_v1_3`) into a `SkiparseDiT`
save_pretrained folder.

Same blocks; upstream differs in naming (diffusers Attention's separate q/k/v, FeedForward,
AdaLayerNormSingle), its patch embedding is a conv (ours a linear layer on flattened patches),
its cross-attention reads raw hidden states and its RoPE pairs channels in halves of each third
(`cross_attn_norm=False`, `rope_pairing="halves"` here). Layers 2..29 are sparse whatever the
depth (`i > 1 and i < 30` upstream), so `full_layers` is computed from `num_layers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from soraplan.core.config import ConfigError
from soraplan.model.upstream import KeyRule, load_converted, read_checkpoint, rename_state_dict, require


def _patch_linear(t: Tensor) -> Tensor:
    """Conv patch weight (dim, C, p, p) -> linear weight over (ph pw c)-flattened patches."""
    return t.permute(0, 2, 3, 1).flatten(1) if t.ndim == 4 else t


# The key-mapping table (upstream name -> ours); every matching row applies, in order.
DIT_KEYS = [
    KeyRule(r"^pos_embed\.proj\.", "patch_embed.", _patch_linear),
    KeyRule(r"^adaln_single\.emb\.timestep_embedder\.", "time_embed."),
    KeyRule(r"^adaln_single\.linear\.", "time_mod.1."),
    KeyRule(r"^scale_shift_table$", "out_scale_shift_table"),
    KeyRule(r"^transformer_blocks\.", "blocks."),
    KeyRule(r"\.attn1\.to_q\.", ".attn.to_qkv.", part=0),
    KeyRule(r"\.attn1\.to_k\.", ".attn.to_qkv.", part=1),
    KeyRule(r"\.attn1\.to_v\.", ".attn.to_qkv.", part=2),
    KeyRule(r"\.attn1\.to_out\.0\.", ".attn.to_out."),
    KeyRule(r"\.attn2\.to_q\.", ".cross_attn.to_q."),
    KeyRule(r"\.attn2\.to_k\.", ".cross_attn.to_kv.", part=0),
    KeyRule(r"\.attn2\.to_v\.", ".cross_attn.to_kv.", part=1),
    KeyRule(r"\.attn2\.to_out\.0\.", ".cross_attn.to_out."),
    KeyRule(r"\.ff\.net\.0\.proj\.", ".mlp.0."),
    KeyRule(r"\.ff\.net\.2\.", ".mlp.2."),
]

UPSTREAM_LAST_SPARSE = 29  # upstream: block i is sparse when 1 < i < 30


def dit_config_from_upstream(config: dict[str, Any]) -> dict[str, Any]:
    """Our SkiparseDiT kwargs for an upstream OpenSoraT2V_v1_3 config.json."""
    require(config, "activation_fn", ("gelu-approximate",), "geglu")
    require(config, "attention_bias", (True,), True)
    require(config, "norm_elementwise_affine", (False,), False)
    require(config, "norm_eps", (1e-6,), 1e-6)
    require(config, "only_cross_attention", (False,), False)
    require(config, "double_self_attention", (False,), False)
    require(config, "patch_size_t", (1,), None)
    for axis in "thw":
        require(config, f"interpolation_scale_{axis}", (1, 1.0), 1.0)
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    in_channels = int(config["in_channels"])
    if config.get("out_channels") not in (None, in_channels):
        raise ConfigError(f"upstream config out_channels={config['out_channels']} differs from "
                          f"in_channels={in_channels}: not supported")
    if int(config["cross_attention_dim"]) != heads * head_dim:
        raise ConfigError(f"upstream config cross_attention_dim={config['cross_attention_dim']} "
                          f"is not the hidden size {heads * head_dim}: not supported")
    layers = int(config["num_layers"])
    sparse = bool(config.get("sparse1d", False))
    return dict(
        in_channels=in_channels,
        num_layers=layers,
        num_heads=heads,
        head_dim=head_dim,
        text_dim=int(config["caption_channels"]),
        attention_mode="skiparse" if sparse else "full",
        sparse_k=int(config.get("sparse_n", 2)),
        full_layers=[0, 1, *range(UPSTREAM_LAST_SPARSE + 1, layers)],
        patch_size=int(config["patch_size"]),
        patch_size_t=1,
        cross_attn_norm=False,
        rope_pairing="halves",
    )


def convert_dit(source: str | Path, out: str | Path, config: str | Path | None = None
                ) -> dict[str, Any]:
    """Read an upstream Open-Sora-Plan v1.3 DiT checkpoint and save it as our folder."""
    from soraplan.model.dit.modeling_skiparse import SkiparseDiT

    upstream_config, state = read_checkpoint(source, config)
    kwargs = dit_config_from_upstream(upstream_config)
    with torch.device("meta"):  # the weights come from the checkpoint: allocate nothing twice
        model = SkiparseDiT(**kwargs)
    load_converted(model, rename_state_dict(state, DIT_KEYS), "DiT")
    model.save_pretrained(out)
    return {"out": str(out), "params": sum(p.numel() for p in model.parameters()),
            "num_layers": kwargs["num_layers"], "full_layers": kwargs["full_layers"]}
