"""Local Ray start-up: failed attempts leave nothing running, and the last failure is one clear error."""

import subprocess
import sys
import types

import psutil
import pytest

from soraplan.core.cli import Command, run_command
from soraplan.core.ray_session import RayStartError, _start_local


def test_failed_starts_are_cleaned_up_backed_off_and_reported(monkeypatch):
    started, sleeps = [], []

    def failing_init(**kwargs):
        # What a timed-out start leaves behind: processes this one started.
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        raise TimeoutError("The raylet did not start in time")

    fake_ray = types.SimpleNamespace(init=failing_init, shutdown=lambda: None)
    monkeypatch.setattr("time.sleep", sleeps.append)
    with pytest.raises(RayStartError, match=r"did not start in 3 attempts .*TimeoutError: The raylet"):
        _start_local(fake_ray, num_cpus=2, attempts=3, backoff_s=1.0)
    assert sleeps == [1.0, 2.0]
    for process in started:
        assert process.wait(timeout=10) is not None  # stopped before the next attempt
    assert not [p for p in psutil.Process().children() if p.pid in {s.pid for s in started}]


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
    assert calls == [{"address": "local", "num_cpus": 2, "include_dashboard": False}]
    assert "local Ray session: /tmp/ray/session_x_123" in caplog.text
