"""`soraplan-sample`: text-to-video with a trained Skiparse DiT, decoded by WF-VAE.

    soraplan-sample --checkpoint runs/dit_small --vae checkpoints/wfvae \
        --text-encoder google/mt5-xxl --prompt "a red kite over the sea" --out kite.mp4 \
        --frames 29 --height 256 --width 256 --steps 50 --cfg 7.5 --seed 0

--checkpoint takes a training output dir, its checkpoints/ dir, one checkpoint (the EMA weights
are used), or any SkiparseDiT save_pretrained directory.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from soraplan.model.common.checkpoint import latest_checkpoint


@dataclass
class SampleConfig:
    checkpoint: str
    prompt: str
    out: str = "sample.mp4"
    vae: str = "checkpoints/wfvae"
    text_encoder: str = "google/mt5-xxl"
    text_cache: str | None = None  # TextEmbeddingCache dir; used before the text encoder
    max_text_length: int = 512
    frames: int = 29
    height: int = 256
    width: int = 256
    steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    fps: float = 16.0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_dir(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    for root in (path / "checkpoints", path):
        latest = latest_checkpoint(root)
        if latest is not None:
            path = latest
            break
    if (path / "ema" / "config.json").is_file():
        return path / "ema"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"no DiT weights under {checkpoint!r}; set --checkpoint to a training "
                            "output dir, a checkpoint, or a save_pretrained directory")


def encode_prompts(cfg: SampleConfig, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from soraplan.model.dit.text import TextEmbeddingCache, TextEncoderConfig

    if cfg.text_cache is not None:
        cache = TextEmbeddingCache(cfg.text_cache)
        if not cache.missing(prompts):
            return cache.get(prompts)
    encoder = TextEncoderConfig(cfg.text_encoder, cfg.max_text_length).build(cfg.device)
    states, mask = encoder.encode(prompts)
    del encoder  # the DiT needs the memory more
    return states, mask


def sample(cfg: SampleConfig) -> Path:
    from soraplan.core.video import write_video
    from soraplan.model.dit.codec import load_wfvae_codec
    from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents
    from soraplan.model.dit.model import SkiparseDiT

    model_dir = resolve_model_dir(cfg.checkpoint)  # fail fast on every missing input
    codec = load_wfvae_codec(cfg.vae, "--vae", cfg.device)
    if (cfg.frames - 1) % codec.temporal_compression:
        raise ValueError(f"--frames must be 1 + {codec.temporal_compression}n, got {cfg.frames}")
    states, mask = encode_prompts(cfg, [cfg.prompt, ""])
    model = SkiparseDiT.from_pretrained(model_dir).to(cfg.device).eval()
    s = codec.spatial_compression
    latent_shape = (codec.latent_channels, 1 + (cfg.frames - 1) // codec.temporal_compression,
                    cfg.height // s, cfg.width // s)
    model.token_grid(latent_shape[1:])  # checks the size fits the patch size
    latents = sample_latents(
        model, DiffusionConfig().sample_scheduler(), latent_shape,
        states[:1].to(cfg.device), mask[:1].to(cfg.device),
        states[1:].to(cfg.device), mask[1:].to(cfg.device), cfg.steps, cfg.cfg, cfg.seed)
    video = codec.decode(latents)[0]  # (3, T, H, W) in [-1, 1]
    frames = ((video.permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 127.5).round()
    return write_video(cfg.out, np.clip(frames, 0, 255).astype(np.uint8), cfg.fps)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="soraplan-sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SampleConfig(checkpoint="", prompt="")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--prompt", required=True)
    for name in ("out", "vae", "text_encoder", "text_cache", "max_text_length", "frames",
                 "height", "width", "steps", "cfg", "seed", "fps", "device"):
        default = getattr(defaults, name)
        kind = type(default) if default is not None else str
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=default)
    path = sample(SampleConfig(**vars(parser.parse_args(argv))))
    print(path)


if __name__ == "__main__":
    main()
