"""Named DiT configs (the one registry) and the config dataclass that builds a model.

A config's `layout` picks the model class: `skiparse` (Open-Sora-Plan v1.3's SkiparseDiT, the
default) or `stdit` (Open-Sora v1's STDiT; with temporal=False its PixArt-alpha image model)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soraplan.core.config import ConfigError

if TYPE_CHECKING:  # importing diffusers costs seconds; the config needs it only to build
    from diffusers.models.modeling_utils import ModelMixin

# Parameter counts: `python bench/param_counts.py`.
DIT_CONFIGS: dict[str, dict[str, Any]] = {
    # Open-Sora-Plan v1.3 "2.7B": 32 layers, 24 heads x 96, mT5-XXL text states (4096), k=4.
    "skiparse-2.7b": dict(num_layers=32, num_heads=24, head_dim=96, text_dim=4096, sparse_k=4),
    # The same with Open-Sora-Plan v1.3's layers, into which `soraplan-dit convert` loads its
    # released weights: cross-attention on raw hidden states, RoPE pairs in halves of each third.
    "skiparse-osp-v1.3": dict(num_layers=32, num_heads=24, head_dim=96, text_dim=4096, sparse_k=4,
                              cross_attn_norm=False, rope_pairing="halves"),
    "skiparse-small": dict(num_layers=12, num_heads=12, head_dim=64, text_dim=4096, sparse_k=4),
    # The toy world's DiT: 8-channel WF-VAE latents of 64x64 shots (5 x 8 x 8), patches of 2x2
    # -> 80 tokens; a small T5-class text encoder (64); skiparse k=2 between full first and last
    # layers.
    "skiparse-toy": dict(in_channels=8, num_layers=4, num_heads=4, head_dim=32, text_dim=64,
                         sparse_k=2, full_layers=[0, -1]),
    "tiny": dict(in_channels=4, num_layers=4, num_heads=2, head_dim=16, text_dim=32, sparse_k=2,
                 full_layers=[0, -1]),
    # Open-Sora v1 STDiT-XL/2: 28 layers, hidden 1152 (16 x 72), patch 1x2x2, T5-XXL states
    # (4096, 120 tokens), 4-channel image-VAE latents, learned variance; published 724M
    # parameters, 580M for the PixArt-alpha image model before the temporal layers. Block order
    # as Open-Sora v1.0's code (temporal attention right after spatial).
    "stdit-xl-2": dict(layout="stdit", in_channels=4, num_layers=28, num_heads=16, head_dim=72,
                       text_dim=4096, block_order="spatial_temporal_cross"),
    "pixart-xl-2": dict(layout="stdit", in_channels=4, num_layers=28, num_heads=16, head_dim=72,
                        text_dim=4096, temporal=False),
    # The toy world's Open-Sora path (its 8-channel WF-VAE latents, the 64-wide toy T5).
    "stdit-toy": dict(layout="stdit", in_channels=8, num_layers=4, num_heads=4, head_dim=32,
                      text_dim=64),
    "pixart-toy": dict(layout="stdit", in_channels=8, num_layers=4, num_heads=4, head_dim=32,
                       text_dim=64, temporal=False),
    "stdit-tiny": dict(layout="stdit", in_channels=4, num_layers=2, num_heads=2, head_dim=16,
                       text_dim=32),
    "pixart-tiny": dict(layout="stdit", in_channels=4, num_layers=2, num_heads=2, head_dim=16,
                        text_dim=32, temporal=False),
}


def model_class(layout: str) -> type[ModelMixin]:
    if layout == "stdit":
        from soraplan.model.dit.modeling_stdit import STDiT

        return STDiT
    from soraplan.model.dit.modeling_skiparse import SkiparseDiT

    return SkiparseDiT


def load_dit(path: str | Path) -> ModelMixin:
    """A save_pretrained DiT directory, of whichever class saved it."""
    name = json.loads((Path(path) / "config.json").read_text()).get("_class_name")
    return model_class("stdit" if name == "STDiT" else "skiparse").from_pretrained(str(path))


@dataclass
class DiTModelConfig:
    """Which DiT to build: `pretrained` if set, else the named config with `overrides`;
    `init_from` then loads weights only (no optimizer state) of another run (a previous stage)."""

    name: str = "skiparse-small"  # a key of DIT_CONFIGS
    overrides: dict[str, Any] = field(default_factory=dict)  # model kwargs on top of the name
    pretrained: str | None = None  # save_pretrained directory to start from instead
    # Weights to start from: a training run, checkpoint or save_pretrained dir, a .safetensors or
    # torch file; for an STDiT also an image DiT (PixArt-alpha layout), its temporal attention
    # then starting with a zero output projection.
    init_from: str | None = None
    # Recompute activations in the backward pass: saves memory on large models, and is pure cost
    # at small sizes on CPU.
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.pretrained is None and self.name not in DIT_CONFIGS:
            raise ConfigError(f"name: unknown DiT config {self.name!r}; "
                              f"known: {sorted(DIT_CONFIGS)}")

    def build(self) -> ModelMixin:
        self.validate()  # also for configs made in code
        if self.init_from and not Path(self.init_from).exists():
            raise FileNotFoundError(f"weights to start from not found at {self.init_from!r}; "
                                    "set model.init_from to a run, checkpoint or weights file")
        if self.pretrained:
            if not Path(self.pretrained).is_dir():
                raise FileNotFoundError(f"DiT weights not found at {self.pretrained!r}; "
                                        "set model.pretrained to a save_pretrained directory")
            model = load_dit(self.pretrained)
        else:
            kwargs = {**DIT_CONFIGS[self.name], **self.overrides}
            model = model_class(kwargs.pop("layout", "skiparse"))(**kwargs)
        if self.init_from:
            self.load_init_weights(model)
        if self.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    def load_init_weights(self, model: ModelMixin) -> None:
        from soraplan.model.dit.modeling_stdit import STDiT, init_from_image_dit, read_state_dict

        try:
            if isinstance(model, STDiT):
                init_from_image_dit(model, self.init_from)
            else:
                model.load_state_dict(read_state_dict(self.init_from))
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            raise ConfigError(f"model.init_from: {exc}") from None
