"""DiT training with DeepSpeed ZeRO: bucketed latent batches, v-prediction with Min-SNR, EMA,
atomic checkpoints with exact resume, TensorBoard.

Every sample's noise, timestep and caption dropout come from its own seed (run seed + global
sample position), so a run is the same whatever the number of ranks sharing the global batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from soraplan.core.config import dump_yaml
from soraplan.model.common.checkpoint import (
    commit_checkpoint,
    latest_checkpoint,
    staging_dir,
)
from soraplan.model.common.distributed import barrier, init_distributed
from soraplan.model.common.ema import EMA
from soraplan.model.dit.buckets import BucketConfig
from soraplan.model.dit.codec import load_wfvae_codec
from soraplan.model.dit.data import LatentDataset
from soraplan.model.dit.diffusion import DiffusionConfig, diffusion_loss, sample_latents
from soraplan.model.dit.encode import ClipDataset
from soraplan.model.dit.model import SkiparseDiT
from soraplan.model.dit.sampler import BucketBatchSampler
from soraplan.model.dit.text import TextEmbeddingCache

EMA_DIR = "ema"  # inside a checkpoint: a diffusers model directory with the EMA weights
EMA_WEIGHTS = "diffusion_pytorch_model.safetensors"  # the file name from_pretrained looks for
TRAIN_STATE = "train_state.json"


@dataclass
class DiTModelConfig:
    name: str = "skiparse-small"  # a key of DIT_CONFIGS
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # diffusers directory to start from instead of random weights
    gradient_checkpointing: bool = True

    def build(self) -> SkiparseDiT:
        if self.pretrained:
            if not Path(self.pretrained).is_dir():
                raise FileNotFoundError(f"DiT weights not found at {self.pretrained!r}; "
                                        "set model.pretrained to a save_pretrained directory")
            model = SkiparseDiT.from_pretrained(self.pretrained)
        else:
            model = SkiparseDiT.from_named_config(self.name, **self.overrides)
        if self.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model


@dataclass
class DiTDataConfig:
    source: Literal["latents", "clips"] = "latents"  # clips: encode curated clips on the fly
    root: str = "data/latents"  # latent shards written by pipelines/encode_latents.py
    global_batch: int = 8
    min_bucket_batches: float = 1.0  # drop buckets with fewer global batches than this
    caption_dropout: float = 0.1
    # Only for source=clips:
    shards: str = "data/curated"
    vae: str = "checkpoints/wfvae"
    text_cache: str = "data/text_cache"  # TextEmbeddingCache holding every caption and ""
    buckets: BucketConfig = field(default_factory=BucketConfig)
    caption_column: str = "caption"

    def build(self, device: str = "cpu") -> LatentDataset | ClipDataset:
        if self.source == "latents":
            return LatentDataset(self.root)
        codec = load_wfvae_codec(self.vae, "data.vae", device)
        return ClipDataset(self.shards, self.buckets, codec, TextEmbeddingCache(self.text_cache),
                           self.caption_column, device)


@dataclass
class OptimizerConfig:
    lr: float = 1e-5
    weight_decay: float = 1e-2
    eps: float = 1e-15
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0

    def build(self, params: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                 weight_decay=self.weight_decay)


@dataclass
class TrainConfig:
    model: DiTModelConfig = field(default_factory=DiTModelConfig)
    data: DiTDataConfig = field(default_factory=DiTDataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    output_dir: str = "runs/dit"
    steps: int = 1000
    seed: int = 0
    zero_stage: int = 2
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    ema_decay: float = 0.9999
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0  # log EMA samples of the first training caption to TensorBoard; 0: off
    sample_steps: int = 20
    sample_vae: str | None = None  # WF-VAE dir to decode samples; None logs latent previews

    def deepspeed_config(self, world_size: int) -> dict[str, Any]:
        bf16 = self.precision == "bf16" or (self.precision == "auto" and torch.cuda.is_available())
        return {
            "train_batch_size": self.data.global_batch,
            "train_micro_batch_size_per_gpu": self.data.global_batch // world_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.optimizer.grad_clip,
            "zero_optimization": {"stage": self.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": bf16},
            "steps_per_print": 10**9,
        }


def sample_seeds(run_seed: int, step: int, global_batch: int, rank: int, count: int) -> list[int]:
    """Seeds of this rank's samples at `step`, spaced by 4 (noise, timestep, dropout use s..s+2)."""
    first = step * global_batch + rank * count
    return [4 * (run_seed * 2**40 + first + i) for i in range(count)]


def dropped_captions(seeds: list[int], p: float) -> list[bool]:
    return [torch.rand(1, generator=torch.Generator().manual_seed(s + 2)).item() < p
            for s in seeds]


