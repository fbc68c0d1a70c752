"""Exponential moving average of a model's trainable parameters, with diffusers' warm-up.

The decay of update k is min(decay, (1 + s) / (10 + s)) with s = k - 1 (the first update copies
the weights), as diffusers' `EMAModel` without `use_ema_warmup`: a fixed 0.9999 from step 1
would leave a short run's EMA at its random initialisation. The shadow is float32. It is saved
as a model directory (`save_pretrained`: the model's config plus a safetensors file of every
tensor, EMA values for the tracked ones), so the EMA folder of a checkpoint loads with the
model class's `from_pretrained`, and resume reads the shadow back from the same file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

# The weights file diffusers' from_pretrained looks for.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        step = self.updates  # = k - 1 for the coming update k
        return 0.0 if step <= 0 else min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's tracked parameters with the averaged ones."""
        for name, p in model.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def save_pretrained(self, model: nn.Module, directory: str | os.PathLike[str]) -> Path:
        """`model`'s config and its tensors with the EMA values in place, as one model directory."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "save_config"):  # diffusers ConfigMixin
            model.save_config(directory)
        tensors = {name: self.shadow.get(name, t).detach().float().cpu().contiguous()
                   for name, t in model.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"ema_updates": str(self.updates)})
        return directory

    def load_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Restore the shadow (and the update count) from a directory `save_pretrained` wrote."""
        from safetensors import safe_open

        with safe_open(str(Path(directory) / WEIGHTS_NAME), framework="pt") as fh:
            missing = set(self.shadow) - set(fh.keys())
            if missing:
                raise KeyError(f"EMA weights in {directory} lack {sorted(missing)[:5]}")
            for name, t in self.shadow.items():
                t.copy_(fh.get_tensor(name))
            self.updates = int((fh.metadata() or {}).get("ema_updates", 0))
