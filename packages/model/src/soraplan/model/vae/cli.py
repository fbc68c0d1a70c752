"""`soraplan-vae`: train WF-VAE and reconstruct videos with it.

    soraplan-vae reconstruct in.mp4 out.mp4 --model.pretrained runs/vae_tiny/checkpoints/step_00000400/ema
    soraplan-vae reconstruct in.mp4 out.mp4 --model.name wfvae-tiny   # random weights (smoke test)
    soraplan-vae reconstruct --shards out/curated --clips 16 recon/ --model.pretrained runs/vae_tiny
    soraplan-vae train --config pipelines/configs/vae_tiny.yaml data.video_dirs=[DIR] steps=100
    soraplan-vae latent-stats --vae runs/vae_tiny --shards out/curated --out models/wfvae
    soraplan-vae convert <upstream WF-VAE folder> OUT     # released weights -> ours

`train` runs in this process; several processes: `deepspeed pipelines/train_vae.py ...`.
Reconstruction encodes and decodes in time chunks (exact, bounded memory) and prints the
PSNR/SSIM of the result as JSON; with `--shards` it reconstructs kept clips of curated output into
a folder indexed like sampled videos (samples.jsonl: video, caption as prompt, PSNR, SSIM). `latent-stats` encodes a sample of clips and writes the VAE with
the per-channel mean and 1 / std of its latents as `shift_factor` / `scaling_factor`, so the
DiT trains on latents of zero mean and unit variance per channel.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from soraplan.core.cli import Command, console_main
from soraplan.core.config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveInt
from soraplan.core.outputs import write_sample_index
from soraplan.core.video import VideoDecodeError, fit_short_side, iter_frames, probe, write_video
from soraplan.core.train.checkpoint import resolve_pretrained
from soraplan.model.vae.configs import WFVAEConfig, load_pretrained
from soraplan.model.vae.data import VAEDataConfig, clips_from_shards
from soraplan.model.vae.metrics import psnr_uint8, ssim_uint8
from soraplan.model.vae.modeling_wfvae import WFVAEModel
from soraplan.model.vae.train import TrainVAEConfig, VAETrainer
from soraplan.model.upstream import convert_arguments


@dataclass
class ReconstructConfig:
    input: str | None = None  # video to reconstruct (first positional argument)
    output: str | None = None  # mp4 to write (second positional argument); a folder with `shards`
    shards: str | None = None  # instead of `input`: kept clips of this curated output (--shards)
    clips: PositiveInt = 16  # how many of them, spread evenly over the clip list (--clips)
    model: WFVAEConfig = field(default_factory=WFVAEConfig)
    short_side: PositiveInt | None = 256  # frames scaled to this short side (and multiples of 8)
    start_s: NonNegativeFloat = 0.0  # read from this time
    max_frames: PositiveInt | None = 65  # read at most this many frames (cut to 1 + 4n)
    chunk_frames: PositiveInt = 16
    chunk_latents: PositiveInt = 4
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"

    def validate(self) -> None:
        if self.short_side is not None and self.short_side < 8:
            raise ConfigError(f"short_side must be at least 8 (the VAE's spatial compression), "
                              f"got {self.short_side}")


def load_video(
    path: str | Path,
    short_side: int | None,
    max_frames: int | None,
    start_s: float = 0.0,
    crop: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, float]:
    """Frames T x H x W x 3 uint8 with T = 1 + 4n and H, W multiples of 8; and the fps.

    `crop` (x0, x1, y0, y1 in display pixels, a curated clip's box) is cut out first, and its
    short side is the one scaled to `short_side`."""
    info = probe(path)
    x0, x1, y0, y1 = crop or (0, info.width, 0, info.height)
    box_w, box_h = fit_short_side(x1 - x0, y1 - y0, short_side)
    scale = box_w / (x1 - x0)
    size = (round(info.width * scale), round(info.height * scale))
    left, top = round(x0 * scale), round(y0 * scale)
    frames = []
    for frame in iter_frames(path, start_s, size=size):
        frames.append(frame.image[top : top + box_h // 8 * 8, left : left + box_w // 8 * 8])
        if max_frames is not None and len(frames) >= max_frames:
            break
    if not frames:
        raise VideoDecodeError(f"no frames decoded from {path}")
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


def reconstruct(cfg: ReconstructConfig) -> dict[str, float]:
    if cfg.shards and cfg.input and not cfg.output:  # `--shards DIR OUT_DIR`: one positional
        cfg.input, cfg.output = None, cfg.input
    if cfg.shards and cfg.input:
        raise ConfigError("give either an input video or --shards, not both")
    if not cfg.output or not (cfg.input or cfg.shards):
        raise ConfigError("name the input video and the output file: soraplan-vae reconstruct IN OUT "
                          "(or --shards DIR OUT_DIR)")
    vae = cfg.model.build().to(getattr(torch, cfg.dtype)).eval()  # fails fast on missing weights
    if cfg.shards:
        return reconstruct_shards(cfg, vae)
    if not Path(cfg.input).is_file():
        raise FileNotFoundError(f"input video not found: {cfg.input}")
    try:
        frames, fps = load_video(cfg.input, cfg.short_side, cfg.max_frames, cfg.start_s)
    except VideoDecodeError as exc:
        raise ConfigError(f"input: {exc}") from None
    return reconstruct_file(cfg, vae, frames, fps, cfg.output)


def reconstruct_file(cfg: ReconstructConfig, vae: WFVAEModel, frames: np.ndarray, fps: float,
                     output: str | Path) -> dict[str, float]:
    recon = reconstruct_frames(vae, frames, cfg.chunk_frames, cfg.chunk_latents)
    write_video(output, recon, fps)
    return {
        "frames": len(frames),
        "psnr": psnr_uint8(frames, recon),
        "ssim": ssim_uint8(frames, recon),
    }


def reconstruct_shards(cfg: ReconstructConfig, vae: WFVAEModel) -> dict[str, float]:
    """Kept clips of a curated output, each from its start, into a folder of mp4s with an index."""
    if not Path(cfg.shards).is_dir():
        raise FileNotFoundError(f"curated output not found: {cfg.shards} (--shards)")
    clips = clips_from_shards(cfg.shards)
    if not clips:
        raise ConfigError(f"shards: no kept clips in {cfg.shards}")
    picked = clips[:: max(1, len(clips) // cfg.clips)][: cfg.clips]
    folder = Path(cfg.output)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, clip in enumerate(picked):
        name = f"{i:04d}.mp4"
        try:
            frames, fps = load_video(clip.path, cfg.short_side, cfg.max_frames, clip.start_s, clip.crop)
        except VideoDecodeError as exc:  # one bad clip is an error entry, not the end of the job
            entries.append({"video": name, "prompt": clip.caption or "", "seed": 0, "error": str(exc)})
            continue
        figures = reconstruct_file(cfg, vae, frames, fps, folder / name)
        entries.append({"video": name, "prompt": clip.caption or "", "seed": 0, "source": clip.path,
                        "start_s": clip.start_s, **figures})
    write_sample_index(folder, entries)
    done = [e for e in entries if "error" not in e]
    return {
        "clips": len(entries),
        "errors": len(entries) - len(done),
        "psnr": float(np.mean([e["psnr"] for e in done])) if done else float("nan"),
        "ssim": float(np.mean([e["ssim"] for e in done])) if done else float("nan"),
        "out": str(folder),
    }


def reconstruct_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", help="video to reconstruct")
    parser.add_argument("output", nargs="?", help="mp4 to write")
    parser.add_argument("--shards", help="reconstruct kept clips of this curated output (config: shards)")
    parser.add_argument("--clips", type=int, help="how many kept clips with --shards (config: clips)")
    parser.add_argument("--model.pretrained", dest="pretrained", help="save_pretrained directory, "
                        "e.g. a checkpoint's ema/ (config: model.pretrained)")
    parser.add_argument("--model.name", dest="name",
                        help="named config with random weights (config: model.name)")


@dataclass
class LatentStatsConfig:
    vae: str | None = None  # training output dir, checkpoint or save_pretrained dir (--vae)
    out: str | None = None  # where the VAE with its statistics is saved (--out); None: in place
    data: VAEDataConfig = field(default_factory=lambda: VAEDataConfig(batch_size=4))  # clips sampled
    batches: PositiveInt = 16  # batches of data.batch_size clips encoded
    seed: NonNegativeInt = 0


@torch.no_grad()
def latent_stats(cfg: LatentStatsConfig) -> dict[str, object]:
    """Per-channel mean and std of the posterior means of a sample of clips, saved into the
    VAE's config as shift_factor (mean) and scaling_factor (1 / std)."""
    if not cfg.vae:
        raise ConfigError("set the VAE to measure (--vae)")
    source = resolve_pretrained(cfg.vae, "WF-VAE") if Path(cfg.vae).exists() else Path(cfg.vae)
    vae = load_pretrained(str(source), config_key="--vae").eval()
    sampler = cfg.data.build(cfg.seed)  # fails on missing data before any encoding
    total = torch.zeros(vae.config.latent_channels, dtype=torch.float64)
    squares, count = torch.zeros_like(total), 0
    for step in range(cfg.batches):
        z = vae.encode(sampler.batch(step)).latent_dist.mode().double()
        total += z.sum(dim=(0, 2, 3, 4))
        squares += (z**2).sum(dim=(0, 2, 3, 4))
        count += z.numel() // z.shape[1]
    mean = total / count
    std = (squares / count - mean**2).clamp(min=1e-12).sqrt()
    vae.register_to_config(shift_factor=mean.tolist(), scaling_factor=(1 / std).tolist())
    out = Path(cfg.out) if cfg.out else source
    vae.save_pretrained(out)
    return {"out": str(out), "latents_per_channel": count, "mean": [round(v, 4) for v in mean.tolist()],
            "std": [round(v, 4) for v in std.tolist()]}


def latent_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", help="the VAE: a training run, checkpoint or save_pretrained dir")
    parser.add_argument("--out", help="folder to save the VAE with its statistics (default: in place)")
    parser.add_argument("--shards", nargs="+", help="curated output folders to sample (data.shard_dirs)")
    parser.add_argument("--videos", nargs="+", help="folders of videos to sample (data.video_dirs)")


def train(cfg: TrainVAEConfig, args: argparse.Namespace) -> None:
    VAETrainer(cfg).fit()


def convert(cfg: None, args: argparse.Namespace) -> dict[str, object]:
    from soraplan.model.vae.convert import convert_vae

    return convert_vae(args.source, args.out, args.config)


COMMANDS = [
    Command("train", "train WF-VAE in this process (several: deepspeed pipelines/train_vae.py)",
            train, TrainVAEConfig),
    Command("reconstruct", "encode and decode a video; prints PSNR and SSIM",
            lambda cfg, args: reconstruct(cfg), ReconstructConfig, reconstruct_arguments,
            {"input": "input", "output": "output", "shards": "shards", "clips": "clips",
             "pretrained": "model.pretrained",
             "name": "model.name"}),
    Command("latent-stats", "write per-channel latent mean and scale into the VAE's config",
            lambda cfg, args: latent_stats(cfg), LatentStatsConfig, latent_stats_arguments,
            {"vae": "vae", "out": "out", "shards": "data.shard_dirs", "videos": "data.video_dirs"}),
    Command("convert", "convert a released WF-VAE (PKU-YuanGroup/WF-VAE or Open-Sora-Plan v1.3's VAE) checkpoint into a save_pretrained folder",
            convert, arguments=convert_arguments),
]

main = console_main("soraplan-vae", __doc__, COMMANDS)

if __name__ == "__main__":
    main()
