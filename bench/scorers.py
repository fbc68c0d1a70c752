"""Frames/s per model scorer on CPU, real architectures with random weights. Prints JSON.

    uv run python bench/scorers.py [--threads 2] [--batches 1 8 32] [--skip-clip]

- lpips: AlexNet LPIPS (the motion backend), frame pairs per second through `LpipsMotion`, on
  one clip of max(--batches) pairs at each batch size;
- aesthetic: open_clip ViT-L/14 + LAION MLP through `AestheticScorer`, frames per second;
- ocr: RapidOCR text detection (no batching: one image per call), frames per second.

Each batch size is timed after one warm-up call, best of `--repeats` (the machine is shared, and
the best run is the least disturbed one); ViT-L/14 is timed once per batch size so the run
stays bounded (it takes over a second per frame in fp32 on 2 cores). Frames are 640x360
random-texture images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _random_weights import save_random_aesthetic
from soraplan.curation.aesthetic import AestheticConfig
from soraplan.curation.motion import ALEXNET_FILE, MotionConfig
from soraplan.curation.ocr import OcrConfig


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (360, 640 + 4 * count, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[:, 4 * i : 4 * i + 640]) for i in range(count)]


def rate(count: int, fn: Any, *args: Any, repeats: int = 1) -> dict[str, float]:
    """Frames per wall second and per CPU second (summed over threads), best of `repeats` calls.

    CPU seconds barely change when other jobs share the cores; wall seconds do.
    """
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return {"per_wall_s": round(count / wall, 3), "per_cpu_s": round(count / cpu, 3)}


def bench_lpips(batches: list[int], tmp: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Every batch size scores the same clip of max(batches) frame pairs: batch 1 sends each
    pair's 2 frames through AlexNet, batch N sends N + 1 frames for N pairs."""
    import torch
    import torchvision

    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp / ALEXNET_FILE)
    pairs = max(batches)
    out = {}
    for batch in batches:
        backend = MotionConfig(backend="lpips", weights_dir=str(tmp), fetch_weights=False,
                               lpips_batch_size=batch).build()
        prepared = [backend.prepare(f) for f in frames(pairs + 1)]
        backend.distances(prepared[: batch + 1])  # warm-up
        out[f"batch_{batch}"] = rate(pairs, backend.distances, prepared, repeats=repeats)
    return out


def bench_aesthetic(batches: list[int], tmp: Path) -> dict[str, dict[str, float]]:
    clip = save_random_aesthetic(tmp)
    out = {}
    scorer = None
    for batch in batches:
        cfg = AestheticConfig(enabled=True, clip_pretrained=str(clip), weights_dir=str(tmp), batch_size=batch)
        if scorer is None:
            scorer = cfg.build()
            scorer.process([scorer.prepare(frames(1)[0])])  # warm-up
        scorer.cfg = cfg
        prepared = [scorer.prepare(f) for f in frames(batch)]
        out[f"batch_{batch}"] = rate(batch, scorer.process, prepared)
    return out


def bench_ocr(batches: list[int], threads: int, repeats: int) -> dict[str, dict[str, float]]:
    detector = OcrConfig(num_threads=threads).build()
    detector.boxes(frames(1)[0])  # warm-up
    out = {}
    for batch in batches:
        images = frames(batch)
        out[f"batch_{batch}"] = rate(batch, lambda: [detector.boxes(f) for f in images], repeats=repeats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch/onnxruntime threads")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per batch size (not for ViT-L/14)")
    p.add_argument("--skip-clip", action="store_true", help="skip ViT-L/14 (the slowest, about a minute)")
    args = p.parse_args()
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads, "unit": "frames/s (lpips: frame pairs/s)",
                              "load_average_1_5_15": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        result["lpips_alexnet"] = bench_lpips(args.batches, Path(tmp), args.repeats)
        if not args.skip_clip:
            result["aesthetic_vit_l14_mlp"] = bench_aesthetic(args.batches, Path(tmp))
    result["rapidocr_det"] = bench_ocr(args.batches, args.threads, args.repeats)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
