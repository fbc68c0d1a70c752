"""Exponential moving average of a model's parameters, kept in float32 on the model's device."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copy of the trainable parameters: shadow <- decay * shadow + (1 - decay) * param.

    Only parameters with requires_grad are tracked (fixed filters such as wavelets never change).
    `state_dict` keys are the model's parameter names, so a shadow can be saved as safetensors
    and loaded straight into a fresh model with `copy_to`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's tracked parameters with the averaged ones."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        unexpected = set(state) - set(self.shadow)
        if missing or unexpected:
            raise KeyError(
                f"EMA state mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        for name, t in state.items():
            self.shadow[name].copy_(t)
