"""Resuming a ZeRO checkpoint with another number of processes.

ZeRO-1/2 saves the optimizer state as one shard per process, and DeepSpeed loads those shards only
into as many processes as wrote them. Its universal checkpoint is the form without a process
count: one folder per parameter with its fp32 weights and Adam moments. When the count changed,
the trainer converts the checkpoint once, into `<checkpoint>/universal/<engine>/`, and builds its
engines to load that (`checkpoint.load_universal` in the DeepSpeed config).

A universal load restores parameters and optimizer state, not the module's buffers; soraplan's
models have no buffer that training changes (GroupNorm, not BatchNorm; constant wavelet filters).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

UNIVERSAL_DIR = "universal"  # in a checkpoint: its engines converted to DeepSpeed's universal form
STAGING_DIR = ".universal-staging"  # a conversion in progress; renamed to UNIVERSAL_DIR when done
ZERO_SHARDS = "*zero_pp_rank_*_optim_states.pt"  # in an engine's folder, one per saving process


def zero_engines(checkpoint: Path) -> list[Path]:
    """The engine folders of `checkpoint` saved under ZeRO-1/2 (ZeRO-0 keeps the optimizer
    whole, so any number of processes loads it)."""
    return sorted(p for p in checkpoint.iterdir() if p.is_dir() and any(p.glob(ZERO_SHARDS)))


def saved_world_size(checkpoint: Path) -> int | None:
    """The number of processes that saved `checkpoint`'s ZeRO engines; None without any."""
    return max((len(list(p.glob(ZERO_SHARDS))) for p in zero_engines(checkpoint)), default=None)


def convert_to_universal(checkpoint: Path) -> None:
    """Write the ZeRO engines of `checkpoint` to `<checkpoint>/universal/` unless an earlier run
    did. Call it on one process; the others must wait for it."""
    from deepspeed.checkpoint import ds_to_universal  # deferred: importing deepspeed costs seconds

    done = checkpoint / UNIVERSAL_DIR
    if done.is_dir():
        return
    stage = checkpoint / STAGING_DIR
    shutil.rmtree(stage, ignore_errors=True)  # left by a run killed mid-conversion
    for engine in zero_engines(checkpoint):
        # The arguments of `python -m deepspeed.checkpoint.ds_to_universal`, in one process (no
        # worker pool). Our engines record no universal-checkpoint info: inject the default.
        ds_to_universal.main(argparse.Namespace(
            input_folder=str(engine), output_folder=str(stage / engine.name),
            num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
            inject_missing_state=True))
    stage.rename(done)
