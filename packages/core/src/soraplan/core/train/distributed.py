"""Process-group setup that works under the `deepspeed` launcher, torchrun, or a bare `python`."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
from pathlib import Path

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; returns (rank, world_size).

    Without a launcher, fills in a one-process world on loopback, since DeepSpeed otherwise
    looks for MPI. The backend is nccl on GPU and gloo on CPU (chosen by DeepSpeed).
    """
    # DeepSpeed JIT-builds an op at its first start (minutes on a small CPU) into one cache
    # folder per op name; environments at other paths rebuild it over each other. One per venv.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(
        Path.home() / ".cache" / "torch_extensions" / f"venv-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]}"))
    if not torch.cuda.is_available():
        # torch warns at deepspeed's import that a CPU machine has no CUDA runtime: noise before
        # the job's own output and its one-line errors.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import deepspeed  # deferred: importing deepspeed costs seconds

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
        )
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def rank0_value(value: float, device: torch.device) -> float:
    """Rank 0's `value` on every rank, so that ranks decide alike (and none enters a collective
    alone)."""
    tensor = torch.tensor([float(value)], device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks (the value itself in a one-process run)."""
    value = value.detach().float().clone()
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return value
