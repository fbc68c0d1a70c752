"""Encode kept clips of curated shards into latent shards (VAE latents + text states): the Ray
batch job `soraplan-dit encode`, and `ClipDataset`, which encodes clips on the fly in training.

The job's output folder (see `soraplan.model.dit.data` for the shard layout):

    <out>/run.yaml              the effective config of the last run
    <out>/latents/, null_text.safetensors, index/*.parquet   the latent shards
    <out>/errors/*.parquet      clips that could not be encoded (clip_id, error)
    <out>/summary.json          counts of the last run

One actor holds the WF-VAE and the text encoder, and decodes each clip itself so it is read
once. Results stream back to the driver, which writes them as atomic parts as they come. A
rerun skips clips already in the index and retries those that failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from soraplan.core.config import ConfigError, PositiveInt
from soraplan.core.outputs import (
    done_ids,
    move_partial_files,
    prepare_output_dir,
    write_json_atomic,
    write_part,
)
from soraplan.core.progress import Progress
from soraplan.core.ray_session import RayConfig, refuse_relative_paths_on_a_cluster
from soraplan.core.schema import STATUS_KEPT, read_clip_table
from soraplan.core.video import VideoDecodeError, sample_frames
from soraplan.model.dit.buckets import BucketConfig, ClipPlan, latent_shape, plan_clip
from soraplan.model.dit.codec import LatentCodec, load_codec
from soraplan.model.dit.data import (
    INDEX_DIR,
    LATENT_INDEX_SCHEMA,
    write_index,
    write_latent,
    write_null_text,
)
from soraplan.model.dit.text import TextEmbeddingCache, TextEncoder, TextEncoderConfig

ERRORS_DIR = "errors"
RESULT_SCHEMA = LATENT_INDEX_SCHEMA.append(pa.field("error", pa.string()))
ERROR_SCHEMA = pa.schema([pa.field("clip_id", pa.string()), pa.field("error", pa.string())])


@dataclass
class EncodeConfig:
    shards: str | None = None  # curated output folder (<shards>/clips/*.parquet)
    out: str = "data/latents"
    # WF-VAE or AutoencoderKL (per-frame image VAE, Open-Sora v1) save_pretrained dir or HF id
    vae: str | None = None
    vae_chunk_frames: PositiveInt | None = 16  # encode this many frames at a time (bounds memory)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    caption_column: str = "caption"  # e.g. refined_caption after the captioner jobs
    device: str = "cpu"  # of the encoding actor: cpu, cuda
    part_rows: PositiveInt = 64  # results per index part written by the driver
    # Where Ray runs; concurrency = encoding actors, batch_size = clips per actor call,
    # num_cpus / num_gpus per actor (defaults: 1 CPU, and 1 GPU when device is cuda).
    ray: RayConfig = field(default_factory=RayConfig)


def plan_for_row(row: dict[str, Any], cfg: BucketConfig,
                 temporal_factor: int = 4) -> ClipPlan | None:
    """The bucket plan of a clip row (its crop applied), or None when it is skipped."""
    x0, x1, y0, y1 = row.get("crop") or [0, row["width"], 0, row["height"]]
    fps = float(row["fps"] or 0.0)
    num_frames = row.get("num_frames")
    if not num_frames:
        num_frames = max(1, math.floor((row["end_s"] - row["start_s"]) * fps))
    return plan_clip(x1 - x0, y1 - y0, int(num_frames), fps, cfg, temporal_factor)


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


def clip_frames(row: dict[str, Any], cfg: BucketConfig,
                temporal_factor: int = 4) -> tuple[ClipPlan, np.ndarray] | None:
    """Decode a clip row into its bucket: (plan, frames), or None when it is skipped."""
    plan = plan_for_row(row, cfg, temporal_factor)
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
        self.codec = codec or load_codec(cfg.vae, "vae", cfg.device, cfg.vae_chunk_frames)
        self.text_encoder = text_encoder or cfg.text_encoder.build(cfg.device)
        null_states, null_mask = self.text_encoder.encode([""])
        write_null_text(cfg.out, null_states[0][null_mask[0]])

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for row in rows:
            clip_id = row["clip_id"]
            caption = row.get(self.cfg.caption_column) or ""
            try:
                decoded = clip_frames(row, self.cfg.buckets, self.codec.temporal_compression)
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
            plan = plan_for_row(row, buckets, codec.temporal_compression)
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

    def batch(self, indices: list[int], drop_caption: list[bool],
              first_frame: list[bool] | None = None) -> dict[str, torch.Tensor]:
        latents = [encode_frames(self.codec, decode_clip(self.rows[i], self.plans[i]), self.device)
                   for i in indices]
        if first_frame:
            latents = [z[:, :1] if first else z for z, first in zip(latents, first_frame)]
        captions = ["" if drop else self.captions[i] for i, drop in zip(indices, drop_caption)]
        text_states, text_mask = self.text_cache.get(captions)
        return {"latents": torch.stack(latents).cpu(), "text_states": text_states,
                "text_mask": text_mask}


class RayLatentEncoder:
    """The Ray actor around `LatentEncoder`: a table of clip rows in, result rows out."""

    def __init__(self, cfg: EncodeConfig) -> None:
        self.encode = LatentEncoder(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(self.encode(batch.to_pylist()), RESULT_SCHEMA)


def check_models(cfg: EncodeConfig) -> None:
    """Fail on a missing VAE or text encoder before Ray starts: read only their configs."""
    from transformers import AutoConfig

    from soraplan.model.vae.modeling_wfvae import WFVAEModel

    checks = (("vae", cfg.vae, WFVAEModel.load_config),
              ("text_encoder.path", cfg.text_encoder.path, AutoConfig.from_pretrained))
    for key, path, load in checks:
        try:
            load(path)
        except OSError as exc:
            raise FileNotFoundError(f"{key}: no model at {path!r} ({exc}); set {key} to a "
                                    "save_pretrained directory") from None


def run_encode(cfg: EncodeConfig) -> dict[str, Any]:
    """Encode the kept clips of `cfg.shards` not yet in `cfg.out`; returns the run's counts."""
    missing = [key for key in ("shards", "vae") if not getattr(cfg, key)]
    if missing:
        raise ConfigError(f"set {' and '.join(missing)} (curated clips and a WF-VAE directory)")
    refuse_relative_paths_on_a_cluster(cfg.ray.address, [("--shards", cfg.shards), ("--out", cfg.out)],
                                       models=[("vae", cfg.vae), ("text_encoder.path", cfg.text_encoder.path)])
    clips = read_clip_table(cfg.shards, status=STATUS_KEPT)
    if clips.num_rows == 0:
        raise ConfigError(f"no kept clips in {cfg.shards}; set shards to a curated output folder")
    check_models(cfg)
    out = prepare_output_dir(cfg.out, cfg)
    for folder in (INDEX_DIR, ERRORS_DIR):
        move_partial_files(out / folder, out)
    done = done_ids(out / INDEX_DIR, "clip_id")
    is_done = pc.is_in(clips["clip_id"], pa.array(sorted(done), pa.string()))
    pending = clips.filter(pc.invert(is_done))
    encoded = errors = 0
    if pending.num_rows:
        ray = cfg.ray.init()
        gpu = cfg.device.startswith("cuda")
        results = ray.data.from_arrow(pending).map_batches(
            RayLatentEncoder, fn_constructor_args=(cfg,), batch_size=cfg.ray.batch_size,
            batch_format="pyarrow", concurrency=cfg.ray.concurrency,
            num_cpus=cfg.ray.num_cpus or 1,
            num_gpus=cfg.ray.num_gpus if cfg.ray.num_gpus is not None else float(gpu))
        with Progress(pending.num_rows, "encode", "clip") as progress:
            for batch in results.iter_batches(batch_size=cfg.part_rows, batch_format="pyarrow"):
                failed = pc.is_valid(batch["error"])
                good = batch.filter(pc.invert(failed)).drop_columns(["error"]).to_pylist()
                bad = batch.filter(failed).select(ERROR_SCHEMA.names).to_pylist()
                if good:
                    write_index(out, good)
                if bad:
                    write_part(out / ERRORS_DIR, bad, ERROR_SCHEMA)
                encoded, errors = encoded + len(good), errors + len(bad)
                progress.update(batch.num_rows, errors=errors)
    summary = {"kept_clips": clips.num_rows, "already_encoded": clips.num_rows - pending.num_rows,
               "encoded": encoded, "errors": errors,
               "encoded_total": len(done_ids(out / INDEX_DIR, "clip_id")), "out": str(out)}
    write_json_atomic(out / "summary.json", summary)
    return summary
