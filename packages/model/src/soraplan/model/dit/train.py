"""DiT training on the shared trainer (`soraplan.core.train.Trainer`): bucketed latent batches
(clips, their first frames as images, or both), v-prediction with Min-SNR or IDDPM's hybrid loss,
optional EMA samples in TensorBoard.

Every sample's noise, timestep and caption dropout come from its own seed (run seed + global
sample position), so a run is the same whatever the number of ranks sharing the global batch.
The bucket sampler's position is saved with each checkpoint, so resume is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from soraplan.core.config import ConfigError, NonNegativeInt, PositiveInt, Range, UnitFloat
from soraplan.core.train.config import OptimizerConfig, TrainerConfig
from soraplan.core.train.distributed import mean_over_ranks
from soraplan.core.train.trainer import Trainer
from soraplan.model.dit.buckets import BucketConfig
from soraplan.core.schema import read_clip_table
from soraplan.model.dit.codec import load_codec
from soraplan.model.dit.configs import DiTModelConfig
from soraplan.model.dit.data import ClipSelection, LatentDataset, Samples, TrainingSamples
from soraplan.model.dit.diffusion import DiffusionConfig, sample_latents
from soraplan.model.dit.encode import ClipDataset
from soraplan.model.dit.sampler import BucketBatchSampler, JointBatchSampler
from soraplan.model.dit.text import TextEmbeddingCache


@dataclass
class DiTDataConfig:
    source: Literal["latents", "clips"] = "latents"  # clips: encode curated clips on the fly
    root: str | None = None  # latent shards written by `soraplan-dit encode`
    global_batch: PositiveInt = 8  # samples per optimizer step, over all processes
    # Drop buckets holding fewer global batches than this.
    min_bucket_batches: Annotated[float, Range(ge=1)] = 1.0
    caption_dropout: UnitFloat = 0.1  # share of captions replaced by the empty prompt
    # images: the first latent frame of every clip (text-to-image stage); joint: clips and those
    # images, `image_share` of the steps on images (image+video training).
    samples: Samples = "clips"
    image_share: Annotated[float, Range(gt=0, lt=1)] = 0.25
    select: ClipSelection = field(default_factory=ClipSelection)  # needs shards (its columns)
    # For source=clips, and for `select` (the curated columns):
    shards: str | None = None  # curated output folder (<shards>/clips/*.parquet)
    # Only for source=clips:
    vae: str | None = None  # WF-VAE or AutoencoderKL save_pretrained directory
    text_cache: str | None = None  # TextEmbeddingCache holding every caption and ""
    buckets: BucketConfig = field(default_factory=BucketConfig)
    caption_column: str = "caption"

    def build(self, device: torch.device) -> TrainingSamples:
        keep_ids = None
        if self.select.active():
            if not self.shards:
                raise ConfigError("data.select needs data.shards (the curated clips' columns)")
            keep_ids = self.select.clip_ids(read_clip_table(self.shards), self.caption_column)
        return TrainingSamples(self.build_dataset(device), self.samples, keep_ids)

    def build_dataset(self, device: torch.device) -> LatentDataset | ClipDataset:
        if self.source == "latents":
            if not self.root:
                raise ConfigError("no training data: set data.root to latent shards (soraplan-dit "
                                  "encode), or data.source=clips with data.shards, data.vae and "
                                  "data.text_cache")
            return LatentDataset(self.root)
        missing = [f"data.{key}" for key in ("shards", "vae", "text_cache")
                   if not getattr(self, key)]
        if missing:
            raise ConfigError(f"no training data: data.source=clips needs {', '.join(missing)}")
        codec = load_codec(self.vae, "data.vae", device)
        return ClipDataset(self.shards, self.buckets, codec, TextEmbeddingCache(self.text_cache),
                           self.caption_column, device)


@dataclass
class TrainDiTConfig(TrainerConfig):
    output_dir: str = "runs/dit"
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=1e-5, weight_decay=1e-2, eps=1e-15))
    model: DiTModelConfig = field(default_factory=DiTModelConfig)
    data: DiTDataConfig = field(default_factory=DiTDataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample_every: NonNegativeInt = 0  # steps between EMA samples of the first caption; 0: off
    sample_steps: PositiveInt = 20  # denoising steps of those samples
    sample_vae: str | None = None  # VAE dir to decode samples; None logs latent previews


def sample_seeds(run_seed: int, step: int, global_batch: int, rank: int, count: int) -> list[int]:
    """Seeds of this rank's samples at `step`, spaced by 4 (noise, timestep, dropout use s..s+2)."""
    first = step * global_batch + rank * count
    return [4 * (run_seed * 2**40 + first + i) for i in range(count)]


