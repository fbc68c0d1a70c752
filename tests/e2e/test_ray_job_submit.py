"""`ray job submit` of the curation job to a head started here on loopback, then stopped."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from soraplan.core.schema import read_clip_table

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.heavy
def test_curation_via_ray_job_submit(tmp_path, loopback_cluster):
    cluster = loopback_cluster()
    cluster.start_head(num_cpus=2, dashboard=True)
    env, dashboard_port = cluster.env, cluster.dashboard_port
    out = tmp_path / "out"
    # The job's driver uses this checkout's venv as it is; on a cluster `uv run` builds one.
    runtime_env = {"env_vars": {"UV_PROJECT_ENVIRONMENT": str(REPO / ".venv")}}
    command = [cluster.ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
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
