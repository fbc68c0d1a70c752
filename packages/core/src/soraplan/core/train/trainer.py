"""The training loop every soraplan trainer shares.

A trainer subclasses `Trainer`: `build()` makes its data (first, so missing data fails before
any model is built), its models and DeepSpeed engines (`self.engines`, by name) and names the
module the EMA tracks (`self.ema_model`); it may shorten the run (`self.total_steps`, e.g. to
a number of epochs of its data); `train_step()` takes one optimizer step and returns scalars
to log. The base class does the rest the same way for every trainer:

- processes (`deepspeed` launcher, torchrun or plain python), torch threads, seeding;
- the loop to `steps` or `max_minutes`, with progress lines (step / total, steps/s, time left);
- EMA with warm-up; `metrics.jsonl` and TensorBoard scalars; `config.yaml`;
- atomic checkpoints `checkpoints/step_00000500/{<engine>/, ema/, train_state.json}` with a
  `latest` marker, and exact resume from them, also with another number of processes (see
  universal.py).

On CPU a resumed run reproduces the uninterrupted one when `train_step` draws its randomness
from (seed, step, rank), as every soraplan trainer does.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from soraplan.core.config import dump_yaml
from soraplan.core.progress import Progress
from soraplan.core.train.checkpoint import (
    CHECKPOINTS_DIR,
    EMA_DIR,
    atomic_write_text,
    checkpoint_tag,
    commit_checkpoint,
    latest_checkpoint,
    staging_dir,
)
from soraplan.core.train.config import OptimizerConfig, TrainerConfig, deepspeed_config
from soraplan.core.train.distributed import barrier, init_distributed, rank0_value
from soraplan.core.train.ema import EMA
from soraplan.core.train.universal import UNIVERSAL_DIR, convert_to_universal, saved_world_size

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.json"
TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


class Trainer:
    name = "train"  # shown in progress lines
    # False keeps frozen weights (a LoRA's base model) out of checkpoints: they come from the
    # base model on load.
    save_frozen = True
    progress_keys: tuple[str, ...] = ("loss", "lr")  # the stats progress lines show (all are logged)

    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        self.rank, self.world_size = init_distributed()
        on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        self.cpu_threads = None
        if not on_gpu:
            self.cpu_threads = cfg.threads_per_process()
            torch.set_num_threads(self.cpu_threads)
        self.bf16 = cfg.use_bf16(on_gpu)
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / CHECKPOINTS_DIR
        self.step = 0
        self.total_steps = cfg.steps  # where this run ends; build() may lower it
        self.budget_spent = 0.0  # share of max_minutes gone, as rank 0 measures it
        self.engines: dict[str, Any] = {}
        self.ema_model: torch.nn.Module | None = None
        self.resume_from = latest_checkpoint(self.ckpt_root) if cfg.checkpoint.resume else None
        # A ZeRO checkpoint of another process count loads only in universal form, and only into
        # engines built for it, so this is decided before build().
        saved_by = saved_world_size(self.resume_from) if self.resume_from else None
        self.load_universal = saved_by not in (None, self.world_size)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.build()
        self.ema = None
        if cfg.ema.enabled and self.ema_model is not None:
            self.ema = EMA(self.ema_model, cfg.ema.decay, cfg.ema.warmup).to(self.device)
        self.writer = None
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_yaml(cfg, self.out / CONFIG_FILE)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / TENSORBOARD_DIR))
        if self.resume_from is not None:
            self.resume(self.resume_from, saved_by)

    # --- what a trainer provides ---------------------------------------------------------------
    def build(self) -> None:
        """Build data, models and `self.engines`; set `self.ema_model` to the module to average."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One optimizer step at `self.step` (0-based); returns the scalars to log."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """JSON-safe state beyond the engines and the EMA that resume needs (e.g. a sampler)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def export(self, checkpoint: Path) -> None:
        """Rank 0, while a checkpoint is staged: extra artefacts to keep in it."""

    def after_step(self, stats: dict[str, float]) -> None:
        """Every rank, after each step's logging (e.g. sample videos at some cadence)."""

    # --- shared pieces ---------------------------------------------------------------------------
    def lr_scheduler(self, opt_cfg: OptimizerConfig, optimizer: Any) -> Any:
        """The learning-rate schedule of `optimizer`, over `total_steps` or the time budget."""
        return opt_cfg.build_scheduler(optimizer, self.total_steps, lambda: self.budget_spent)

    def deepspeed_config(self, micro_batch: int, grad_accum: int = 1) -> dict[str, Any]:
        return deepspeed_config(self.cfg, micro_batch, self.world_size, grad_accum, self.bf16,
                                self.load_universal)

    def initialize(self, model: torch.nn.Module, optimizer: Any, micro_batch: int,
                   grad_accum: int = 1, lr_scheduler: Any = None) -> Any:
        """A DeepSpeed engine for `model` with this trainer's config."""
        import deepspeed  # deferred: importing deepspeed costs seconds

        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
            config=self.deepspeed_config(micro_batch, grad_accum))
        return engine

    def log_scalars(self, stats: dict[str, float], prefix: str = "train") -> None:
        """Rank 0: one line of metrics.jsonl and TensorBoard scalars at the current step."""
        if self.rank != 0:
            return
        named = {k if prefix == "train" else f"{prefix}/{k}": v for k, v in stats.items()}
        with open(self.out / METRICS_FILE, "a") as fh:
            fh.write(json.dumps({"step": self.step, **named}) + "\n")
        for key, value in stats.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, self.step)

    def fit(self) -> list[dict[str, float]]:
        """Train to `total_steps` (or `max_minutes`), saving on the way and at the end; returns
        the logged scalars of this process."""
        cfg = self.cfg
        if self.rank == 0:
            params = sum(p.numel() for e in self.engines.values() for p in e.module.parameters())
            log.info("%s: %s parameters, %d process(es), %s threads each, from step %d of %d",
                     self.name, f"{params:,}", self.world_size, self.cpu_threads or "GPU", self.step,
                     self.total_steps)
        progress = Progress(self.total_steps, self.name, "step", initial=self.step, every=cfg.log_every,
                            enabled=self.rank == 0,
                            budget_s=None if cfg.max_minutes is None else 60 * cfg.max_minutes)
        history: list[dict[str, float]] = []
        started = time.monotonic()
        saved_at = self.step
        while self.step < self.total_steps:
            if cfg.max_minutes is not None:
                self.budget_spent = rank0_value((time.monotonic() - started) / (60 * cfg.max_minutes),
                                                self.device)
            if self.budget_spent >= 1:
                log.info("%s: time budget of %g min reached at step %d", self.name, cfg.max_minutes,
                         self.step)
                break
            stats = self.train_step()
            if self.ema is not None:
                self.ema.update(self.ema_model)
            self.step += 1
            history.append({"step": self.step, **stats})
            self.log_scalars(stats)
            progress.update(1, **{k: v for k, v in stats.items() if k in self.progress_keys})
            self.after_step(stats)
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                self.save()
                saved_at = self.step
        if saved_at != self.step or latest_checkpoint(self.ckpt_root) is None:
            self.save()
        progress.close()
        if self.writer is not None:
            self.writer.close()
        return history

    def save(self) -> Path:
        """Every rank writes its engine shards into a staging dir; rank 0 adds the EMA model,
        the train state and exports, then renames it into place and moves `latest`."""
        tag = checkpoint_tag(self.step)
        stage = staging_dir(self.ckpt_root, tag)
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(stage), tag=name, save_latest=False,
                                   exclude_frozen_parameters=not self.save_frozen)
        if self.rank == 0:
            if self.ema is not None:
                self.ema.save_pretrained(self.ema_model, stage / EMA_DIR)
            atomic_write_text(stage / TRAIN_STATE, json.dumps({"step": self.step, **self.extra_state()}))
            self.export(stage)
        barrier()
        if self.rank == 0:
            commit_checkpoint(self.ckpt_root, tag, keep_last=self.cfg.checkpoint.keep_last)
        barrier()
        return self.ckpt_root / tag

    def resume(self, path: Path, saved_by: int | None) -> None:
        """Load checkpoint `path`: engines (model and optimizer), EMA, step, state."""
        engines_dir = path
        if self.load_universal:
            if self.rank == 0:
                log.info("%s: %s was saved by %d processes, this run has %d: loading it as "
                         "DeepSpeed's universal checkpoint", self.name, path, saved_by,
                         self.world_size)
                convert_to_universal(path)
            barrier()
            engines_dir = path / UNIVERSAL_DIR
        for name, engine in self.engines.items():
            engine.load_checkpoint(str(engines_dir), tag=name, load_module_strict=self.save_frozen)
        if self.ema is not None:
            self.ema.load_pretrained(path / EMA_DIR)
        state = json.loads((path / TRAIN_STATE).read_text())
        self.step = state["step"]
        self.load_extra_state(state)
        log.info("%s: resumed from %s at step %d", self.name, path, self.step)
