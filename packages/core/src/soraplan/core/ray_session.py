"""Every Ray job connects the same way and reads the same `ray:` config section."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable

from soraplan.core.config import ConfigError, NonNegativeFloat, PositiveFloat, PositiveInt

log = logging.getLogger(__name__)


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


def refuse_relative_paths_on_a_cluster(address: str | None, paths: Iterable[tuple[str, str | None]],
                                       models: Iterable[tuple[str, str | None]] = ()) -> None:
    """A job that joins a cluster runs in Ray's copy of the submitter's working dir (deleted with
    the job, absent on other nodes), so a relative path points into that copy: refuse it.
    `ray job submit` sets RAY_ADDRESS, so a job joins the cluster even without `ray.address`.
    `paths`: (flag or config key, value); `models`: the same for model settings, which may also
    be hub ids, so only a relative path that exists here counts."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address == "local":
        return
    relative = [(key, path) for key, path in paths if path and not os.path.isabs(path)]
    relative += [(key, path) for key, path in models if path and not os.path.isabs(path) and os.path.exists(path)]
    if relative:
        key, path = relative[0]
        raise ConfigError(f"{key} {path} is a relative path, and this job joins the Ray cluster at {address}, "
                          f"where it runs in a temporary copy of the working dir that other nodes lack and Ray "
                          f"deletes: give absolute paths on storage every node sees (e.g. \"$PWD/{path}\")")


class RayStartError(RuntimeError):
    """A local Ray instance could not be started; the message says what to try."""


def init_ray(address: str | None = None, num_cpus: int | None = None, attempts: int = 3,
             backoff_s: float = 2.0, log_to_driver: bool = True) -> ModuleType:
    """Import Ray with the project's settings and connect to `address` ("auto" for the cluster
    this job runs on), or start a local instance on loopback with `num_cpus` CPUs.
    `log_to_driver=False`: workers' output stays in Ray's log files, off this process's stderr."""
    # Ray reads these once, at import. Keep every Ray process on loopback, and let workers use
    # this interpreter and venv instead of Ray's `uv run` hook rebuilding a venv per job.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Under `ray job submit` the driver is told its cluster through RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # A local instance needs no token; a cluster keeps whatever auth mode it was started with.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return ray
    _start_local(ray, num_cpus, attempts, backoff_s, log_to_driver)
    return ray


def _start_local(ray: ModuleType, num_cpus: int | None, attempts: int, backoff_s: float,
                 log_to_driver: bool = True) -> None:
    """`ray.init` with retries: the raylet has a fixed start deadline that a busy CPU can miss.
    Each failed attempt's processes (GCS, raylet, dashboard, agents: children of this process
    that the attempt started) are stopped before the next, so they do not add to the load."""
    import psutil

    me = psutil.Process()
    failure: Exception | None = None
    for attempt in range(attempts):
        before = {p.pid for p in me.children(recursive=True)}
        try:
            # "local": a new instance even when /tmp/ray/ray_current_cluster names the cluster of
            # the last `ray start` on this machine (someone else's, or dead), which address=None
            # would join or hang on.
            context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                               log_to_driver=log_to_driver)
            # Where to find this instance's processes if the job is killed (docs/operations.md).
            log.info("local Ray session: %s", context.address_info["session_dir"])
            return
        except Exception as exc:  # noqa: BLE001 - every start failure is retried the same way
            failure = exc
            # Listed before the shutdown, which ends the raylet and orphans the agents it started.
            started = [p for p in me.children(recursive=True) if p.pid not in before]
            ray.shutdown()
            stop_processes(started)
            if attempt + 1 < attempts:
                time.sleep(backoff_s * 2**attempt)
    reason = " ".join(str(failure).split())[:300]
    raise RayStartError(
        f"a local Ray did not start in {attempts} attempts (last: {type(failure).__name__}: {reason}). "
        "The machine may be overloaded: retry when it is quieter, or start Ray once with "
        "`ray start --head` and run the job with --address auto.")


def stop_processes(processes: list[Any], timeout: float = 5.0) -> None:
    """Terminate psutil `processes`, and kill those still alive after `timeout` seconds."""
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
