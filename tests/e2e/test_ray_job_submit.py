"""`ray job submit` of the curation job to a head started here on loopback, then stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from soraplan.core.schema import read_clip_table

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes_of(temp_dir: str) -> None:
    """Stop the Ray processes of the head started with this temp dir, and no others
    (`ray stop` would end every Ray cluster on the machine)."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    for proc in procs:
        proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        proc.kill()


@pytest.mark.heavy
def test_curation_via_ray_job_submit(tmp_path):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    gcs_port, dashboard_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths are limited
    subprocess.run(
        [RAY, "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
         "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, check=True, timeout=180,
    )
    try:
        out = tmp_path / "out"
        # The job's driver uses this checkout's venv as it is; on a cluster `uv run` builds one.
        runtime_env = {"env_vars": {"UV_PROJECT_ENVIRONMENT": str(REPO / ".venv")}}
        command = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
                   "--runtime-env-json", json.dumps(runtime_env), "--",
                   "uv", "run", "--no-sync", "soraplan-curate", "run", "--config", "pipelines/configs/curate.yaml",
                   "--input", str(REPO / "examples/panda70m_demo.csv"), "--out", str(out), "--address", "auto"]
        # The head's job agent comes up some time after `ray start` returns: seconds on an idle
        # machine, minutes on a loaded one.
        deadline = time.time() + 360
        while True:
            submit = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in submit.stderr or time.time() > deadline:
                break
            time.sleep(5)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout.lower()
        rows = read_clip_table(out).to_pylist()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["inputs"] == 4 and summary["rows"] == len(rows) > 4
        assert {r["source_id"].split(":")[0] for r in rows} == {"bikes", "bigbuckbunny", "subtitled"}
        assert all(Path(r["path"]).is_file() for r in rows)  # not into Ray's deleted copy of the working dir
        assert summary["kept"] >= 1 and summary["rejected_by_reason"].get("subtitles", 0) >= 1
    finally:
        stop_processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
