"""Kept clips as the trainers' own annotation files: Open-Sora-Plan JSON and Open-Sora CSV.

Open-Sora-Plan v1.3 reads a JSON list of clips with the segment as `cut` = [start, end) frame
indices of the source video. Open-Sora reads a CSV with one row per clip file; our clips are
spans of their source videos, so `clip_id, start_s, end_s` follow its columns (its loader reads
columns by name and ignores extra ones).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Literal

from soraplan.core.schema import STATUS_KEPT, read_clip_table

OPENSORA_COLUMNS = ["path", "text", "num_frames", "width", "height", "aspect_ratio", "fps", "aes", "flow",
                    "clip_id", "start_s", "end_s"]
# Best caption first: refined by the captioner, then its VLM caption, then the manifest's.
CAPTION_COLUMNS = ("refined_caption", "vlm_caption", "caption")


def best_caption(row: dict[str, Any]) -> str:
    return next((row[c] for c in CAPTION_COLUMNS if row.get(c)), "")


def osp_record(row: dict[str, Any]) -> dict[str, Any]:
    fps = row["fps"]
    start = round(row["start_s"] * fps)
    return {
        "path": row["path"],
        "cap": best_caption(row),
        "resolution": {"height": row["height"], "width": row["width"]},
        "num_frames": row["num_frames"],
        "fps": fps,
        "aesthetic": row["aesthetic_score"],
        "cut": [start, start + row["num_frames"]],
        "crop": row["crop"],
        "motion": row["motion_score"],
    }


def opensora_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": row["path"], "text": best_caption(row), "num_frames": row["num_frames"],
        "width": row["width"], "height": row["height"], "aspect_ratio": row["height"] / row["width"],
        "fps": row["fps"], "aes": row["aesthetic_score"], "flow": row["motion_score"],
        "clip_id": row["clip_id"], "start_s": row["start_s"], "end_s": row["end_s"],
    }


def export_kept(out: str | os.PathLike[str], fmt: Literal["osp", "opensora"], to: str | os.PathLike[str]) -> int:
    """Write the kept clips of the shards under `out` to `to`; returns how many."""
    rows = sorted(read_clip_table(out, status=STATUS_KEPT).to_pylist(), key=lambda r: r["clip_id"])
    to = Path(to)
    to.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "osp":
        to.write_text(json.dumps([osp_record(r) for r in rows], indent=1))
    elif fmt == "opensora":
        with open(to, "w", newline="") as fh:
            writer = csv.DictWriter(fh, OPENSORA_COLUMNS)
            writer.writeheader()
            # An unscored value (None) is written as an empty cell, which pandas reads as NaN.
            writer.writerows(opensora_record(r) for r in rows)
    else:
        raise ValueError(f"unknown export format {fmt!r}: osp or opensora")
    return len(rows)
