"""The aesthetic stage in bf16 against fp32: speed-up and score drift on devset frames.

    uv run python bench/aesthetic_dtype.py [--frames 8] [--runs 3] [--threads 1]

Scores the middle frame of devset videos with ViT-L/14 + the LAION head in float32 and in
bfloat16, `--runs` rounds of both (one after the other in each round, so load drifts hit both),
and prints JSON: CPU seconds per frame of each (median and range), the bf16 speed-up taken within
each round, the drift of the scores and embeddings against fp32, what `dtype: auto` picks on this
machine, and the load average. CLIP weights need a model hub, so both load the same randomly
initialised weights (as bench/throughput.py --random-aesthetic): speed does not depend on the
values; the drift is that of a random ViT-L/14, a stand-in for the released one's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _devset import devset_dir
from _random_weights import RANDOM_AESTHETIC, save_random_aesthetic
from _stats import spread

from soraplan.curation.aesthetic import AestheticConfig, cpu_has_bf16_matrix_units, resolve_dtype

DTYPES = ("float32", "bfloat16")


def middle_frames(count: int) -> tuple[list[np.ndarray], list[str]]:
    """The middle frame (RGB) of the first `count` devset videos, in sorted path order."""
    frames, names = [], []
    for path in sorted(p for p in (devset_dir() / "videos").rglob("*") if p.suffix in (".mp4", ".mkv", ".webm", ".avi")):
        capture = cv2.VideoCapture(str(path))
        capture.set(cv2.CAP_PROP_POS_FRAMES, max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) // 2))
        ok, bgr = capture.read()
        capture.release()
        if ok:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            names.append(str(path.relative_to(devset_dir())))
        if len(frames) == count:
            break
    return frames, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU seconds are steadier with 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    frames, names = middle_frames(args.frames)
    result: dict = {"load_average_before": os.getloadavg(), "frames": len(frames), "threads": args.threads,
                    "weights": RANDOM_AESTHETIC,
                    "cpu_has_bf16_matrix_units": cpu_has_bf16_matrix_units(),
                    "auto_picks_on_this_machine": resolve_dtype("auto", torch.cuda.is_available())}
    with tempfile.TemporaryDirectory(prefix="aesthetic_dtype_") as tmp:
        clip = save_random_aesthetic(Path(tmp))
        scorers = {dtype: AestheticConfig(enabled=True, clip_pretrained=str(clip), weights_dir=tmp, dtype=dtype,
                                          batch_size=args.batch_size).build() for dtype in DTYPES}
        prepared = [scorers["float32"].prepare(f) for f in frames]
        seconds: dict[str, list[float]] = {d: [] for d in DTYPES}
        outputs = {}
        for _ in range(args.runs):
            for dtype in DTYPES:
                start = time.process_time()
                outputs[dtype] = scorers[dtype].process(prepared, with_embeddings=True)
                seconds[dtype].append((time.process_time() - start) / len(prepared))
    (fp32, e32), (bf16, e16) = outputs["float32"], outputs["bfloat16"]
    drift = np.abs(bf16 - fp32)
    cosine = (e32 * e16).sum(axis=1)
    result.update({
        "cpu_seconds_per_frame": {d: spread(seconds[d]) for d in DTYPES},
        "bf16_speedup": spread([a / b for a, b in zip(seconds["float32"], seconds["bfloat16"])], 3),
        "score_drift": {"mean_abs": round(float(drift.mean()), 5), "max_abs": round(float(drift.max()), 5),
                        "fp32_score_std_over_frames": round(float(fp32.std()), 5),
                        "rank_agreement": bool((np.argsort(fp32) == np.argsort(bf16)).all())},
        "embedding_cosine": {"min": round(float(cosine.min()), 5), "mean": round(float(cosine.mean()), 5)},
        "frame_files": names,
        "load_average_after": os.getloadavg(),
    })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
