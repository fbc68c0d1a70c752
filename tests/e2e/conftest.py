"""A Ray head on loopback for the end-to-end tests, started with `ray start` and stopped by process
id (never `ray stop`, which ends every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from soraplan.core.ray_session import stop_processes

RAY = str(Path(sys.executable).with_name("ray"))
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """`ray start` processes of one cluster; `stop()` ends them and their children only."""

    ray_cli = RAY

    def __init__(self) -> None:
        self.env = {**os.environ, **RAY_ENV}
        self.temp_dir = tempfile.mkdtemp(prefix="raytest", dir="/tmp")  # short: socket paths are limited
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"

    def start_head(self, num_cpus: int, dashboard: bool = False) -> None:
        flags = ([f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1"] if dashboard
                 else ["--include-dashboard=false"])
        self._ray_start("--head", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}", *flags)

    def _ray_start(self, *flags: str) -> None:
        done = subprocess.run([RAY, "start", *flags, f"--temp-dir={self.temp_dir}", "--disable-usage-stats"],
                              env=self.env, timeout=240, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"ray start {' '.join(flags)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def _processes(self) -> list[psutil.Process]:
        """This cluster's daemons (their command lines name its temp dir) and all their children,
        including agents that rename themselves."""
        roots = [p for p in psutil.process_iter(["name", "cmdline"])
                 if self.temp_dir in " ".join(p.info["cmdline"] or [])]
        found = {p.pid: p for p in roots}
        for root in roots:
            try:
                found.update({c.pid: c for c in root.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def stop(self) -> None:
        stop_processes(self._processes(), timeout=20)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def ray_loopback_env(monkeypatch):
    """Ray's loopback settings in this process's environment, for Ray started in it."""
    for name, value in RAY_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def loopback_cluster():
    """Builds `LoopbackCluster`s and stops each at the end of the test."""
    clusters: list[LoopbackCluster] = []

    def make() -> LoopbackCluster:
        clusters.append(LoopbackCluster())
        return clusters[-1]

    yield make
    for cluster in clusters:
        cluster.stop()
