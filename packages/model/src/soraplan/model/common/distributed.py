"""Process-group setup that works under the `deepspeed` launcher, torchrun, or a bare `python`."""

from __future__ import annotations

import os
import socket

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
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
