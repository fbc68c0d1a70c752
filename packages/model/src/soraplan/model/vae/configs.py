"""Named WF-VAE configs (the one registry) and the config dataclass that builds a model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soraplan.core.config import ConfigError
from soraplan.core.train.checkpoint import resolve_pretrained
from soraplan.model.vae.modeling_wfvae import WFVAEModel

UPSTREAM_LAYERS: dict[str, Any] = dict(decoder_upsample="trilinear", haar3d_tap=0.3536)

WFVAE_CONFIGS: dict[str, dict[str, Any]] = {
    "wfvae-s": dict(base_channels=128, latent_channels=8),
    "wfvae-m": dict(base_channels=160, latent_channels=4),
    # The released WF-VAE-L's widths (encoder energy flow 128, as its config).
    "wfvae-l": dict(base_channels=192, latent_channels=16, encoder_energy_flow_channels=128),
    # Upstream-compatible: the released weights converted by `soraplan-vae convert` load into
    # these (trilinear decoder upsampling, upstream's rounded 3D Haar taps).
    # WF-VAE-L-16Chn (PKU-YuanGroup/WF-VAE, 316M).
    "wfvae-l-16chn": dict(base_channels=192, latent_channels=16, encoder_energy_flow_channels=128,
                          **UPSTREAM_LAYERS),
    # Open-Sora-Plan v1.3's 8-channel WF-VAE-S (its latent scale and shift come with the
    # converted weights).
    "wfvae-s-osp-v1.3": dict(base_channels=128, latent_channels=8, **UPSTREAM_LAYERS),
    # Small enough to train on a CPU in minutes; for tests, smoke runs and the CPU figures.
    "wfvae-tiny": dict(
        base_channels=16,
        latent_channels=4,
        encoder_num_res_blocks=1,
        decoder_num_res_blocks=1,
        encoder_energy_flow_channels=16,
        decoder_energy_flow_channels=16,
    ),
    # The toy world's VAE (64x64 shots of coloured shapes): 8 latent channels, about 2M
    # parameters, no attention, so it trains on small crops and encodes whole frames.
    "wfvae-toy": dict(
        base_channels=16,
        latent_channels=8,
        encoder_num_res_blocks=1,
        decoder_num_res_blocks=1,
        encoder_energy_flow_channels=8,
        decoder_energy_flow_channels=16,
        use_attention=False,
    ),
    # The smallest model that still exercises every layer: unit tests in float64.
    "wfvae-test": dict(
        base_channels=8,
        latent_channels=4,
        encoder_num_res_blocks=1,
        decoder_num_res_blocks=1,
        encoder_energy_flow_channels=8,
        decoder_energy_flow_channels=8,
    ),
}


@dataclass
class WFVAEConfig:
    """Which WF-VAE to build. The first of `pretrained`, `config_file`, `name` that is set wins."""

    name: str = "wfvae-s"  # a key of WFVAE_CONFIGS
    config_file: str | None = None  # a diffusers config.json (random weights)
    pretrained: str | None = None  # local dir or HF hub id saved with save_pretrained
    overrides: dict[str, Any] = field(default_factory=dict)  # model kwargs on top of the name

    def validate(self) -> None:
        if not (self.pretrained or self.config_file) and self.name not in WFVAE_CONFIGS:
            raise ConfigError(f"name: unknown WF-VAE config {self.name!r}; "
                              f"known: {sorted(WFVAE_CONFIGS)}")

    def build(self) -> WFVAEModel:
        self.validate()  # also for configs made in code
        if self.pretrained:
            return load_pretrained(self.pretrained)
        if self.config_file:
            if not Path(self.config_file).is_file():
                raise FileNotFoundError(f"WF-VAE config file not found: {self.config_file!r} "
                                        "(model.config_file)")
            return WFVAEModel.from_config(WFVAEModel.load_config(self.config_file))
        return WFVAEModel(**{**WFVAE_CONFIGS[self.name], **self.overrides})


def load_pretrained(path_or_id: str, config_key: str = "model.pretrained") -> WFVAEModel:
    """from_pretrained of a save_pretrained dir, a training run or checkpoint (its EMA weights),
    or an HF id, failing with a message that names what is missing and the key to set."""
    if Path(path_or_id).exists():
        try:
            return WFVAEModel.from_pretrained(resolve_pretrained(path_or_id, "WF-VAE"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; set {config_key}") from None
    looks_local = path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1
    if looks_local or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"WF-VAE weights not found at {path_or_id!r} (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); "
            f"set {config_key} to a directory written by save_pretrained"
        )
    try:
        return WFVAEModel.from_pretrained(path_or_id)
    except OSError as exc:
        raise FileNotFoundError(
            f"could not load WF-VAE {path_or_id!r} from the Hugging Face hub ({exc}); "
            f"set {config_key} to a local directory written by save_pretrained"
        ) from exc
