"""Bucketing clips by (T, H, W) for joint image-video training.

A clip is resized to an area between `min_hxw` and `max_hxw` pixels keeping its aspect ratio,
centre-cropped to multiples of `hw_stride`, resampled to `train_fps` (or, with `frame_stride`,
every n-th source frame as Open-Sora v1 takes them), and cut to the largest T = 1 + k n frames
within `num_frames`, k being the codec's time factor (WF-VAE: 4, it compresses time 4x after the
first frame; a per-frame image VAE: 1, any T). Images are T = 1 samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from soraplan.core.config import ConfigError, PositiveFloat, PositiveInt

Bucket = tuple[int, int, int]  # (frames, height, width) in pixels


@dataclass
class BucketConfig:
    min_hxw: PositiveInt = 320 * 320  # pixel area a clip is resized into, kept aspect ratio
    max_hxw: PositiveInt = 384 * 616
    hw_stride: PositiveInt = 32  # crop height and width to multiples of this
    train_fps: PositiveFloat = 16.0
    num_frames: PositiveInt = 93  # at most; cut to 1 + 4n
    min_num_frames: PositiveInt = 29  # shorter clips are skipped; images (1 frame) always pass
    # Take every n-th source frame instead of resampling to train_fps (Open-Sora v1: 16 frames
    # every 3rd, 64 frames every 2nd).
    frame_stride: PositiveInt | None = None

    def validate(self) -> None:
        if self.min_hxw > self.max_hxw:
            raise ConfigError(f"min_hxw {self.min_hxw} is above max_hxw {self.max_hxw}")
        if self.min_num_frames > self.num_frames:
            raise ConfigError(f"min_num_frames {self.min_num_frames} is above num_frames "
                              f"{self.num_frames}")


@dataclass(frozen=True)
class ClipPlan:
    """How to turn one clip into a bucket-shaped sample."""

    bucket: Bucket
    resize: tuple[int, int]  # (width, height) of the cropped region after resizing
    times_s: tuple[float, ...]  # source times of the frames to take, relative to the clip start


def resize_for_area(width: int, height: int, min_hxw: int, max_hxw: int) -> tuple[int, int]:
    area = width * height
    scale = math.sqrt(min(max(area, min_hxw), max_hxw) / area)
    return round(width * scale), round(height * scale)


def plan_clip(width: int, height: int, num_frames: int, fps: float, cfg: BucketConfig,
              temporal_factor: int = 4) -> ClipPlan | None:
    """The bucket and frame times of a clip (`num_frames` == 1 for an image), or None to skip.
    `temporal_factor`: the codec's time compression (T is cut to 1 + temporal_factor * n)."""
    new_w, new_h = resize_for_area(width, height, cfg.min_hxw, cfg.max_hxw)
    crop_w, crop_h = new_w // cfg.hw_stride * cfg.hw_stride, new_h // cfg.hw_stride * cfg.hw_stride
    if crop_w == 0 or crop_h == 0:
        return None
    if num_frames <= 1:
        return ClipPlan((1, crop_h, crop_w), (new_w, new_h), (0.0,))
    if fps <= 0:  # a video without a usable frame rate cannot be resampled
        return None
    if cfg.frame_stride is not None:
        step_s = cfg.frame_stride / fps
        available = (num_frames - 1) // cfg.frame_stride + 1
    else:  # frames available at train_fps; a clip slower than train_fps keeps its own frames
        step_s = 1.0 / min(fps, cfg.train_fps)
        available = int(math.floor(num_frames / fps / step_s + 1e-6))
    if available < cfg.min_num_frames:
        return None
    k = temporal_factor
    frames = (min(available, cfg.num_frames) - 1) // k * k + 1
    return ClipPlan((frames, crop_h, crop_w), (new_w, new_h),
                    tuple(i * step_s for i in range(frames)))


def latent_shape(bucket: Bucket, temporal_factor: int, spatial_factor: int) -> Bucket:
    """Latent (T, H, W) of a pixel bucket: 1 + (T - 1) / ft frames (causal VAE), H / fs, W / fs."""
    t, h, w = bucket
    return 1 + (t - 1) // temporal_factor, h // spatial_factor, w // spatial_factor
