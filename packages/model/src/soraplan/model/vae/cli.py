"""`soraplan-vae`: WF-VAE command line.

    soraplan-vae reconstruct in.mp4 out.mp4 --model.pretrained runs/vae/checkpoints/<tag>/vae_ema
    soraplan-vae reconstruct in.mp4 out.mp4 --model.name wfvae-tiny   # random weights (smoke test)
    soraplan-vae train --config pipelines/configs/vae_tiny.yaml max_steps=100   # one process

Reconstruction encodes and decodes in time chunks (exact, bounded memory) and prints the
PSNR/SSIM of the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from soraplan.core.config import load_config
from soraplan.core.video import fit_short_side, iter_frames, probe, write_video
from soraplan.model.vae.configs import WFVAEConfig
from soraplan.model.vae.metrics import psnr_uint8, ssim_uint8
from soraplan.model.vae.modeling_wfvae import WFVAEModel


@dataclass
class ReconstructConfig:
    model: WFVAEConfig = field(default_factory=WFVAEConfig)
    short_side: int | None = 256  # frames are scaled to this short side (and to a multiple of 8)
    max_frames: int | None = 65  # read at most this many frames (cut to 1 + 4n)
    chunk_frames: int = 16
    chunk_latents: int = 4
    dtype: str = "float32"


def load_video(
    path: str | Path, short_side: int | None, max_frames: int | None
) -> tuple[np.ndarray, float]:
    """Frames T x H x W x 3 uint8 with T = 1 + 4n and H, W multiples of 8; and the fps."""
    info = probe(path)
    w, h = fit_short_side(info.width, info.height, short_side)
    size = (w // 8 * 8, h // 8 * 8)
    frames = []
    for frame in iter_frames(path, size=size):
        frames.append(frame.image)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    keep = 1 + (len(frames) - 1) // 4 * 4
    return np.stack(frames[:keep]), info.fps


@torch.no_grad()
def reconstruct_frames(
    vae: WFVAEModel, frames: np.ndarray, chunk_frames: int, chunk_latents: int
) -> np.ndarray:
    dtype = next(vae.parameters()).dtype
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(dtype) / 127.5 - 1.0
    z = vae.encode(x, chunk_frames=chunk_frames).latent_dist.mode()
    y = vae.decode(z, chunk_latents=chunk_latents).sample
    return ((y[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()


def reconstruct(cfg: ReconstructConfig, src: str, dst: str) -> dict[str, float]:
    vae = cfg.model.build().to(getattr(torch, cfg.dtype)).eval()  # fails fast on missing weights
    frames, fps = load_video(src, cfg.short_side, cfg.max_frames)
    recon = reconstruct_frames(vae, frames, cfg.chunk_frames, cfg.chunk_latents)
    write_video(dst, recon, fps)
    return {
        "frames": len(frames),
        "psnr": psnr_uint8(frames, recon),
        "ssim": ssim_uint8(frames, recon),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="soraplan-vae",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("reconstruct", help="encode and decode a video")
    rec.add_argument("input")
    rec.add_argument("output")
    rec.add_argument("--config", help="YAML with ReconstructConfig fields")
    rec.add_argument("--model.pretrained", dest="pretrained")
    rec.add_argument("--model.name", dest="name")
    rec.add_argument("overrides", nargs="*", help="key.path=value")
    train = sub.add_parser(
        "train", help="train in this process (multi-process: pipelines/train_vae.py)"
    )
    train.add_argument("--config")
    train.add_argument("overrides", nargs="*")
    # key=value overrides may come before or after the options, which argparse cannot interleave.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.command == "train":
        from soraplan.model.vae.train import Trainer, TrainVAEConfig

        Trainer(load_config(TrainVAEConfig, args.config, args.overrides)).fit()
        return
    overrides = list(args.overrides)
    if args.pretrained:
        overrides.append(f"model.pretrained={args.pretrained}")
    if args.name:
        overrides.append(f"model.name={args.name}")
    cfg = load_config(ReconstructConfig, args.config, overrides)
    print(json.dumps(reconstruct(cfg, args.input, args.output)))


if __name__ == "__main__":
    main()
