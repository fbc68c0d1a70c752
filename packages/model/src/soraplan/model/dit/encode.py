"""Encode kept clips of curated shards into latent shards (VAE latents + text states).

`LatentEncoder` is the per-actor stage of `pipelines/encode_latents.py`: it loads the VAE and
the text encoder once, then turns batches of clip rows into saved samples and index rows. A
clip that cannot be decoded is reported in the returned rows, never dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from soraplan.curation.video import VideoDecodeError, sample_frames
from soraplan.model.dit.buckets import BucketConfig, ClipPlan, plan_clip
from soraplan.model.dit.codec import LatentCodec, load_wfvae_codec
from soraplan.model.dit.data import write_latent, write_null_text
from soraplan.model.dit.text import TextEncoder, TextEncoderConfig


@dataclass
class EncodeConfig:
    shards: str = "data/curated"  # curated clip shards (<shards>/clips/*.parquet)
    out: str = "data/latents"
    vae: str = "checkpoints/wfvae"  # WF-VAE directory written by save_pretrained, or HF id
    vae_chunk_frames: int | None = 16  # encode this many frames at a time (bounds memory)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    caption_column: str = "caption"  # e.g. refined_caption after the captioner jobs
    batch_size: int = 4
    device: str = "cpu"


def clip_frames(row: dict[str, Any], cfg: BucketConfig) -> tuple[ClipPlan, np.ndarray] | None:
    """Decode a clip row into its bucket: (plan, frames T x H x W x 3 uint8), or None to skip."""
    crop = row.get("crop") or [0, row["width"], 0, row["height"]]
    x0, x1, y0, y1 = crop
    fps = float(row["fps"] or 0.0)
    num_frames = row.get("num_frames")
    if not num_frames:
        num_frames = max(1, math.floor((row["end_s"] - row["start_s"]) * fps))
    plan = plan_clip(x1 - x0, y1 - y0, int(num_frames), fps, cfg)
    if plan is None:
        return None
    times = [row["start_s"] + t for t in plan.times_s]
    frames, _ = sample_frames(row["path"], times)
    video = torch.from_numpy(frames[:, y0:y1, x0:x1]).permute(0, 3, 1, 2).float()
    width, height = plan.resize
    video = F.interpolate(video, size=(height, width), mode="bilinear", antialias=True,
                          align_corners=False)
    _, crop_h, crop_w = plan.bucket
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    video = video[:, :, top : top + crop_h, left : left + crop_w]
    return plan, video.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


class LatentEncoder:
    """Callable on a list of clip rows; returns one result row per clip (index row or error)."""

    def __init__(self, cfg: EncodeConfig, codec: LatentCodec | None = None,
                 text_encoder: TextEncoder | None = None) -> None:
        self.cfg = cfg
        # Both load (and fail) before any clip is touched.
        self.codec = codec or load_wfvae_codec(cfg.vae, "vae", cfg.device)
        self.text_encoder = text_encoder or cfg.text_encoder.build(cfg.device)
        null_states, null_mask = self.text_encoder.encode([""])
        write_null_text(cfg.out, null_states[0][null_mask[0]])

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for row in rows:
            clip_id = row["clip_id"]
            caption = row.get(self.cfg.caption_column) or ""
            try:
                decoded = clip_frames(row, self.cfg.buckets)
            except VideoDecodeError as exc:
                results.append({"clip_id": clip_id, "error": str(exc)})
                continue
            if decoded is None:
                results.append({"clip_id": clip_id, "error": "skipped: too short or too small"})
                continue
            _, frames = decoded
            video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            latent = self.codec.encode(video.to(self.cfg.device))[0].float()
            states, mask = self.text_encoder.encode([caption])
            results.append({**write_latent(self.cfg.out, clip_id, caption, latent,
                                           states[0][mask[0]]), "error": None})
        return results
