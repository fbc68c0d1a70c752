"""`soraplan-sample`: text-to-video with a trained Skiparse DiT, decoded by WF-VAE.

    soraplan-sample --checkpoint runs/dit_small --vae checkpoints/wfvae \
        --text-encoder google/mt5-xxl --prompt "a red kite over the sea" --out kite.mp4 \
        --frames 29 --height 256 --width 256 --steps 50 --cfg 7.5 --seed 0

--checkpoint takes a training output dir, its checkpoints/ dir, one checkpoint (its EMA weights
are used), or any SkiparseDiT save_pretrained directory. Every option is also a config key
(`--text-encoder` is `text_encoder`), so `--config` YAML and key=value overrides work too.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from soraplan.core.cli import Command, console_main
from soraplan.core.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from soraplan.core.train.checkpoint import latest_checkpoint
from soraplan.core.train.trainer import CHECKPOINTS_DIR, EMA_DIR


@dataclass
class SampleConfig:
    checkpoint: str | None = None  # training output dir, checkpoint, or save_pretrained dir
    prompt: str | None = None
    out: str = "sample.mp4"
    vae: str | None = None  # WF-VAE save_pretrained directory
    text_encoder: str = "google/mt5-xxl"  # HF id or local T5/mT5 directory
    text_cache: str | None = None  # TextEmbeddingCache dir; used before the text encoder
    max_text_length: PositiveInt = 512
    frames: PositiveInt = 29  # 1 + 4n
    height: PositiveInt = 256
    width: PositiveInt = 256
    steps: PositiveInt = 50
    cfg: NonNegativeFloat = 7.5  # classifier-free guidance scale
    seed: NonNegativeInt = 0
    fps: PositiveFloat = 16.0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when there is a GPU


def resolve_model_dir(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    for root in (path / CHECKPOINTS_DIR, path):
        latest = latest_checkpoint(root)
        if latest is not None:
            path = latest
            break
    if (path / EMA_DIR / "config.json").is_file():
        return path / EMA_DIR
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"no DiT weights under {str(checkpoint)!r}; set --checkpoint to a "
                            "training output dir, a checkpoint, or a save_pretrained directory")


def encode_prompts(cfg: SampleConfig, prompts: list[str],
                   device: str) -> tuple[torch.Tensor, torch.Tensor]:
    from soraplan.model.dit.text import TextEmbeddingCache, TextEncoderConfig

    if cfg.text_cache is not None:
        cache = TextEmbeddingCache(cfg.text_cache)
        if not cache.missing(prompts):
            return cache.get(prompts)
    encoder = TextEncoderConfig(cfg.text_encoder, cfg.max_text_length).build(device)
    states, mask = encoder.encode(prompts)
    del encoder  # the DiT needs the memory more
    return states, mask


def sample(cfg: SampleConfig) -> Path:
    from soraplan.core.video import write_video
    from soraplan.model.dit.codec import load_wfvae_codec
    from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents
    from soraplan.model.dit.modeling_skiparse import SkiparseDiT

    missing = [f"--{f.replace('_', '-')}" for f in ("checkpoint", "prompt", "vae")
               if getattr(cfg, f) is None]
    if missing:
        raise ConfigError(f"set {', '.join(missing)}")
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = resolve_model_dir(cfg.checkpoint)  # fail fast on every missing input
    codec = load_wfvae_codec(cfg.vae, "--vae", device)
    if (cfg.frames - 1) % codec.temporal_compression:
        raise ConfigError(f"--frames must be 1 + {codec.temporal_compression}n, got {cfg.frames}")
    states, mask = encode_prompts(cfg, [cfg.prompt, ""], device)
    model = SkiparseDiT.from_pretrained(model_dir).to(device).eval()
    s = codec.spatial_compression
    latent_shape = (codec.latent_channels, 1 + (cfg.frames - 1) // codec.temporal_compression,
                    cfg.height // s, cfg.width // s)
    try:
        model.token_grid(latent_shape[1:])
    except ValueError as exc:
        raise ConfigError(f"--height/--width: {exc}") from None
    latents = sample_latents(
        model, DiffusionConfig().sample_scheduler(), latent_shape,
        states[:1].to(device), mask[:1].to(device),
        states[1:].to(device), mask[1:].to(device), cfg.steps, cfg.cfg, cfg.seed)
    video = codec.decode(latents)[0]  # (3, T, H, W) in [-1, 1]
    frames = ((video.permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 127.5).round()
    return write_video(cfg.out, np.clip(frames, 0, 255).astype(np.uint8), cfg.fps)


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    for name, kind in typing.get_type_hints(SampleConfig).items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name,
                            type=kind if kind in (int, float) else str, help=f"config: {name}")


main = console_main("soraplan-sample", __doc__, Command(
    "sample", "sample a video", lambda cfg, args: sample(cfg), SampleConfig, sample_arguments,
    {f.name: f.name for f in fields(SampleConfig)}))

if __name__ == "__main__":
    main()
