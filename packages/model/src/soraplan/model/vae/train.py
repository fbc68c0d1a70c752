"""WF-VAE training with DeepSpeed: generator and discriminator engines, EMA, atomic checkpoints,
TensorBoard scalars and reconstruction videos. Entry point: pipelines/train_vae.py.

Determinism: model init, data (see data.py) and posterior noise are functions of the seed and the
step, and a checkpoint holds model, EMA, both optimizers, discriminator and step, so on CPU a
resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import torch

from soraplan.core.config import to_dict
from soraplan.core.video import write_video
from soraplan.model.common.checkpoint import (
    atomic_write_text,
    commit_checkpoint,
    latest_checkpoint,
    staging_dir,
)
from soraplan.model.common.distributed import barrier, init_distributed
from soraplan.model.common.ema import EMA
from soraplan.model.vae.configs import WFVAEConfig
from soraplan.model.vae.data import VAEDataConfig
from soraplan.model.vae.losses import PatchDiscriminator3D, VAELoss, VAELossConfig
from soraplan.model.vae.metrics import psnr
from soraplan.model.vae.modeling_wfvae import WFVAEModel

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4


@dataclass
class TrainVAEConfig:
    model: WFVAEConfig = field(default_factory=WFVAEConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed_config: str = "pipelines/configs/ds_zero2.json"
    output_dir: str = "runs/vae"
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (and save) after this much wall time
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    ema_decay: float = 0.999
    log_every: int = 10
    video_every: int = 200  # reconstruction videos to TensorBoard and <output_dir>/samples
    save_every: int = 500
    keep_last: int = 2
    resume: bool = True
    seed: int = 0
    cpu_threads: int | None = (
        None  # torch threads per process on CPU; 1 avoids thrashing on shared cores
    )


def deepspeed_config(cfg: TrainVAEConfig, world_size: int, bf16: bool) -> dict[str, Any]:
    ds = json.loads(Path(cfg.deepspeed_config).read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = cfg.data.batch_size * world_size
    ds["bf16"] = {"enabled": bf16}
    return ds


def to_uint8_frames(x: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> T x H x W x 3 uint8."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """Animated GIF of T x H x W x 3 uint8 frames (TensorBoard shows videos as GIF images)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="gif") as container:
        stream = container.add_stream("gif", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb8"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="rgb8")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


class Trainer:
    def __init__(self, cfg: TrainVAEConfig) -> None:
        import deepspeed  # deferred: importing deepspeed costs seconds

        self.cfg = cfg
        self.rank, self.world_size = init_distributed()
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        if self.device.type == "cpu" and cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.sampler = cfg.data.build()  # fail on missing data before building models

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.vae: WFVAEModel = cfg.model.build()
        self.discriminator = PatchDiscriminator3D(cfg.loss.disc_channels, cfg.loss.disc_layers)
        self.loss = VAELoss(cfg.loss).to(self.device)
        self.ema = EMA(self.vae, cfg.ema_decay)
        ds = deepspeed_config(cfg, self.world_size, bf16)

        def engine(model: torch.nn.Module, lr: float) -> Any:
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(
                params, lr=lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
            )
            return deepspeed.initialize(model=model, optimizer=opt, config=ds)[0]

        self.gen_engine = engine(self.vae, cfg.optim.lr)
        self.disc_engine = engine(self.discriminator, cfg.optim.disc_lr)
        self.ema.shadow = {k: v.to(self.device) for k, v in self.ema.shadow.items()}
        self.step = 0
        self.out = Path(cfg.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(to_dict(cfg), indent=2))
            self.writer = SummaryWriter(str(self.out / "tb"))
        if cfg.resume:
            self.load_latest()

    # --- checkpoints -------------------------------------------------------------------------
    def save(self) -> Path:
        tag = f"step{self.step:08d}"
        stage = staging_dir(self.ckpt_root, tag)
        self.gen_engine.save_checkpoint(str(stage), tag="generator", save_latest=False)
        self.disc_engine.save_checkpoint(str(stage), tag="discriminator", save_latest=False)
        if self.rank == 0:
            from safetensors.torch import save_file

            save_file(self.ema.state_dict(), str(stage / "ema.safetensors"))
            ema_vae = WFVAEModel.from_config(self.vae.config)
            ema_vae.load_state_dict(self.vae.state_dict())
            self.ema.copy_to(ema_vae)
            ema_vae.save_pretrained(stage / "vae_ema")  # loadable by model.pretrained
            atomic_write_text(
                stage / "train_state.json",
                json.dumps({"step": self.step, "data_position": self.step}),
            )
        barrier()
        if self.rank == 0:
            commit_checkpoint(self.ckpt_root, tag, keep_last=self.cfg.keep_last)
        barrier()
        return self.ckpt_root / tag

    def load_latest(self) -> bool:
        path = latest_checkpoint(self.ckpt_root)
        if path is None:
            return False
        from safetensors.torch import load_file

        self.gen_engine.load_checkpoint(str(path), tag="generator")
        self.disc_engine.load_checkpoint(str(path), tag="discriminator")
        self.ema.load_state_dict(
            {k: v.to(self.device) for k, v in load_file(str(path / "ema.safetensors")).items()}
        )
        self.step = json.loads((path / "train_state.json").read_text())["step"]
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # --- training ----------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        noise = torch.Generator(self.device).manual_seed(
            (self.cfg.seed * 1_000_003 + self.step) * self.world_size + self.rank
        )
        self.discriminator.requires_grad_(False)  # the generator step must not touch D's grads
        out = self.gen_engine(x, generator=noise)
        loss, stats = self.loss.generator_loss(
            x, out, self.step, self.discriminator, self.vae.decoder
        )
        self.gen_engine.backward(loss)
        self.gen_engine.step()
        self.ema.update(self.vae)
        self.discriminator.requires_grad_(True)
        if self.loss.disc_active(self.step):
            d_loss, d_stats = self.loss.discriminator_loss(x, out.sample, self.disc_engine)
            self.disc_engine.backward(d_loss)
            self.disc_engine.step()
            stats.update(d_stats)
        stats["psnr"] = psnr(x, out.sample.detach())
        return stats

    def log_video(self, x: torch.Tensor) -> None:
        """Input and EMA-free reconstruction side by side, to TensorBoard and an mp4."""
        with torch.no_grad():
            recon = self.vae(x[:1], sample_posterior=False).sample
        frames = np.concatenate([to_uint8_frames(x[0]), to_uint8_frames(recon[0])], axis=2)
        fps = self.cfg.data.fps or 8.0
        write_video(self.out / "samples" / f"step{self.step:08d}.mp4", frames, fps)
        if self.writer is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            h, w = frames.shape[1:3]
            image = Summary.Image(
                height=h, width=w, colorspace=3, encoded_image_string=gif_bytes(frames, fps)
            )
            self.writer._get_file_writer().add_summary(
                Summary(value=[Summary.Value(tag="reconstruction", image=image)]), self.step
            )

    def fit(self) -> list[dict[str, float]]:
        """Train to max_steps (or max_minutes); returns the logged stats of this process."""
        cfg, history = self.cfg, []
        start = time.time()
        while self.step < cfg.max_steps:
            if cfg.max_minutes is not None and self._time_up(start):
                break
            x = self.sampler.batch(self.step, self.rank).to(self.device, self.dtype)
            stats = self.train_step(x)
            self.step += 1
            stats["step"] = self.step
            history.append(stats)
            if self.rank == 0 and (self.step % cfg.log_every == 0 or self.step == 1):
                log.info(
                    "step %d %s",
                    self.step,
                    " ".join(f"{k}={v:.4g}" for k, v in stats.items() if k != "step"),
                )
                for k, v in stats.items():
                    if k != "step":
                        self.writer.add_scalar(f"train/{k}", v, self.step)
                self.writer.add_scalar("train/elapsed_s", time.time() - start, self.step)
            if self.rank == 0 and cfg.video_every and self.step % cfg.video_every == 0:
                self.log_video(x)
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
        if not cfg.save_every or self.step % cfg.save_every:
            self.save()
        if self.writer is not None:
            self.writer.flush()
        return history

    def _time_up(self, start: float) -> bool:
        """Same decision on every rank (rank 0's clock), so no rank waits alone in a collective."""
        flag = torch.tensor(
            [float(time.time() - start > 60 * self.cfg.max_minutes)], device=self.device
        )
        if torch.distributed.is_initialized() and self.world_size > 1:
            torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())
