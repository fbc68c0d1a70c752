"""Latent shards: what `soraplan-dit encode` writes and DiT training reads.

<root>/latents/<clip_id>.safetensors  {"latent": (C, T, H, W), "text_states": (L, D)}
<root>/index/*.parquet                 one row per sample: clip_id, file, caption, latent T/H/W
<root>/null_text.safetensors           {"text_states": (L, D)}: the empty prompt, for caption
                                       dropout and classifier-free guidance
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import torch
from safetensors.torch import load_file, save_file
from soraplan.core.config import ConfigError, NonNegativeInt
from soraplan.core.outputs import read_results, write_part
from soraplan.model.dit.text import pad_text_states
from torch import Tensor

INDEX_DIR = "index"

LATENT_INDEX_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("file", pa.string()),  # relative to the root
    pa.field("caption", pa.string()),
    pa.field("latent_t", pa.int64()),
    pa.field("latent_h", pa.int64()),
    pa.field("latent_w", pa.int64()),
])


def _save_atomic(tensors: dict[str, Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def write_latent(root: str | os.PathLike[str], clip_id: str, caption: str, latent: Tensor,
                 text_states: Tensor) -> dict[str, object]:
    """Save one sample; returns its index row."""
    file = f"latents/{clip_id.replace('/', '_')}.safetensors"
    _save_atomic({"latent": latent, "text_states": text_states}, Path(root) / file)
    t, h, w = latent.shape[1:]
    return dict(clip_id=clip_id, file=file, caption=caption, latent_t=t, latent_h=h, latent_w=w)


def write_index(root: str | os.PathLike[str], rows: list[dict[str, object]]) -> Path:
    """Add index rows as one atomically written part."""
    return write_part(Path(root) / INDEX_DIR, rows, LATENT_INDEX_SCHEMA)


def write_null_text(root: str | os.PathLike[str], text_states: Tensor) -> None:
    _save_atomic({"text_states": text_states}, Path(root) / "null_text.safetensors")


class LatentDataset:
    """Samples of a latent-shard root; `bucket_of[i]` is sample i's latent (T, H, W)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        table = read_results(self.root / INDEX_DIR)
        if table.num_rows == 0:
            raise FileNotFoundError(f"no latent index under {self.root / INDEX_DIR}; "
                                    "run soraplan-dit encode or set data.root")
        self.rows = table.sort_by("clip_id").to_pylist()
        self.bucket_of = [(r["latent_t"], r["latent_h"], r["latent_w"]) for r in self.rows]
        self.null_text = load_file(str(self.root / "null_text.safetensors"))["text_states"]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: list[int], drop_caption: list[bool],
              first_frame: list[bool] | None = None) -> dict[str, Tensor]:
        """Stacked latents and padded text states; dropped captions become the empty prompt;
        `first_frame[i]` keeps only the first latent frame of sample i (an image latent)."""
        latents, texts = [], []
        for i, (index, drop) in enumerate(zip(indices, drop_caption)):
            tensors = load_file(str(self.root / self.rows[index]["file"]))
            latent = tensors["latent"].float()
            latents.append(latent[:, :1] if first_frame and first_frame[i] else latent)
            texts.append(self.null_text if drop else tensors["text_states"])
        text_states, text_mask = pad_text_states([t.float() for t in texts])
        return {"latents": torch.stack(latents), "text_states": text_states,
                "text_mask": text_mask}


@dataclass
class ClipSelection:
    """Which curated clips to train on, by their curation columns (e.g. Open-Sora's fine-tuning
    stage on high-quality clips). A clip whose column is null fails a set threshold."""

    min_aesthetic_score: float | None = None
    min_motion_score: float | None = None
    max_motion_score: float | None = None
    camera_motion: list[str] = field(default_factory=list)  # allowed values; empty: any
    camera_motion_column: str = "camera_motion"
    min_caption_words: NonNegativeInt | None = None

    def active(self) -> bool:
        return any(v is not None for v in (self.min_aesthetic_score, self.min_motion_score,
                                           self.max_motion_score, self.min_caption_words)) \
            or bool(self.camera_motion)

    def clip_ids(self, table: pa.Table, caption_column: str) -> set[str]:
        """The clip ids of `table` (curated rows) that pass every threshold."""
        keep = pc.is_valid(table["clip_id"])
        tests = [("min_aesthetic_score", "aesthetic_score", pc.greater_equal),
                 ("min_motion_score", "motion_score", pc.greater_equal),
                 ("max_motion_score", "motion_score", pc.less_equal)]
        for key, column, compare in tests:
            if getattr(self, key) is not None:
                keep = pc.and_(keep, compare(self._column(table, column, key), getattr(self, key)))
        if self.camera_motion:
            values = self._column(table, self.camera_motion_column, "camera_motion_column")
            keep = pc.and_(keep, pc.is_in(values, pa.array(self.camera_motion, pa.string())))
        if self.min_caption_words is not None:
            captions = self._column(table, caption_column, "caption_column")
            words = pc.list_value_length(pc.utf8_split_whitespace(captions))
            keep = pc.and_(keep, pc.greater_equal(words, self.min_caption_words))
        kept = table.filter(pc.fill_null(keep, False))
        return set(kept["clip_id"].to_pylist())

    @staticmethod
    def _column(table: pa.Table, column: str, key: str) -> pa.ChunkedArray:
        if column not in table.column_names:
            raise ConfigError(f"data.select.{key}: the curated shards have no {column!r} column")
        return table[column]


class SampleSource(Protocol):
    rows: list[dict]
    bucket_of: list[tuple[int, int, int]]

    def batch(self, indices: list[int], drop_caption: list[bool],
              first_frame: list[bool] | None = None) -> dict[str, Tensor]: ...


Samples = Literal["clips", "images", "joint"]


class TrainingSamples:
    """The samples a run trains on, over a latent or clip dataset: every clip as it is
    (`clips`), the first latent frame of every clip as an image (`images`: the image codec
    encodes frames alone, WF-VAE its first frame), or both (`joint`: image+video training);
    only clips in `keep_ids` when given. `bucket_of` and `batch` as the datasets'."""

    def __init__(self, dataset: SampleSource, samples: Samples = "clips",
                 keep_ids: set[str] | None = None) -> None:
        self.dataset = dataset
        rows = [i for i, row in enumerate(dataset.rows)
                if keep_ids is None or row["clip_id"] in keep_ids]
        if not rows:
            raise FileNotFoundError("no clip passes data.select; lower its thresholds")
        self.items = [(i, False) for i in rows] if samples != "images" else []
        if samples != "clips":  # real images (T = 1) are images already
            self.items += [(i, True) for i in rows if samples == "images"
                           or dataset.bucket_of[i][0] > 1]
        self.bucket_of = [(1, *dataset.bucket_of[i][1:]) if first else dataset.bucket_of[i]
                          for i, first in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: list[int], drop_caption: list[bool]) -> dict[str, Tensor]:
        rows, first = zip(*(self.items[i] for i in indices))
        return self.dataset.batch(list(rows), drop_caption, list(first))
