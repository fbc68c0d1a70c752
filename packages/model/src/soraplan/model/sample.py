"""`soraplan-sample`: text-to-video with a trained Skiparse DiT, decoded by WF-VAE; a CLI over
`soraplan.model.pipeline.SoraPlanPipeline`.

    soraplan-sample --checkpoint runs/dit_small --vae checkpoints/wfvae \
        --text-encoder google/mt5-xxl --prompt "a red kite over the sea" --out kite.mp4 \
        --frames 29 --height 256 --width 256 --steps 50 --cfg 7.5 --seed 0
    soraplan-sample ... --prompts-file prompts.txt --seeds 0 1 --out samples/
    soraplan-sample ... --save-pipeline kite_pipeline      # also save the assembled pipeline
    soraplan-sample --pipeline kite_pipeline --prompt "a red kite over the sea" --out kite.mp4

With `--prompts-file` (one prompt a line) or several `--seeds`, `--out` is a folder: one video
per prompt and seed, indexed in `samples.jsonl` ({"video", "prompt", "seed"} a line).

--checkpoint takes a training output dir, its checkpoints/ dir, one checkpoint (its EMA weights
are used), or any SkiparseDiT save_pretrained directory. --pipeline takes a SoraPlanPipeline
save_pretrained directory instead of --checkpoint, --vae and --text-encoder. Every option is also
a config key (`--text-encoder` is `text_encoder`), so `--config` YAML and key=value overrides work.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from soraplan.core.cli import Command, console_main, one_line
from soraplan.core.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from soraplan.core.train.checkpoint import resolve_pretrained
from soraplan.model.dit.diffusion import SamplerName, sampler_from_config

if TYPE_CHECKING:  # importing diffusers costs seconds; --help needs none of it
    from soraplan.model.pipeline import SoraPlanPipeline


@dataclass
class SampleConfig:
    checkpoint: str | None = None  # training output dir, checkpoint, or save_pretrained dir
    prompt: str | None = None
    prompts_file: str | None = None  # one prompt a line, instead of `prompt`
    out: str = "sample.mp4"  # a file for one video, a folder for several
    vae: str | None = None  # WF-VAE save_pretrained directory
    text_encoder: str = "google/mt5-xxl"  # HF id or local T5/mT5 directory
    text_cache: str | None = None  # TextEmbeddingCache dir; used before the text encoder
    pipeline: str | None = None  # SoraPlanPipeline directory, instead of checkpoint/vae/text_encoder
    save_pipeline: str | None = None  # save the pipeline used here to this directory
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
    # The diffusers scheduler that samples, built from the pipeline's own scheduler config (its
    # betas, prediction type, zero-SNR rescale, spacing); None keeps the pipeline's: Euler
    # ancestral for v-prediction, DDPM for learned variance (which only DDPM samples).
    sampler: SamplerName | None = None


def use_sampler(pipe: SoraPlanPipeline, sampler: str | None) -> None:
    """Swap the pipeline's scheduler for `sampler`, from the same scheduler config."""
    if sampler is None:
        return
    try:
        scheduler = sampler_from_config(sampler, pipe.scheduler.config)
    except ConfigError as exc:
        raise ConfigError(f"--{exc}; leave --sampler unset or set it to ddpm") from None
    pipe.register_modules(scheduler=scheduler)


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


def cached_states(cfg: SampleConfig, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The prompts' text states from --text-cache when it holds every one of them."""
    from soraplan.model.dit.text import TextEmbeddingCache

    if cfg.text_cache is None:
        return None
    cache = TextEmbeddingCache(cfg.text_cache)
    return None if cache.missing(prompts) else cache.get(prompts)


def load_saved_pipeline(path: str, with_text_encoder: bool) -> SoraPlanPipeline:
    """A SoraPlanPipeline save_pretrained directory, or its HF id."""
    from soraplan.model.pipeline import SoraPlanPipeline

    fix = "set --pipeline to a directory written by save_pretrained (--save-pipeline)"
    looks_local = Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") != 1
    if looks_local and not Path(path, "model_index.json").is_file():
        raise FileNotFoundError(f"no SoraPlanPipeline at {path!r} (no model_index.json); {fix}")
    skip = {} if with_text_encoder else {"tokenizer": None, "text_encoder": None}
    try:
        return SoraPlanPipeline.from_pretrained(path, **skip)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"could not load SoraPlanPipeline {path!r} ({one_line(exc)}); {fix}") from None


