"""Convert a released upstream WF-VAE (PKU-YuanGroup/WF-VAE, Open-Sora-Plan v1.3's VAE) into a
`WFVAEModel` save_pretrained folder.

The architectures are the same layer for layer; what differs is naming (LayerNorm wrappers,
1x1x1 causal convs where we use linear or 2D layers, separate q/k/v), the order of the 2D Haar
subbands (upstream: low, high in height, high in width, both; ours: low, high in width, high in
height, both), the rounded 3D Haar tap (0.3536, stored with the filters in the checkpoint) and
the decoder upsampling (upstream's trilinear = our `decoder_upsample="trilinear"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from soraplan.core.config import ConfigError
from soraplan.model.upstream import KeyRule, load_converted, read_checkpoint, rename_state_dict, require
from soraplan.model.vae.modeling_wfvae import RGB, WFVAEModel
from soraplan.model.vae.modules import haar_filters

# Upstream's 3D Haar filter modules, in our subband order (time slowest, width fastest).
HAAR3D_UPSTREAM = ("h", "g", "hh", "gh", "h_v", "g_v", "hh_v", "gh_v")
UPSTREAM_TAP = 0.3536  # what upstream's code writes into those filters
# Level-1 coefficient channels (4 subbands x RGB, subband-major) of upstream in our order.
HAAR2D_ORDER = [b * RGB + c for b in (0, 2, 1, 3) for c in range(RGB)]


def _linear(t: Tensor) -> Tensor:
    """A 1x1x1 conv weight (out, in, 1, 1, 1) as a linear one; biases unchanged."""
    return t.flatten(1) if t.ndim > 1 else t


def _frame_conv(t: Tensor) -> Tensor:
    """A causal 1x1x1 conv weight as a per-frame 1x1 conv (drop the time axis)."""
    return t[:, :, 0] if t.ndim == 5 else t


# The key-mapping table (upstream name -> ours); every matching row applies, in order.
VAE_KEYS = [
    KeyRule(r"^(encoder|decoder)\.(inverse_)?wavelet_transform_\w+\..*$", None),  # fixed filters
    KeyRule(r"^decoder\.layer\.", "decoder.up0."),
    KeyRule(r"\.norm\.(weight|bias)$", r".\1"),  # LayerNorm wrapper
    KeyRule(r"\.q\.conv\.(weight|bias)$", r".to_qkv.\1", _linear, part=0),
    KeyRule(r"\.k\.conv\.(weight|bias)$", r".to_qkv.\1", _linear, part=1),
    KeyRule(r"\.v\.conv\.(weight|bias)$", r".to_qkv.\1", _linear, part=2),
    KeyRule(r"\.proj_out\.conv\.(weight|bias)$", r".to_out.\1", _linear),
    KeyRule(r"\.nin_shortcut(\.conv)?\.(weight|bias)$", r".shortcut.\2", _frame_conv),
    KeyRule(r"^encoder\.connect_l1\.weight$", "encoder.connect_l1.weight",
            lambda t: t[:, HAAR2D_ORDER]),
    KeyRule(r"^decoder\.connect_l1\.(\d+)\.(weight|bias)$", r"decoder.connect_l1.\1.\2",
            lambda t: t[HAAR2D_ORDER]),
]

# Upstream settings that must have these values (the 4x8x8 layout both implement): key ->
# (required value, upstream's default).
FIXED = {
    "attention_type": ("AttnBlock3DFix", "AttnBlock3DFix"),
    "norm_type": ("layernorm", "groupnorm"),
    "t_interpolation": ("trilinear", "nearest"),
    "l1_dowmsample_block": ("Downsample", "Downsample"),
    "l1_downsample_wavelet": ("HaarWaveletTransform2D", "HaarWaveletTransform2D"),
    "l2_dowmsample_block": ("Spatial2xTime2x3DDownsample", "Spatial2xTime2x3DDownsample"),
    "l2_downsample_wavelet": ("HaarWaveletTransform3D", "HaarWaveletTransform3D"),
    "l1_upsample_block": ("Upsample", "Upsample"),
    "l1_upsample_wavelet": ("InverseHaarWaveletTransform2D", "InverseHaarWaveletTransform2D"),
    "l2_upsample_block": ("Spatial2xTime2x3DUpsample", "Spatial2xTime2x3DUpsample"),
    "l2_upsample_wavelet": ("InverseHaarWaveletTransform3D", "InverseHaarWaveletTransform3D"),
}


def per_channel(values: Any, channels: int, key: str) -> float | list[float]:
    values = [float(v) for v in (values if isinstance(values, list) else [values])]
    if len(set(values)) == 1:
        return values[0]
    if len(values) != channels:
        raise ConfigError(f"upstream config {key} has {len(values)} values for {channels} latent "
                          "channels")
    return values


def haar3d_tap(state: dict[str, Tensor]) -> float:
    """The 3D Haar tap stored with upstream's filters, checked against our subband layout."""
    taps = []
    for prefix, module in (("encoder.wavelet_transform_in.", "{}_conv.conv.weight"),
                           ("decoder.inverse_wavelet_transform_out.", "{}")):
        filters = [state.get(prefix + module.format(n)) for n in HAAR3D_UPSTREAM]
        if any(f is None for f in filters):
            continue
        stacked = torch.stack([f.double().reshape(2, 2, 2) for f in filters])
        tap = stacked.abs().max().item()
        if not torch.equal(stacked, tap * haar_filters(3).double().squeeze(1)):
            raise ConfigError(f"{prefix}*: 3D Haar filters are not in the expected layout")
        taps.append(tap)
    if len(taps) == 2 and abs(taps[0] - taps[1]) > 1e-6 * taps[0]:
        raise ConfigError(f"encoder and decoder 3D Haar taps differ: {taps}")
    return taps[0] if taps else UPSTREAM_TAP


