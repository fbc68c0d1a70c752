"""Latent shards: what `soraplan-dit encode` writes and DiT training reads.

<root>/latents/<clip_id>.safetensors  {"latent": (C, T, H, W), "text_states": (L, D)}
<root>/index/*.parquet                 one row per sample: clip_id, file, caption, latent T/H/W
<root>/null_text.safetensors           {"text_states": (L, D)}: the empty prompt, for caption
                                       dropout and classifier-free guidance
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file
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

    def batch(self, indices: list[int], drop_caption: list[bool]) -> dict[str, Tensor]:
        """Stacked latents and padded text states; dropped captions become the empty prompt."""
        latents, texts = [], []
        for index, drop in zip(indices, drop_caption):
            tensors = load_file(str(self.root / self.rows[index]["file"]))
            latents.append(tensors["latent"].float())
            texts.append(self.null_text if drop else tensors["text_states"])
        text_states, text_mask = pad_text_states([t.float() for t in texts])
        return {"latents": torch.stack(latents), "text_states": text_states,
                "text_mask": text_mask}
