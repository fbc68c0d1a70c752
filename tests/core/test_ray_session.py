"""Local Ray start-up: failed attempts leave nothing running, and the last failure is one clear error."""

import contextlib
import select
import subprocess
import sys
import types

import psutil
import pytest

from soraplan.core.cli import Command, run_command
from soraplan.core.config import ConfigError
from soraplan.core.ray_session import RayStartError, _start_local, refuse_relative_paths_on_a_cluster


def test_failed_starts_are_cleaned_up_backed_off_and_reported(monkeypatch):
    raylets, agents, sleeps = [], [], []
    sleeper = "import time; time.sleep(60)"

    def failing_init(**kwargs):
        # What a timed-out start leaves behind: a "raylet" this process started, and its "agent".
        raylets.append(subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; "
                                         f"subprocess.Popen([sys.executable, '-c', {sleeper!r}]); {sleeper}"]))
        while not psutil.Process(raylets[-1].pid).children():
            select.select([], [], [], 0.05)  # not time.sleep, which the test records
        agents.extend(psutil.Process(raylets[-1].pid).children())
        raise TimeoutError("The raylet did not start in time")

    def shutdown():  # as ray.shutdown: ends the raylet, which orphans its agents
        for raylet in raylets:
            raylet.kill()
            raylet.wait()

    fake_ray = types.SimpleNamespace(init=failing_init, shutdown=shutdown)
    monkeypatch.setattr("soraplan.core.ray_session.time.sleep", sleeps.append)
    with pytest.raises(RayStartError, match=r"did not start in 3 attempts .*TimeoutError: The raylet"):
        _start_local(fake_ray, num_cpus=2, attempts=3, backoff_s=1.0)
    assert sleeps == [1.0, 2.0]
    assert len(agents) == 3
    for agent in agents:  # orphaned by the shutdown, and still stopped
        with contextlib.suppress(psutil.NoSuchProcess):
            assert agent.wait(timeout=10) is not None or agent.status() == psutil.STATUS_ZOMBIE


def test_the_cli_reports_a_ray_start_failure_in_one_line_with_exit_3(capsys):
    def job(cfg, args):
        raise RayStartError("a local Ray did not start in 3 attempts")

    assert run_command("soraplan-x", "d", Command("run", "h", job), []) == 3
    assert capsys.readouterr().err == "soraplan-x: a local Ray did not start in 3 attempts\n"


def test_a_local_start_is_a_new_instance_and_logs_its_session_dir(caplog):
    calls = []

    def init(**kwargs):  # address=None would join the last `ray start` cluster of the machine
        calls.append(kwargs)
        return types.SimpleNamespace(address_info={"session_dir": "/tmp/ray/session_x_123"})

    with caplog.at_level("INFO", logger="soraplan.core.ray_session"):
        _start_local(types.SimpleNamespace(init=init), num_cpus=2, attempts=1, backoff_s=0)
    assert calls == [{"address": "local", "num_cpus": 2, "include_dashboard": False, "log_to_driver": True}]
    assert "local Ray session: /tmp/ray/session_x_123" in caplog.text


def test_only_a_cluster_job_refuses_relative_paths(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "vlm").mkdir(parents=True)
    for address in (None, "local"):  # a local Ray runs here: relative paths are fine
        refuse_relative_paths_on_a_cluster(address, [("--input", "in.csv")], models=[("vlm.model", "models/vlm")])
    refuse_relative_paths_on_a_cluster("auto", [("--input", str(tmp_path / "in.csv")), ("--out", None)],
                                       models=[("vlm.model", "org/hub-model")])  # a hub id, not a folder here
    with pytest.raises(ConfigError, match=r"vlm.model models/vlm is a relative path.*\$PWD/models/vlm"):
        refuse_relative_paths_on_a_cluster("auto", [], models=[("vlm.model", "models/vlm")])
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:6379")  # what `ray job submit` sets for its job
    with pytest.raises(ConfigError, match="--out out is a relative path, and this job joins the Ray cluster at http"):
        refuse_relative_paths_on_a_cluster(None, [("--out", "out")])
