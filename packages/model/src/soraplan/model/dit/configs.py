"""Named Skiparse DiT configs (the one registry) and the config dataclass that builds a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soraplan.core.config import ConfigError

if TYPE_CHECKING:  # importing diffusers costs seconds; the config needs it only to build
    from soraplan.model.dit.modeling_skiparse import SkiparseDiT

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
}


@dataclass
class DiTModelConfig:
    """Which DiT to build: `pretrained` if set, else the named config with `overrides`."""

    name: str = "skiparse-small"  # a key of DIT_CONFIGS
    overrides: dict[str, Any] = field(default_factory=dict)  # model kwargs on top of the name
    pretrained: str | None = None  # save_pretrained directory to start from instead
    # Recompute activations in the backward pass: saves memory on large models, and is pure cost
    # at small sizes on CPU.
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.pretrained is None and self.name not in DIT_CONFIGS:
            raise ConfigError(f"name: unknown DiT config {self.name!r}; "
                              f"known: {sorted(DIT_CONFIGS)}")

    def build(self) -> SkiparseDiT:
        from soraplan.model.dit.modeling_skiparse import SkiparseDiT

        self.validate()  # also for configs made in code
        if self.pretrained:
            if not Path(self.pretrained).is_dir():
                raise FileNotFoundError(f"DiT weights not found at {self.pretrained!r}; "
                                        "set model.pretrained to a save_pretrained directory")
            model = SkiparseDiT.from_pretrained(self.pretrained)
        else:
            model = SkiparseDiT(**{**DIT_CONFIGS[self.name], **self.overrides})
        if self.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model
