"""A curation job on a two-node Ray cluster loses its worker node mid-run (the node's raylet is
killed by its process id) and still accounts for every input, with the same clip ids as an
undisturbed run.

The two nodes are Ray's own test cluster (`ray.cluster_utils.Cluster`: a head and a worker node,
each with its own raylet and resources, on loopback). `ray start` cannot build this on one
machine: it starts a worker node only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, which also
rewrites 127.0.0.1 to the machine's network address, so the node never reaches a loopback head."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from soraplan.core.schema import read_clip_table, shard_files

REPO = Path(__file__).resolve().parents[2]
CURATE = str(Path(sys.executable).with_name("soraplan-curate"))
WORKER_RESOURCE = "soraplan_test_worker"
VIDEOS = 12


def curate(address: str, videos: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [CURATE, "run", "--config", str(REPO / "pipelines/configs/curate.yaml"), "--input", str(videos),
         "--out", str(out), "--address", address, "rows_per_file=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(job: subprocess.Popen, out: Path) -> dict:
    _, stderr = job.communicate(timeout=1200)
    assert job.returncode == 0, stderr[-3000:]
    # Not stdout: the driver also prints the cluster's worker logs there.
    summary = json.loads((out / "summary.json").read_text())
    rows = read_clip_table(out, columns=["clip_id", "source_id", "status"]).to_pylist()
    ids = [r["clip_id"] for r in rows]
    return {"summary": summary, "ids": ids, "sources": {r["source_id"].split(":")[0] for r in rows},
            "errors": sum(r["status"] == "error" for r in rows)}


def analyzer_on(raylet: psutil.Process) -> bool:
    """Whether an analyzer actor runs under this raylet (actors are the raylet's children)."""
    try:
        return any("_RayClipAnalyzer" in " ".join(c.cmdline()) for c in raylet.children(recursive=True))
    except psutil.NoSuchProcess:
        return False


@pytest.mark.heavy
@pytest.mark.timeout(2400)
def test_worker_node_lost_mid_job_loses_no_clip(tmp_path, media, ray_loopback_env):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(VIDEOS):
        shutil.copy(media["three_shots"] if i % 2 else media["moving"], videos / f"v{i:02d}.mp4")
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before its loopback settings"
    cluster, worker = start_two_nodes(Cluster)
    try:
        run_and_lose_worker(cluster.address, worker.all_processes["raylet"][0].process.pid, videos, tmp_path)
    finally:
        cluster.shutdown()


def start_two_nodes(cluster_class, attempts: int = 3):
    """A head and a worker node. Ray gives a node 30 s to register, which a loaded machine can
    miss: a failed attempt is shut down and retried."""
    for attempt in range(attempts):
        cluster = cluster_class()
        try:
            # Spread actors over the nodes instead of packing the head first, so the worker gets
            # one; and declare a lost node dead within seconds.
            cluster.add_node(num_cpus=2, _system_config={
                "scheduler_spread_threshold": 0.0, "health_check_period_ms": 1000,
                "health_check_failure_threshold": 5})
            return cluster, cluster.add_node(num_cpus=2, resources={WORKER_RESOURCE: 1})
        except Exception:
            cluster.shutdown()
            if attempt + 1 == attempts:
                raise
            time.sleep(10 * (attempt + 1))


def run_and_lose_worker(address: str, raylet_pid: int, videos: Path, tmp_path: Path) -> None:
    undisturbed = finish(curate(address, videos, tmp_path / "undisturbed"), tmp_path / "undisturbed")

    out = tmp_path / "disturbed"
    job = curate(address, videos, out)
    raylet = psutil.Process(raylet_pid)
    deadline = time.time() + 600
    while not (analyzer_on(raylet) and (out / "clips").is_dir() and shard_files(out / "clips")):
        assert job.poll() is None, "the job finished before the worker node could be lost"
        assert time.time() < deadline, "no analyzer actor ever ran on the worker node"
        time.sleep(0.5)
    written_before_loss = len(shard_files(out / "clips"))
    os.kill(raylet_pid, signal.SIGKILL)
    disturbed = finish(job, out)

    figures = {"inputs": VIDEOS, "rows": len(disturbed["ids"]), "rows_undisturbed": len(undisturbed["ids"]),
               "result_files_before_node_loss": written_before_loss,
               "duplicates": len(disturbed["ids"]) - len(set(disturbed["ids"])),
               "lost": len(set(undisturbed["ids"]) - set(disturbed["ids"])),
               "errors": disturbed["errors"]}
    print("node loss figures:", json.dumps(figures))
    assert written_before_loss < VIDEOS, "the node was lost only after the work was done"
    assert len(disturbed["sources"]) == VIDEOS and disturbed["sources"] == undisturbed["sources"]
    assert figures["duplicates"] == 0 and figures["lost"] == 0 and figures["errors"] == 0
    assert set(disturbed["ids"]) == set(undisturbed["ids"])
    summary = disturbed["summary"]
    assert summary["inputs"] == VIDEOS and summary["rows"] == len(disturbed["ids"])
    assert summary["kept"] + summary["rejected"] + summary["errors"] == summary["rows"]
