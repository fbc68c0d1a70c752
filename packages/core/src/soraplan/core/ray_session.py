"""Every Ray job connects the same way and reads the same `ray:` config section."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

from soraplan.core.config import NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass
class RayConfig:
    """The `ray:` section of every Ray job: where it runs and what its model actors reserve."""

    address: str | None = None  # None: start a local Ray on loopback; "auto": join this cluster
    concurrency: PositiveInt = 1  # actors of the job's model stage (e.g. one per GPU)
    batch_size: PositiveInt = 1  # rows per actor call
    num_cpus: PositiveFloat | None = None  # per actor; None: the job's own default
    num_gpus: NonNegativeFloat | None = None  # per actor; None: the job's own default
    local_num_cpus: PositiveInt | None = None  # CPUs of a local instance (default: all)

    def init(self) -> ModuleType:
        return init_ray(self.address, self.local_num_cpus)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> ModuleType:
    """Import Ray with the project's settings and connect to `address` ("auto" for the cluster
    this job runs on), or start a local instance on loopback with `num_cpus` CPUs."""
    # Ray reads these once, at import. Keep every Ray process on loopback, and let workers use
    # this interpreter and venv instead of Ray's `uv run` hook rebuilding a venv per job.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if not address:
        # A local instance needs no token; a cluster keeps whatever auth mode it was started with.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address)
        return ray
    for attempt in range(3):  # the raylet has a fixed start deadline that a busy CPU can miss
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
            return ray
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    return ray
