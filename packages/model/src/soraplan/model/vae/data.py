"""Training batches for the VAE: random T x H x W crops of kept clips, plus images as one frame.

Clips come from curated shards (kept rows; their `crop` box is respected) or from plain video
folders. Frames are decoded by the shared decoder at the requested frame rate.

A batch is a pure function of (seed, step, rank): the data position of a run is its step, so a
resumed run reads exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from soraplan.core.config import ConfigError, PositiveFloat, PositiveInt, UnitFloat
from soraplan.core.inputs import IMAGE_SUFFIXES, find_media
from soraplan.core.schema import STATUS_KEPT, read_clip_table
from soraplan.core.video import VideoDecodeError, probe, sample_frames

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # unreadable sources are skipped, drawing another one


@dataclass
class VAEDataConfig:
    # Curated output folders (<dir>/clips/*.parquet): their kept clips, inside their crop box.
    shard_dirs: list[str] = field(default_factory=list)
    video_dirs: list[str] = field(default_factory=list)  # folders of videos, each used whole
    image_dirs: list[str] = field(default_factory=list)
    image_fraction: UnitFloat = 0.0  # share of steps whose batch is images (T = 1)
    num_frames: PositiveInt = 17  # 1 + 4n
    crop_size: PositiveInt = 64  # a multiple of 8 (the VAE's spatial compression)
    short_side: PositiveInt = 80  # frames scaled so the (cropped) short side is this, then cropped
    fps: PositiveFloat | None = 8.0  # frame rate frames are sampled at; None: the clip's own
    batch_size: PositiveInt = 1  # per process

    def validate(self) -> None:
        if (self.num_frames - 1) % 4:
            raise ConfigError(f"num_frames must be 1 + 4n, got {self.num_frames}")
        if self.crop_size % 8:
            raise ConfigError(f"crop_size must be a multiple of 8, got {self.crop_size}")
        if self.short_side < self.crop_size:
            raise ConfigError(f"short_side {self.short_side} must be >= crop_size {self.crop_size}")

    def build(self, seed: int = 0) -> VideoCropSampler:
        """The sampler of this data; `seed` (the run's) fixes every batch."""
        self.validate()  # also for configs made in code
        return VideoCropSampler(self, seed)


@dataclass(frozen=True)
class ClipSource:
    path: str
    start_s: float
    end_s: float
    fps: float
    width: int
    height: int
    crop: tuple[int, int, int, int] | None  # x0, x1, y0, y1 in display pixels
    caption: str | None = None


def clips_from_shards(shard_dir: str) -> list[ClipSource]:
    table = read_clip_table(shard_dir, status=STATUS_KEPT)
    root = Path(shard_dir)
    clips = []
    for row in table.to_pylist():
        path = Path(row["path"])
        if not path.is_absolute() and not path.exists():
            path = root / path
        crop = tuple(row["crop"]) if row.get("crop") else None
        clips.append(
            ClipSource(
                str(path),
                row["start_s"],
                row["end_s"],
                row["fps"] or 0.0,
                row["width"],
                row["height"],
                crop,
                row.get("caption"),
            )
        )
    return clips


def clips_from_folder(folder: str) -> list[ClipSource]:
    clips = []
    for path in find_media(folder):
        try:
            info = probe(path)
        except VideoDecodeError as exc:
            log.warning("skipping unreadable video: %s", exc)
            continue
        clips.append(
            ClipSource(str(path), 0.0, info.duration_s, info.fps, info.width, info.height, None)
        )
    return clips


def random_crop(
    frames: np.ndarray, box: tuple[int, int, int, int], size: int, rng: np.random.Generator
) -> np.ndarray:
    """A size x size window at a random place inside box (x0, x1, y0, y1) of T x H x W x 3 frames."""
    x0, x1, y0, y1 = box
    left = int(rng.integers(x0, x1 - size + 1))
    top = int(rng.integers(y0, y1 - size + 1))
    return frames[:, top : top + size, left : left + size]


class VideoCropSampler:
    def __init__(self, cfg: VAEDataConfig, seed: int = 0) -> None:
        if not (cfg.shard_dirs or cfg.video_dirs or cfg.image_dirs):
            raise ConfigError("no training data: set data.shard_dirs, data.video_dirs or "
                              "data.image_dirs")
        for key in ("shard_dirs", "video_dirs", "image_dirs"):
            for folder in getattr(cfg, key):
                if not Path(folder).is_dir():
                    raise FileNotFoundError(f"data.{key}: no folder {folder}")
        self.cfg, self.seed = cfg, seed
        self.clips = [c for d in cfg.shard_dirs for c in clips_from_shards(d)]
        self.clips += [c for d in cfg.video_dirs for c in clips_from_folder(d)]
        self.images = [str(p) for d in cfg.image_dirs for p in find_media(d, IMAGE_SUFFIXES)]
        if not self.clips and not self.images:
            raise ConfigError("no training data: the folders in data.shard_dirs, data.video_dirs "
                              "and data.image_dirs hold no kept clips, videos or images")

    def batch(self, step: int, rank: int = 0) -> torch.Tensor:
        """(batch_size, 3, T, crop, crop) float in [-1, 1]; T = 1 on image steps."""
        cfg = self.cfg
        use_images = bool(self.images) and (
            not self.clips or np.random.default_rng([self.seed, step]).random() < cfg.image_fraction
        )
        items = [
            self._sample(np.random.default_rng([self.seed, step, rank, j]), use_images)
            for j in range(cfg.batch_size)
        ]
        frames = torch.from_numpy(np.stack(items))  # B, T, H, W, 3 uint8
        return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0

    def _sample(self, rng: np.random.Generator, use_images: bool) -> np.ndarray:
        errors = []
        for _ in range(MAX_ATTEMPTS):
            try:
                if use_images:
                    return self._image_crop(self.images[int(rng.integers(len(self.images)))], rng)
                return self._clip_crop(self.clips[int(rng.integers(len(self.clips)))], rng)
            except VideoDecodeError as exc:
                errors.append(str(exc))
                log.warning("skipping sample: %s", exc)
        raise VideoDecodeError(f"{MAX_ATTEMPTS} samples in a row failed to decode: {errors}")

    def _scaled(
        self, width: int, height: int, crop: tuple[int, int, int, int] | None
    ) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Decode size (w, h) and the crop box in decoded pixels, short side of the box = short_side."""
        x0, x1, y0, y1 = crop or (0, width, 0, height)
        scale = self.cfg.short_side / min(x1 - x0, y1 - y0)
        size = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
        box = (
            round(x0 * scale),
            min(size[0], round(x1 * scale)),
            round(y0 * scale),
            min(size[1], round(y1 * scale)),
        )
        if min(box[1] - box[0], box[3] - box[2]) < self.cfg.crop_size:
            box = (0, size[0], 0, size[1])
        return size, box

    def _clip_crop(self, clip: ClipSource, rng: np.random.Generator) -> np.ndarray:
        t = self.cfg.num_frames
        period = 1.0 / (self.cfg.fps or clip.fps or 25.0)
        span = clip.end_s - clip.start_s
        # Clips too short for T frames at the target rate are sampled denser rather than dropped.
        period = min(period, span / t)
        start = clip.start_s + rng.uniform(0.0, max(0.0, span - (t - 1) * period - 1e-3))
        size, box = self._scaled(clip.width, clip.height, clip.crop)
        frames, _ = sample_frames(clip.path, [start + i * period for i in range(t)], size=size)
        return random_crop(frames, box, self.cfg.crop_size, rng)

    def _image_crop(self, path: str, rng: np.random.Generator) -> np.ndarray:
        info = probe(path)
        size, box = self._scaled(info.width, info.height, None)
        frames, _ = sample_frames(path, [0.0], size=size)
        return random_crop(frames, box, self.cfg.crop_size, rng)
