"""`soraplan-sample`: text-to-video with a trained Skiparse DiT, decoded by WF-VAE.

    soraplan-sample --checkpoint runs/dit_small --vae checkpoints/wfvae \
        --text-encoder google/mt5-xxl --prompt "a red kite over the sea" --out kite.mp4 \
        --frames 29 --height 256 --width 256 --steps 50 --cfg 7.5 --seed 0
    soraplan-sample ... --prompts-file prompts.txt --seeds 0 1 --out samples/

With `--prompts-file` (one prompt a line) or several `--seeds`, `--out` is a folder: one video
per prompt and seed, indexed in `samples.jsonl` ({"video", "prompt", "seed"} a line).

--checkpoint takes a training output dir, its checkpoints/ dir, one checkpoint (its EMA weights
are used), or any SkiparseDiT save_pretrained directory. Every option is also a config key
(`--text-encoder` is `text_encoder`), so `--config` YAML and key=value overrides work too.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field, fields
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
from soraplan.core.train.checkpoint import resolve_pretrained


@dataclass
class SampleConfig:
    checkpoint: str | None = None  # training output dir, checkpoint, or save_pretrained dir
    prompt: str | None = None
    prompts_file: str | None = None  # one prompt a line, instead of `prompt`
    out: str = "sample.mp4"  # a file for one video, a folder for several
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
    seeds: list[NonNegativeInt] = field(default_factory=list)  # several seeds a prompt, instead of `seed`
    fps: PositiveFloat = 16.0
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when there is a GPU


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


def prompts_of(cfg: SampleConfig) -> list[str]:
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path} (--prompts-file)")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"{path} holds no prompt (--prompts-file)")
        return prompts
    return [cfg.prompt] if cfg.prompt is not None else []


def sample(cfg: SampleConfig) -> Path:
    """Sample every prompt with every seed; returns the video (one) or the folder (several)."""
    from soraplan.core.outputs import write_sample_index
    from soraplan.core.video import write_video
    from soraplan.model.dit.codec import load_codec
    from soraplan.model.dit.configs import load_dit
    from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents

    prompts, seeds = prompts_of(cfg), cfg.seeds or [cfg.seed]
    missing = [flag for flag, value in (("--checkpoint", cfg.checkpoint), ("--prompt or --prompts-file", prompts),
                                        ("--vae", cfg.vae)) if not value]
    if missing:
        raise ConfigError(f"set {', '.join(missing)}")
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:  # fail fast on every missing input
        model_dir = resolve_pretrained(cfg.checkpoint, "DiT")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc} (--checkpoint)") from None
    codec = load_codec(cfg.vae, "--vae", device)
    if (cfg.frames - 1) % codec.temporal_compression:
        raise ConfigError(f"--frames must be 1 + {codec.temporal_compression}n, got {cfg.frames}")
    states, mask = encode_prompts(cfg, [*prompts, ""], device)
    model = load_dit(model_dir).to(device).eval()
    s = codec.spatial_compression
    latent_shape = (codec.latent_channels, 1 + (cfg.frames - 1) // codec.temporal_compression,
                    cfg.height // s, cfg.width // s)
    try:
        model.token_grid(latent_shape[1:])
    except ValueError as exc:
        raise ConfigError(f"--height/--width: {exc}") from None
    several = len(prompts) * len(seeds) > 1
    out = Path(cfg.out)
    entries = []
    for i, prompt in enumerate(prompts):
        for seed in seeds:
            latents = sample_latents(
                model, DiffusionConfig.for_model(model).sample_scheduler(), latent_shape,
                states[i : i + 1].to(device), mask[i : i + 1].to(device),
                states[-1:].to(device), mask[-1:].to(device), cfg.steps, cfg.cfg, seed)
            video = codec.decode(latents)[0]  # (3, T, H, W) in [-1, 1]
            frames = ((video.permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 127.5).round()
            name = f"{i:04d}_s{seed}.mp4" if several else out.name
            write_video(out / name if several else out, np.clip(frames, 0, 255).astype(np.uint8), cfg.fps)
            entries.append({"video": name, "prompt": prompt, "seed": seed})
    if several:
        write_sample_index(out, entries)
    return out


def sample_arguments(parser: argparse.ArgumentParser) -> None:
    for name, kind in typing.get_type_hints(SampleConfig).items():
        flag = f"--{name.replace('_', '-')}"
        if typing.get_origin(kind) is list:
            parser.add_argument(flag, dest=name, nargs="+", type=int, help=f"config: {name}")
        else:
            parser.add_argument(flag, dest=name, type=kind if kind in (int, float) else str,
                                help=f"config: {name}")


main = console_main("soraplan-sample", __doc__, Command(
    "sample", "sample a video", lambda cfg, args: sample(cfg), SampleConfig, sample_arguments,
    {f.name: f.name for f in fields(SampleConfig)}))

if __name__ == "__main__":
    main()
