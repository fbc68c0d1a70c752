"""Config sections every trainer shares, and the DeepSpeed config they all build from them.

A trainer's config subclasses `TrainerConfig`, so every trainer reads the same keys:
`output_dir`, `steps`, `max_minutes`, `seed`, `precision`, `zero_stage`, `cpu_threads`,
`log_every`, and the sections `optimizer`, `ema` and `checkpoint`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from soraplan.core.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    UnitFloat,
    merge_into,
)


@dataclass
class OptimizerConfig:
    """AdamW, with a linear warm-up and then a constant, cosine or linear learning rate.

    The decay runs over the run's `steps`, or with `horizon: max_minutes` over the wall-time
    budget of this launch: a run that stops on its budget (a step count it cannot reach) still
    ends at `lr * min_lr_ratio`."""

    lr: PositiveFloat = 1e-4
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0
    grad_clip: NonNegativeFloat = 1.0  # max global gradient norm; 0: no clipping
    warmup_steps: NonNegativeInt = 0
    warmup_ratio: UnitFloat = 0.0  # warm-up as a share of the run's steps (instead of warmup_steps)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: UnitFloat = 0.0  # cosine and linear decay end at lr * min_lr_ratio
    horizon: Literal["steps", "max_minutes"] = "steps"  # what the decay spans

    def validate(self) -> None:
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("set warmup_steps or warmup_ratio, not both")

    def build(self, params: Any) -> Any:
        import torch

        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                 weight_decay=self.weight_decay)

    def lr_factor(self, step: int, total_steps: int, budget_spent: float = 0.0) -> float:
        """The learning rate of optimizer step `step` (0-based) as a multiple of `lr`;
        `budget_spent` is the share of the wall-time budget gone (for `horizon: max_minutes`)."""
        warmup = self.warmup_steps or round(self.warmup_ratio * total_steps)
        if step < warmup:
            return (step + 1) / warmup
        if self.schedule == "constant":
            return 1.0
        if self.horizon == "max_minutes":
            progress = min(1.0, budget_spent)
        else:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape

    def build_scheduler(self, optimizer: Any, total_steps: int,
                        budget_spent: Callable[[], float] = lambda: 0.0) -> Any:
        import torch

        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: self.lr_factor(s, total_steps, budget_spent()))


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: Annotated[float, Range(ge=0, lt=1)] = 0.9999
    warmup: bool = True  # decay min(decay, (1 + s) / (10 + s)) at update s, as diffusers' EMAModel


@dataclass
class CheckpointConfig:
    every: NonNegativeInt = 500  # optimizer steps between checkpoints; 0: only at the end
    keep_last: PositiveInt | None = 2  # None keeps them all
    resume: bool = True  # continue from <output_dir>/checkpoints/latest when there is one


@dataclass
class TrainerConfig:
    output_dir: str = "runs/train"
    steps: PositiveInt = 1000  # optimizer steps of the whole run (a resumed run continues to it)
    max_minutes: PositiveFloat | None = None  # stop (and save) after this much wall time
    seed: NonNegativeInt = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    zero_stage: Annotated[int, Range(ge=0, le=2)] = 2  # DeepSpeed ZeRO stage
    cpu_threads: PositiveInt | None = None  # torch threads per process on CPU; None: cores / local ranks
    log_every: PositiveInt = 10  # steps between progress lines (metrics.jsonl gets every step)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # Extra DeepSpeed settings merged over the generated config, e.g. {"zero_optimization":
    # {"offload_optimizer": {"device": "cpu"}}}.
    deepspeed: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        for f in fields(self):
            section = getattr(self, f.name)
            if isinstance(section, OptimizerConfig) and section.horizon == "max_minutes" \
                    and self.max_minutes is None:
                raise ConfigError(f"{f.name}.horizon is max_minutes but max_minutes is not set")

    def use_bf16(self, on_gpu: bool) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and on_gpu)

    def threads_per_process(self) -> int:
        """Torch threads on CPU: the configured number, else the cores shared by this node's ranks
        (threads of two processes fighting over shared cores wait on each other)."""
        if self.cpu_threads:
            return self.cpu_threads
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        return max(1, (os.cpu_count() or 1) // max(1, local_ranks))


def deepspeed_config(cfg: TrainerConfig, micro_batch: int, world_size: int, grad_accum: int = 1,
                     bf16: bool = False, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config of a trainer: batch sizes, ZeRO stage, clipping, precision, and
    whether checkpoints load from the universal form (see universal.py)."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "checkpoint": {"load_universal": load_universal},
    }
    merge_into(ds, cfg.deepspeed)
    return ds