def save_checkpoint(engine: Any, ema: EMA, root: Path, step: int, sampler: BucketBatchSampler,
                    rank: int, keep_last: int) -> None:
    """All ranks write into a staging dir; rank 0 adds EMA + state, then renames it into place."""
    tag = f"step_{step:08d}"
    stage = staging_dir(root, tag)
    engine.save_checkpoint(str(root), tag=stage.name, save_latest=False)
    if rank == 0:
        ema_dir = stage / EMA_DIR
        ema_dir.mkdir(parents=True, exist_ok=True)
        engine.module.save_config(ema_dir)
        save_file(ema.state_dict(), str(ema_dir / EMA_WEIGHTS))
        state = {"step": step, "sampler": sampler.state_dict()}
        (stage / TRAIN_STATE).write_text(json.dumps(state))
    barrier()
    if rank == 0:
        commit_checkpoint(root, tag, keep_last=keep_last)
    barrier()


def load_ema(ema: EMA, checkpoint: Path) -> None:
    ema.load_state_dict(load_file(str(checkpoint / EMA_DIR / EMA_WEIGHTS)))


@torch.no_grad()
def log_samples(writer: Any, cfg: TrainConfig, engine: Any, ema: EMA,
                dataset: LatentDataset | ClipDataset, step: int) -> None:
    """Sample the first training caption with the EMA weights; log video frames or, without a
    VAE, the first three latent channels."""
    model = SkiparseDiT.from_config(engine.module.config).to(engine.device).eval()
    ema.copy_to(model)
    batch = dataset.batch([0], [False])
    null = dataset.batch([0], [True])
    latents = sample_latents(
        model, cfg.diffusion.sample_scheduler(), tuple(batch["latents"].shape[1:]),
        batch["text_states"].to(engine.device), batch["text_mask"].to(engine.device),
        null["text_states"].to(engine.device), null["text_mask"].to(engine.device),
        cfg.sample_steps, cfg.diffusion.guidance_scale, cfg.seed)
    if cfg.sample_vae:
        codec = load_wfvae_codec(cfg.sample_vae, "sample_vae", str(engine.device))
        frames = (codec.decode(latents)[0].transpose(0, 1).float().cpu() + 1) / 2  # (T, 3, H, W)
    else:
        preview = latents[0, :3].transpose(0, 1).float().cpu()
        low, high = preview.amin(), preview.amax()
        frames = (preview - low) / (high - low + 1e-6)
    writer.add_images("samples/frames", frames.clamp(0, 1), step)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the output directory."""
    import deepspeed  # deferred: importing deepspeed costs seconds

    rank, world_size = init_distributed()
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = cfg.data.build(device)  # fails fast, before building the model
    torch.manual_seed(cfg.seed)
    model = cfg.model.build()
    sampler = BucketBatchSampler(dataset.bucket_of, cfg.data.global_batch, rank, world_size,
                                 cfg.seed, cfg.data.min_bucket_batches)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=cfg.optimizer.build(model.parameters()),
        config=cfg.deepspeed_config(world_size))
    ema = EMA(engine.module, cfg.ema_decay)
    scheduler = cfg.diffusion.train_scheduler()
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32

    start = 0
    resume_from = latest_checkpoint(ckpt_root)
    if resume_from is not None:
        engine.load_checkpoint(str(ckpt_root), tag=resume_from.name)
        load_ema(ema, resume_from)
        state = json.loads((resume_from / TRAIN_STATE).read_text())
        sampler.load_state_dict(state["sampler"])
        start = state["step"]

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out / "config.yaml")
        writer = SummaryWriter(str(out / "tensorboard"))
        print(f"training {cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} params, "
              f"{sampler.batches_per_epoch} batches/epoch, {world_size} rank(s), from step {start}")

    per_rank = cfg.data.global_batch // world_size
    batches = iter(sampler)
    for step in range(start, cfg.steps):
        indices = next(batches)
        seeds = sample_seeds(cfg.seed, step, cfg.data.global_batch, rank, per_rank)
        batch = dataset.batch(indices, dropped_captions(seeds, cfg.data.caption_dropout))
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        loss = diffusion_loss(engine, scheduler, batch["latents"].to(dtype),
                              batch["text_states"].to(dtype), batch["text_mask"], seeds,
                              cfg.diffusion.snr_gamma).mean()
        engine.backward(loss)
        engine.step()
        ema.update(engine.module)

        mean_loss = loss.detach().float().clone()
        if world_size > 1:
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= world_size
        if writer is not None:
            grad_norm = engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else math.nan
            writer.add_scalar("train/loss", mean_loss.item(), step + 1)
            writer.add_scalar("train/grad_norm", grad_norm, step + 1)
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step + 1, "loss": mean_loss.item(),
                                     "grad_norm": grad_norm}) + "\n")
            if (step + 1) % cfg.log_every == 0:
                print(f"step {step + 1}: loss {mean_loss.item():.4f} grad_norm {grad_norm:.3f}",
                      flush=True)
        if writer is not None and cfg.sample_every and (step + 1) % cfg.sample_every == 0:
            log_samples(writer, cfg, engine, ema, dataset, step + 1)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(engine, ema, ckpt_root, step + 1, sampler, rank, cfg.keep_checkpoints)
    if writer is not None:
        writer.close()
    return out