def assemble_pipeline(cfg: SampleConfig) -> SoraPlanPipeline:
    """DiT (Skiparse or STDiT), VAE (WF-VAE or a per-frame image VAE) and the scheduler of the
    DiT's diffusion; the text encoder is added when the prompts need it."""
    from soraplan.model.dit.codec import load_codec
    from soraplan.model.dit.configs import load_dit
    from soraplan.model.dit.diffusion import DiffusionConfig
    from soraplan.model.pipeline import SoraPlanPipeline

    try:  # fail fast on every missing input
        model_dir = resolve_pretrained(cfg.checkpoint, "DiT")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc} (--checkpoint)") from None
    codec = load_codec(cfg.vae, "--vae")
    model = load_dit(model_dir)
    return SoraPlanPipeline(None, None, model, codec.vae, DiffusionConfig.for_model(model).sample_scheduler())


def sample(cfg: SampleConfig) -> Path:
    """Sample every prompt with every seed; returns the video (one) or the folder (several)."""
    from soraplan.core.outputs import write_sample_index
    from soraplan.core.video import write_video
    from soraplan.model.dit.text import TextEncoder

    prompts, seeds = prompts_of(cfg), cfg.seeds or [cfg.seed]
    required = [("--prompt or --prompts-file", prompts)]
    if not cfg.pipeline:
        required = [("--checkpoint", cfg.checkpoint), *required, ("--vae", cfg.vae)]
    missing = [flag for flag, value in required if not value]
    if missing:
        hint = "" if cfg.pipeline or {"--checkpoint", "--vae"}.isdisjoint(missing) else " (or --pipeline)"
        raise ConfigError(f"set {', '.join(missing)}{hint}")
    if cfg.pipeline and (cfg.checkpoint or cfg.vae):
        raise ConfigError("--pipeline replaces --checkpoint and --vae: set one or the other")
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = [*prompts, ""]  # the empty prompt is the unconditional branch of guidance
    cached = cached_states(cfg, texts)
    need_text_encoder = cached is None or cfg.save_pipeline is not None
    if cfg.pipeline:
        pipe = load_saved_pipeline(cfg.pipeline, need_text_encoder)
    else:
        pipe = assemble_pipeline(cfg)
    try:
        pipe.check_inputs(cfg.frames, cfg.height, cfg.width)
    except ValueError as exc:
        raise ConfigError(f"--frames/--height/--width: {exc}") from None
    use_sampler(pipe, cfg.sampler)
    if need_text_encoder and pipe.text_encoder is None:
        if cfg.pipeline:
            raise ConfigError(f"{cfg.pipeline} holds no text encoder; set --text-cache to a text "
                              "cache holding every prompt and the empty one")
        encoder = TextEncoder(cfg.text_encoder, cfg.max_text_length, config_key="--text-encoder")
        pipe.register_modules(tokenizer=encoder.tokenizer, text_encoder=encoder.model)
    if cfg.save_pipeline:
        pipe.save_pretrained(cfg.save_pipeline)
    if cached is None:
        pipe.text_encoder.to(device)
    states, mask = cached if cached is not None else pipe.encode_prompt(texts, cfg.max_text_length)
    pipe.register_modules(tokenizer=None, text_encoder=None)  # the DiT needs the memory more
    pipe.to(device)
    several = len(prompts) * len(seeds) > 1
    out = Path(cfg.out)
    entries = []
    for i, prompt in enumerate(prompts):
        for seed in seeds:
            frames = pipe(prompt_embeds=states[i : i + 1], prompt_attention_mask=mask[i : i + 1],
                          negative_prompt_embeds=states[-1:], negative_prompt_attention_mask=mask[-1:],
                          num_frames=cfg.frames, height=cfg.height, width=cfg.width,
                          num_inference_steps=cfg.steps, guidance_scale=cfg.cfg,
                          generator=torch.Generator().manual_seed(seed)).frames[0]  # (T, H, W, 3) in [0, 1]
            name = f"{i:04d}_s{seed}.mp4" if several else out.name
            write_video(out / name if several else out,
                        np.clip((frames * 255).round(), 0, 255).astype(np.uint8), cfg.fps)
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
