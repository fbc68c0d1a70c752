"""Curation throughput on ../shared/devset with the no-weights backends on local Ray. Prints JSON.

    uv run python bench/throughput.py [--num-cpus 2] [KEY=VALUE overrides]

- clips/s and video-seconds/s of the whole curation job (Ray already started, so its start-up
  is not counted);
- decodes per clip: full decoding passes the analyzer makes per input clip, counted by wrapping
  the decoder in-process on every clip (must be 1), and frames decoded per frame in the clip;
- the ratio of the job's wall time to a decode-only pass over the same frames (same actor
  pool, same analysis size). Target: <= 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _devset import devset_dir
from soraplan.curation import analyze
from soraplan.curation.analyze import ClipAnalyzer
from soraplan.curation.config import load_config
from soraplan.curation.inputs import read_inputs
from soraplan.curation.pipeline import CurateConfig, run
from soraplan.curation.ray_session import init_ray
from soraplan.curation.schema import read_clip_table
from soraplan.curation.video import fit_short_side, iter_frames, probe

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
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    videos = devset_dir() / "videos"
    out = Path(tempfile.mkdtemp(prefix="throughput_"))
    cfg = load_config(CurateConfig, REPO / "pipelines/configs/curate.yaml",
                      [f"input={videos}", f"out={out}", *args.overrides])
    clips = read_inputs(videos)
    ray = init_ray(num_cpus=args.num_cpus)

    started = time.perf_counter()
    summary = run(cfg)
    job_s = time.perf_counter() - started

    started = time.perf_counter()
    ds = ray.data.from_items([{"path": c.path} for c in clips], override_num_blocks=len(clips))
    decoded = ds.map_batches(DecodeOnly, fn_constructor_kwargs={"short_side": cfg.analyze.analysis_short_side},
                             batch_size=1, compute=ray.data.ActorPoolStrategy(size=cfg.ray.concurrency),
                             num_cpus=cfg.ray.num_cpus).sum("frames")
    decode_s = time.perf_counter() - started
    ray.shutdown()

    rows = read_clip_table(out).to_pylist()
    video_s = sum(r["end_s"] - r["start_s"] for r in rows if r["status"] != "error")
    result = {
        "clips": len(clips),
        "video_seconds": video_s,
        "frames": int(decoded),
        "job_wall_s": job_s,
        "clips_per_s": len(clips) / job_s,
        "video_seconds_per_s": video_s / job_s,
        "decode_only_wall_s": decode_s,
        "job_to_decode_ratio": job_s / decode_s,
        **count_decodes(cfg, clips),
        "stage_wall_seconds": summary["stage_wall_seconds"],
        "actors": cfg.ray.concurrency,
        "num_cpus": args.num_cpus,
        "motion_backend": cfg.analyze.motion.backend,
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
