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
from soraplan.core.schema import STATUS_KEPT, read_clip_table
from soraplan.core.video import VideoDecodeError, sample_frames
from soraplan.model.dit.buckets import BucketConfig, ClipPlan, latent_shape, plan_clip
from soraplan.model.dit.codec import LatentCodec, load_wfvae_codec
from soraplan.model.dit.data import write_latent, write_null_text
from soraplan.model.dit.text import TextEmbeddingCache, TextEncoder, TextEncoderConfig


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
    ray_address: str | None = None  # None: a local Ray; "auto": the cluster this job runs on


def plan_for_row(row: dict[str, Any], cfg: BucketConfig) -> ClipPlan | None:
    """The bucket plan of a clip row (its crop applied), or None when it is skipped."""
    x0, x1, y0, y1 = row.get("crop") or [0, row["width"], 0, row["height"]]
    fps = float(row["fps"] or 0.0)
    num_frames = row.get("num_frames")
    if not num_frames:
        num_frames = max(1, math.floor((row["end_s"] - row["start_s"]) * fps))
    return plan_clip(x1 - x0, y1 - y0, int(num_frames), fps, cfg)


def decode_clip(row: dict[str, Any], plan: ClipPlan) -> np.ndarray:
    """The planned frames of a clip: cropped, resized, centre-cropped; T x H x W x 3 uint8."""
    x0, x1, y0, y1 = row.get("crop") or [0, row["width"], 0, row["height"]]
    frames, _ = sample_frames(row["path"], [row["start_s"] + t for t in plan.times_s])
    video = torch.from_numpy(frames[:, y0:y1, x0:x1]).permute(0, 3, 1, 2).float()
    width, height = plan.resize
    video = F.interpolate(video, size=(height, width), mode="bilinear", antialias=True,
                          align_corners=False)
    _, crop_h, crop_w = plan.bucket
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    video = video[:, :, top : top + crop_h, left : left + crop_w]
    return video.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def clip_frames(row: dict[str, Any], cfg: BucketConfig) -> tuple[ClipPlan, np.ndarray] | None:
    """Decode a clip row into its bucket: (plan, frames), or None when it is skipped."""
    plan = plan_for_row(row, cfg)
    return None if plan is None else (plan, decode_clip(row, plan))


def encode_frames(codec: LatentCodec, frames: np.ndarray, device: str) -> torch.Tensor:
    """uint8 frames T x H x W x 3 -> latent (C, T', H', W')."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    return codec.encode(video.to(device))[0].float()


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
            latent = encode_frames(self.codec, decoded[1], self.cfg.device)
            states, mask = self.text_encoder.encode([caption])
            results.append({**write_latent(self.cfg.out, clip_id, caption, latent,
                                           states[0][mask[0]]), "error": None})
        return results


class ClipDataset:
    """Kept clips of curated shards, encoded on the fly when drawn: training without latent
    shards. Same interface as `LatentDataset`; captions come from a filled text cache."""

    def __init__(self, shards: str, buckets: BucketConfig, codec: LatentCodec,
                 text_cache: TextEmbeddingCache, caption_column: str = "caption",
                 device: str = "cpu") -> None:
        self.codec, self.text_cache, self.device = codec, text_cache, device
        self.rows, self.plans = [], []
        for row in read_clip_table(shards, status=STATUS_KEPT).to_pylist():
            plan = plan_for_row(row, buckets)
            if plan is not None:
                self.rows.append(row)
                self.plans.append(plan)
        if not self.rows:
            raise FileNotFoundError(f"no usable kept clips in {shards}; set data.shards")
        self.captions = [row.get(caption_column) or "" for row in self.rows]
        missing = text_cache.missing(self.captions + [""])
        if missing:
            raise KeyError(f"{len(missing)} caption(s) missing from the text cache "
                           f"{text_cache.root}; fill it with TextEmbeddingCache.fill first")
        self.bucket_of = [latent_shape(p.bucket, codec.temporal_compression,
                                       codec.spatial_compression) for p in self.plans]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: list[int], drop_caption: list[bool]) -> dict[str, torch.Tensor]:
        latents = [encode_frames(self.codec, decode_clip(self.rows[i], self.plans[i]), self.device)
                   for i in indices]
        captions = ["" if drop else self.captions[i] for i, drop in zip(indices, drop_caption)]
        text_states, text_mask = self.text_cache.get(captions)
        return {"latents": torch.stack(latents).cpu(), "text_states": text_states,
                "text_mask": text_mask}