def dropped_captions(seeds: list[int], p: float) -> list[bool]:
    return [torch.rand(1, generator=torch.Generator().manual_seed(s + 2)).item() < p
            for s in seeds]


class DiTTrainer(Trainer):
    name = "dit"
    cfg: TrainDiTConfig

    def build(self) -> None:
        cfg = self.cfg
        if cfg.data.global_batch % self.world_size:
            raise ConfigError(f"data.global_batch {cfg.data.global_batch} is not divisible by the "
                              f"{self.world_size} processes")
        self.dataset = cfg.data.build(self.device)
        if cfg.data.samples == "joint":
            self.sampler = JointBatchSampler(self.dataset.bucket_of, cfg.data.global_batch,
                                             cfg.data.image_share, self.rank, self.world_size,
                                             cfg.seed, cfg.data.min_bucket_batches)
        else:
            self.sampler = BucketBatchSampler(self.dataset.bucket_of, cfg.data.global_batch,
                                              self.rank, self.world_size, cfg.seed,
                                              cfg.data.min_bucket_batches)
        self.batches = iter(self.sampler)  # serves the batch at the sampler's (resumed) position
        self.model = cfg.model.build()
        cfg.diffusion.check_model(self.model)
        optimizer = cfg.optimizer.build(self.model.parameters())
        self.engines["model"] = self.initialize(
            self.model, optimizer, cfg.data.global_batch // self.world_size,
            lr_scheduler=self.lr_scheduler(cfg.optimizer, optimizer))
        self.ema_model = self.model
        self.noise_scheduler = cfg.diffusion.train_scheduler()

    def train_step(self) -> dict[str, float]:
        cfg, engine = self.cfg, self.engines["model"]
        seeds = sample_seeds(cfg.seed, self.step, cfg.data.global_batch, self.rank,
                             cfg.data.global_batch // self.world_size)
        batch = self.dataset.batch(next(self.batches),
                                   dropped_captions(seeds, cfg.data.caption_dropout))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        loss = cfg.diffusion.loss(engine, self.noise_scheduler, batch["latents"].to(self.dtype),
                                  batch["text_states"].to(self.dtype), batch["text_mask"],
                                  seeds).mean()
        lr = engine.get_lr()[0]  # the rate of this step (engine.step moves the schedule on)
        engine.backward(loss)
        # Without ZeRO, DeepSpeed clips the fp32 gradients but keeps no norm: take it here, from
        # the gradients every rank holds whole (already averaged over ranks by backward).
        unreported = None if cfg.zero_stage else torch.nn.utils.get_total_norm(
            [p.grad for p in self.model.parameters() if p.grad is not None])
        engine.step()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = unreported if grad_norm is None else grad_norm
        stats = {"loss": mean_over_ranks(loss).item(),
                 "grad_norm": math.nan if grad_norm is None else float(grad_norm), "lr": lr}
        if cfg.data.samples == "joint":  # which kind of batch this step trained on
            stats["image_step"] = float(batch["latents"].shape[2] == 1)
        return stats

    def extra_state(self) -> dict[str, object]:
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: dict[str, object]) -> None:
        self.sampler.load_state_dict(state["sampler"])

    def after_step(self, stats: dict[str, float]) -> None:
        every = self.cfg.sample_every
        if self.rank == 0 and every and self.step % every == 0:
            self.log_samples()

    @torch.no_grad()
    def log_samples(self) -> None:
        """Sample the first training caption with the EMA weights (the raw ones without EMA);
        log video frames or, without a VAE, the first three latent channels."""
        cfg, device = self.cfg, self.device
        model = type(self.model).from_config(self.model.config).to(device).eval()
        model.load_state_dict(self.model.state_dict())
        if self.ema is not None:
            self.ema.copy_to(model)
        batch = self.dataset.batch([0], [False])
        null = self.dataset.batch([0], [True])
        latents = sample_latents(
            model, cfg.diffusion.sample_scheduler(), tuple(batch["latents"].shape[1:]),
            batch["text_states"].to(device), batch["text_mask"].to(device),
            null["text_states"].to(device), null["text_mask"].to(device),
            cfg.sample_steps, cfg.diffusion.guidance_scale, cfg.seed)
        if cfg.sample_vae:
            codec = load_codec(cfg.sample_vae, "sample_vae", device)
            video = codec.decode(latents)[0].transpose(0, 1)  # (T, 3, H, W) in [-1, 1]
            frames = (video.float().cpu() + 1) / 2
        else:
            preview = latents[0, :3].transpose(0, 1).float().cpu()
            low, high = preview.amin(), preview.amax()
            frames = (preview - low) / (high - low + 1e-6)
        self.writer.add_images("samples/frames", frames.clamp(0, 1), self.step)