def vae_config_from_upstream(config: dict[str, Any], state: dict[str, Tensor]) -> dict[str, Any]:
    """Our WFVAEModel kwargs for an upstream WF-VAE config.json."""
    for key, (value, default) in FIXED.items():
        require(config, key, (value,), default)
    latent = int(config.get("latent_dim", 8))
    return dict(
        latent_channels=latent,
        base_channels=int(config.get("base_channels", 128)),
        encoder_num_res_blocks=int(config.get("encoder_num_resblocks", 2)),
        decoder_num_res_blocks=int(config.get("decoder_num_resblocks", 2)),
        encoder_energy_flow_channels=int(config.get("encoder_energy_flow_hidden_size", 64)),
        decoder_energy_flow_channels=int(config.get("decoder_energy_flow_hidden_size", 128)),
        connect_res_blocks=int(config.get("connect_res_layer_num", 1)),
        use_attention=bool(config.get("use_attention", True)),
        norm_type="layernorm",
        decoder_upsample="trilinear",
        haar3d_tap=haar3d_tap(state),
        scaling_factor=per_channel(config.get("scale", 0.18215), latent, "scale"),
        shift_factor=per_channel(config.get("shift", 0.0), latent, "shift"),
    )


def convert_vae(source: str | Path, out: str | Path, config: str | Path | None = None
                ) -> dict[str, Any]:
    """Read an upstream WF-VAE checkpoint and save it as our save_pretrained folder."""
    upstream_config, state = read_checkpoint(source, config)
    kwargs = vae_config_from_upstream(upstream_config, state)
    model = WFVAEModel(**kwargs)
    load_converted(model, rename_state_dict(state, VAE_KEYS), "WF-VAE")
    model.save_pretrained(out)
    return {"out": str(out), "params": sum(p.numel() for p in model.parameters()),
            **{k: kwargs[k] for k in ("latent_channels", "base_channels", "haar3d_tap")}}
