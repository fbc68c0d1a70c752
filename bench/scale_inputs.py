"""Input planning and the job's end at Panda-70M scale: wall time, driver memory, rows/s. Prints JSON.

    uv run python bench/scale_inputs.py [--clips 100000 1000000] [--files 8] [--repeats 3]

For each size, writes synthetic Panda-70M manifests (`--files` CSVs, 10 spans a row over a few
small videos from `soraplan.core.testing.media`, 1% of the rows repeated in the next file, 0.1%
malformed) and an output folder where 10% of the clips are already done, then runs
`soraplan-curate run --plan-only` as a subprocess `--repeats` times on a local Ray of
`--num-cpus` CPUs. Per run: planning seconds (as the plan reports them, Ray start-up excluded),
the driver's peak RSS (VmHWM, polled), the largest RSS seen in any of the driver's descendants
(Ray workers: the planning tasks), and the load average at the start. Figures are medians with
[min, max].

The job's end (`finalize.finalize_output`: later copies of clip ids dropped, the summary counted)
is measured the same way on a synthetic output of as many result rows (files of 100k rows, 0.1%
of the rows repeated in the last file as a killed run's late write), from a driver process that
only starts a local Ray and finalizes. Target for both: the driver's peak RSS at the largest
size within 1.2x of the smallest, and under 1 GiB.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from _stats import spread
from soraplan.core.inputs import span_id
from soraplan.core.testing.media import make_video

REPO = Path(__file__).resolve().parents[1]
SPANS_PER_ROW = 10
VIDEOS = 3
MIB = 1 << 20


def _timestamp(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.000"


def write_dataset(root: Path, clips: int, files: int) -> Path:
    """Manifests under root/manifests, videos under root/videos, done ids under root/out/clips."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    for v in range(VIDEOS):
        make_video(videos / f"v{v}.mp4", shots=(1.0,), size=(64, 36), seed=v)
    (root / "manifests").mkdir()
    rows = clips // SPANS_PER_ROW
    per_file = -(-rows // files)
    done: list[str] = []
    for f in range(files):
        with open(root / "manifests" / f"part-{f:04d}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["videoID", "url", "timestamp", "caption", "matching_score"])
            first = f * per_file
            # The first 1% of a file's rows repeat rows of the previous file: duplicates across files.
            repeated = range(first - per_file, first - per_file + per_file // 100) if f else range(0)
            for r in [*repeated, *range(first, min(first + per_file, rows))]:
                video = f"v{r % VIDEOS}"
                starts = [r * SPANS_PER_ROW * 2 + 2 * j for j in range(SPANS_PER_ROW)]
                spans = [[_timestamp(s), _timestamp(s + 1)] for s in starts]
                if r % 1000 == 999:
                    spans = "[['0:00:01.000']"  # malformed: one error row
                captions = [f"clip {j} of row {r}: a person walks a dog along a quiet street at dusk"
                            for j in range(SPANS_PER_ROW)]
                writer.writerow([video, "", str(spans), str(captions), str([0.3] * SPANS_PER_ROW)])
                if r % 10 == 0 and r >= first:
                    done += [span_id(video, s, s + 1) for s in starts]
    (root / "out" / "clips").mkdir(parents=True)
    pq.write_table(pa.table({"source_id": done}), root / "out" / "clips" / "part-done.parquet")
    return root


RESULT_FILE_ROWS = 100_000
FINALIZE = """
import json, sys, time
from pathlib import Path
from soraplan.core.ray_session import init_ray
from soraplan.curation.analyze import AnalyzeConfig
from soraplan.curation.finalize import finalize_output
ray = init_ray(num_cpus=int(sys.argv[2]))
started = time.perf_counter()
counts = finalize_output(ray, Path(sys.argv[1]) / "clips", Path(sys.argv[1]) / "scratch", AnalyzeConfig())
print(json.dumps({"seconds": time.perf_counter() - started, "rows": counts["rows"],
                  "sources": counts["sources"], "later_copies": counts["later_copies"]}))
"""


def write_results(root: Path, rows: int) -> Path:
    """A curation output of `rows` result rows, 4 segments per source; the last file repeats
    0.1% of the rows."""
    out = root / "results"
    (out / "clips").mkdir(parents=True)
    map_type = pa.map_(pa.string(), pa.float64())
    starts = list(range(0, rows, RESULT_FILE_ROWS))
    for start in starts:
        n = min(RESULT_FILE_ROWS, rows - start)
        ids = range(start, start + n)
        if start == starts[-1]:
            ids = [*ids, *range(0, rows, 1000)]
        table = pa.table({
            "clip_id": [f"v{i // 4}:{i % 4}" for i in ids], "source_id": [f"v{i // 4}" for i in ids],
            "status": ["kept" if i % 3 else "rejected" for i in ids],
            "reject_reasons": [[] if i % 3 else ["static"] for i in ids],
            "error_stage": pa.nulls(len(ids), pa.string()),
            "stage_seconds": pa.array([[("cuts", 0.1), ("motion", 0.2)]] * len(ids), map_type),
            "motion_backend": ["flow"] * len(ids), "start_s": [0.0] * len(ids), "end_s": [2.0] * len(ids)})
        pq.write_table(table, out / "clips" / f"part-{start:012d}.parquet")
    return out


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd`; its stdout, wall seconds, the driver's peak RSS and its descendants' largest."""
    load = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": ""}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    driver = psutil.Process(proc.pid)
    peak = worker_peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) * 1024)
            for child in driver.children(recursive=True):
                worker_peak = max(worker_peak, child.memory_info().rss)
        except (OSError, StopIteration, psutil.Error):
            pass  # the process is exiting
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
    return {"stdout": out, "process_s": time.perf_counter() - started, "driver_peak_rss_mib": peak / MIB,
            "descendant_peak_rss_mib": worker_peak / MIB, "load_average_1_5_15": load}


def plan_once(root: Path, num_cpus: int) -> dict[str, Any]:
    run = measure([sys.executable, "-m", "soraplan.curation.cli", "run", "--config",
                   str(REPO / "pipelines/configs/curate.yaml"), "--input", str(root / "manifests" / "*.csv"),
                   "--out", str(root / "out"), f"video_root={root / 'videos'}", f"ray.local_num_cpus={num_cpus}",
                   "--plan-only"])
    plan = json.loads(run.pop("stdout"))
    return {"plan": plan, "plan_s": plan["seconds"], **run}


def finalize_once(out: Path, num_cpus: int) -> dict[str, Any]:
    run = measure([sys.executable, "-c", FINALIZE, str(out), str(num_cpus)])
    counts = json.loads(run.pop("stdout").splitlines()[-1])
    return {"counts": counts, "finalize_s": counts["seconds"], **run}


def bench_size(clips: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scale_inputs_") as tmp:
        root = write_dataset(Path(tmp), clips, args.files)
        manifest_mib = sum(p.stat().st_size for p in (root / "manifests").iterdir()) / MIB
        runs = [plan_once(root, args.num_cpus) for _ in range(args.repeats)]
        ends = []
        for _ in range(args.repeats):
            shutil.rmtree(Path(tmp) / "results", ignore_errors=True)  # each run drops the repeats anew
            ends.append(finalize_once(write_results(Path(tmp), clips), args.num_cpus))
    plan = runs[0]["plan"]
    return {
        "clips_requested": clips,
        "manifest_mib": round(manifest_mib, 1),
        "counts": {k: plan[k] for k in ("sources", "partitions", "inputs", "duplicates", "already_done", "todo",
                                        "input_errors")},
        "plan_s": spread([r["plan_s"] for r in runs]),
        "process_s": spread([r["process_s"] for r in runs]),
        "rows_per_s": round(plan["inputs"] / statistics.median(r["plan_s"] for r in runs)),
        "driver_peak_rss_mib": spread([r["driver_peak_rss_mib"] for r in runs]),
        "descendant_peak_rss_mib": spread([r["descendant_peak_rss_mib"] for r in runs]),
        "load_average_1_5_15": [r["load_average_1_5_15"] for r in runs],
        "job_end": {
            "counts": {k: v for k, v in ends[0]["counts"].items() if k != "seconds"},
            "finalize_s": spread([r["finalize_s"] for r in ends]),
            "rows_per_s": round(ends[0]["counts"]["rows"] / statistics.median(r["finalize_s"] for r in ends)),
            "driver_peak_rss_mib": spread([r["driver_peak_rss_mib"] for r in ends]),
            "descendant_peak_rss_mib": spread([r["descendant_peak_rss_mib"] for r in ends]),
            "load_average_1_5_15": [r["load_average_1_5_15"] for r in ends],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--files", type=int, default=8, help="manifest CSVs per size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of each run's local Ray")
    args = p.parse_args()
    sizes = [bench_size(n, args) for n in args.clips]
    peaks = [s["driver_peak_rss_mib"]["median"] for s in sizes]
    end_peaks = [s["job_end"]["driver_peak_rss_mib"]["median"] for s in sizes]
    result = {"num_cpus": args.num_cpus, "repeats": args.repeats, "sizes": sizes,
              "driver_peak_rss_ratio_largest_to_smallest": round(peaks[-1] / peaks[0], 3),
              "job_end_driver_peak_rss_ratio_largest_to_smallest": round(end_peaks[-1] / end_peaks[0], 3),
              "target": "ratio <= 1.2 and driver peak RSS < 1024 MiB"}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
