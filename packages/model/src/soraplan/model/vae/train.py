"""WF-VAE training on the shared trainer (`soraplan.core.train.Trainer`): a generator engine
(`model`) and a discriminator engine, reconstruction videos in TensorBoard.

Determinism: model init, data (see data.py) and posterior noise are functions of the seed and the
step, and a checkpoint holds both engines (weights and optimizers), the EMA and the step, so on
CPU a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np
import torch

from soraplan.core.config import NonNegativeInt
from soraplan.core.train.checkpoint import checkpoint_tag
from soraplan.core.train.config import EMAConfig, OptimizerConfig, TrainerConfig
from soraplan.core.train.trainer import Trainer
from soraplan.core.video import write_video
from soraplan.model.vae.configs import WFVAEConfig
from soraplan.model.vae.data import VAEDataConfig
from soraplan.model.vae.losses import PatchDiscriminator3D, VAELoss, VAELossConfig
from soraplan.model.vae.metrics import psnr
from soraplan.model.vae.modeling_wfvae import WFVAEModel

SAMPLES_DIR = "samples"  # <output_dir>/samples/step_XXXXXXXX.mp4: input | reconstruction


@dataclass
class TrainVAEConfig(TrainerConfig):
    output_dir: str = "runs/vae"
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(weight_decay=1e-4))
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(decay=0.999))
    model: WFVAEConfig = field(default_factory=WFVAEConfig)
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    # The discriminator's optimizer (the generator's is `optimizer`).
    disc_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(weight_decay=1e-4))
    video_every: NonNegativeInt = 200  # steps between reconstruction videos; 0: none


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


class VAETrainer(Trainer):
    name = "vae"
    progress_keys = ("loss", "psnr", "d_loss")
    cfg: TrainVAEConfig

    def build(self) -> None:
        cfg = self.cfg
        self.sampler = cfg.data.build(cfg.seed)  # fails on missing data before models are built
        self.vae: WFVAEModel = cfg.model.build()
        self.discriminator = PatchDiscriminator3D(cfg.loss.disc_channels, cfg.loss.disc_layers)
        self.loss = VAELoss(cfg.loss).to(self.device)
        self.ema_model = self.vae
        for name, model, opt_cfg in (("model", self.vae, cfg.optimizer),
                                     ("discriminator", self.discriminator, cfg.disc_optimizer)):
            optimizer = opt_cfg.build([p for p in model.parameters() if p.requires_grad])
            self.engines[name] = self.initialize(
                model, optimizer, cfg.data.batch_size,
                lr_scheduler=self.lr_scheduler(opt_cfg, optimizer))
        self.batch: torch.Tensor | None = None  # the last step's input, for reconstruction videos

    def train_step(self) -> dict[str, float]:
        generator, discriminator = self.engines["model"], self.engines["discriminator"]
        x = self.sampler.batch(self.step, self.rank).to(self.device, self.dtype)
        self.batch = x
        noise = torch.Generator(self.device).manual_seed(
            (self.cfg.seed * 1_000_003 + self.step) * self.world_size + self.rank
        )
        self.discriminator.requires_grad_(False)  # the generator step must not touch D's grads
        out = generator(x, generator=noise)
        loss, stats = self.loss.generator_loss(
            x, out, self.step, self.discriminator, self.vae.decoder
        )
        generator.backward(loss)
        generator.step()
        self.discriminator.requires_grad_(True)
        if self.loss.disc_active(self.step):
            d_loss, d_stats = self.loss.discriminator_loss(x, out.sample, discriminator)
            discriminator.backward(d_loss)
            discriminator.step()
            stats.update(d_stats)
        stats["psnr"] = psnr(x, out.sample.detach())
        return stats

    def after_step(self, stats: dict[str, float]) -> None:
        every = self.cfg.video_every
        if self.rank == 0 and every and self.step % every == 0:
            self.log_video(self.batch)

    @torch.no_grad()
    def log_video(self, x: torch.Tensor) -> None:
        """Input and (raw, not EMA) reconstruction side by side, to TensorBoard and an mp4."""
        recon = self.vae(x[:1], sample_posterior=False).sample
        frames = np.concatenate([to_uint8_frames(x[0]), to_uint8_frames(recon[0])], axis=2)
        fps = self.cfg.data.fps or 8.0
        write_video(self.out / SAMPLES_DIR / f"{checkpoint_tag(self.step)}.mp4", frames, fps)
        from tensorboard.compat.proto.summary_pb2 import Summary

        h, w = frames.shape[1:3]
        image = Summary.Image(
            height=h, width=w, colorspace=3, encoded_image_string=gif_bytes(frames, fps)
        )
        self.writer._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag="reconstruction", image=image)]), self.step
        )
