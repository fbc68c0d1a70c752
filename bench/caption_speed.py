"""Clips/s and tokens/s of the `soraplan-caption` Ray job with a tiny LLaVA at batch 1 vs 8.

    uv run python bench/caption_speed.py                 # devset Panda-70M clips if present
    uv run python bench/caption_speed.py --synthetic 16  # synthetic clips only

The model is a tiny randomly initialised LLaVA (no weights can be downloaded here), so the
figures measure the job's machinery (decode tasks, actor pool, batching, generation loop), not
a 7B VLM. `wall` figures include actor start-up; `model` figures count only time inside
generate. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from soraplan.captioner.caption import CaptionJobConfig, run
from soraplan.captioner.prompts import PromptConfig
from soraplan.captioner.testing import build_tiny_llava, train_tokenizer
from soraplan.captioner.vlm import VLMConfig
from soraplan.core.ray_session import init_ray
from soraplan.core.video import write_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _devset import DEVSET  # noqa: E402

PROMPTS = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "prompts" / "caption.yaml"


def synthetic_clips(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        frames = np.full((48, 360, 640, 3), 40, np.uint8)
        y, c = rng.integers(0, 300), rng.integers(0, 255, 3)
        for t in range(48):
            frames[t, y : y + 60, (t * 10) % 560 : (t * 10) % 560 + 80] = c
        write_video(root / f"clip{i:03d}.mp4", frames, fps=24)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=0, help="use N synthetic clips instead of the devset")
    parser.add_argument("--clips", type=int, default=24, help="devset clips to caption")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Ray workers: no spinning threads on a shared CPU

    work = Path(tempfile.mkdtemp(prefix="caption_speed_"))
    panda = DEVSET / "videos" / "panda70m"
    if args.synthetic or not panda.is_dir():
        clips, source = synthetic_clips(work / "clips", args.synthetic or 16), "synthetic 640x360 2 s"
    else:
        clips = work / "clips"
        clips.mkdir()
        for video in sorted(panda.glob("*.mp4"))[: args.clips]:
            (clips / video.name).symlink_to(video)
        source = f"devset panda70m ({len(list(clips.iterdir()))} clips)"
    tokenizer = train_tokenizer([PROMPTS.read_text()] * 20, vocab_size=400)
    model = build_tiny_llava(work / "tiny_llava", tokenizer)
    init_ray(None)

    figures: dict[str, object] = {"clips": source, "model": "tiny random LLaVA (CLIP 2x32, LLaMA 2x32)",
                                  "max_new_tokens": args.max_new_tokens}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        cfg = CaptionJobConfig(input=str(clips), out=str(work / f"out_b{batch_size}"),
                               prompt=PromptConfig(file=str(PROMPTS), id="video_describe"))
        cfg.vlm = VLMConfig(model=str(model), dtype="float32", device="cpu")
        cfg.vlm.generation.max_new_tokens = args.max_new_tokens
        cfg.ray.batch_size, cfg.ray.num_cpus, cfg.decode_num_cpus = batch_size, 0.5, 0.25  # unequal: no fusion
        s = run(cfg)
        figures[f"batch_{batch_size}"] = {
            "captioned": s["captioned"], "errors": s["errors"],
            "wall_clips_per_s": s["clips_per_s"], "wall_tokens_per_s": s["tokens_per_s"],
            "model_clips_per_s": round(s["processed_this_run"] / s["model_seconds"], 2) if s["model_seconds"] else None,
            "model_tokens_per_s": s["model_tokens_per_s"], "generated_tokens": s["generated_tokens"],
            "wall_seconds": s["wall_seconds"],
        }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
