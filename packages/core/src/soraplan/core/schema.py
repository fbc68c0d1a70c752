"""The clip-shard schema: the one contract between curation, captioning and training.

Every stage writes rows with these columns. Curation fills the base columns; later jobs add
the extension columns listed below and never remove or rename one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

STATUS_KEPT = "kept"
STATUS_REJECTED = "rejected"
STATUS_ERROR = "error"
STATUSES = (STATUS_KEPT, STATUS_REJECTED, STATUS_ERROR)
# The error_stage of a row whose input (a manifest row, a path) cannot be used at all.
ERROR_STAGE_INPUTS = "inputs"

# Base columns written by `soraplan-curate`, one row per output segment.
CLIP_FIELDS: list[pa.Field] = [
    pa.field("clip_id", pa.string(), nullable=False),  # source_id + segment span, stable
    pa.field("source_id", pa.string(), nullable=False),  # input clip id: video id + span
    pa.field("segment_index", pa.int64()),  # position of this segment within its input clip
    pa.field("path", pa.string()),  # video file the segment lives in
    pa.field("start_s", pa.float64()),  # segment span in seconds of the source video
    pa.field("end_s", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("fps", pa.float64()),
    pa.field("width", pa.int64()),  # display size, rotation applied
    pa.field("height", pa.int64()),
    pa.field("codec", pa.string()),
    pa.field("caption", pa.string()),  # caption shipped with the input (Panda-70M), if any
    pa.field("matching_score", pa.float64()),
    pa.field("cut_times_s", pa.list_(pa.float64())),  # all cuts found in the input clip
    pa.field("motion_score", pa.float64()),
    pa.field("motion_backend", pa.string()),
    pa.field("ocr_area_ratio", pa.float64()),
    pa.field("subtitles", pa.bool_()),
    pa.field("crop", pa.list_(pa.int64())),  # x0, x1, y0, y1 in display pixels
    pa.field("aesthetic_score", pa.float64()),  # LAION aesthetic predictor, mean of 3 frames
    pa.field("status", pa.string(), nullable=False),
    pa.field("reject_reasons", pa.list_(pa.string())),
    pa.field("error", pa.string()),
    pa.field("error_stage", pa.string()),  # stage that failed: inputs, probe, decode, ...
    # Wall time per stage for the whole input clip, on its first row only (so sums are right).
    pa.field("stage_seconds", pa.map_(pa.string(), pa.float64())),
]
CLIP_SCHEMA = pa.schema(CLIP_FIELDS)

# Columns added by the captioner jobs.
CAPTION_FIELDS: list[pa.Field] = [
    pa.field("vlm_caption", pa.string()),
    pa.field("caption_model", pa.string()),
    pa.field("caption_prompt", pa.string()),
]
REFINED_CAPTION_FIELDS: list[pa.Field] = [pa.field("refined_caption", pa.string())]
CAPTION_ERROR_FIELD = pa.field("caption_error", pa.string())
REFINE_ERROR_FIELD = pa.field("refine_error", pa.string())  # why a kept row has no refined_caption

# Reject reasons of the built-in curation stages. The set is open: each stage declares the
# reasons it gives (a new stage brings its own), and readers treat unknown ones as plain strings.
REASON_TOO_SHORT = "too_short"
REASON_STATIC = "static"
REASON_CHAOTIC = "chaotic"
REASON_SUBTITLES = "subtitles"
REASON_LOW_AESTHETIC = "low_aesthetic"

# The curation camera stage's labels (column `camera_motion`); the captioner reads them too.
CAMERA_LABELS = ("static", "pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "mixed")

def empty_clip_row(**values: Any) -> dict[str, Any]:
    """A row with every base column present (None where unknown), updated with `values`."""
    row: dict[str, Any] = {f.name: None for f in CLIP_FIELDS}
    row["cut_times_s"] = []
    row["reject_reasons"] = []
    row.update(values)
    unknown = set(values) - set(row)
    if unknown:
        raise KeyError(f"not clip-shard columns: {sorted(unknown)}")
    return row


def schema_with(*extra: Iterable[pa.Field]) -> pa.Schema:
    """The base clip schema extended with extra column groups, e.g. CAPTION_FIELDS."""
    fields = list(CLIP_FIELDS)
    for group in extra:
        fields.extend(group)
    return pa.schema(fields)


def rows_to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema = CLIP_SCHEMA) -> pa.Table:
    rows = list(rows)
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema)


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str], **options: Any) -> Path:
    """Write a Parquet file so that readers never see a partial file: write, fsync, rename.
    `options` go to `pyarrow.parquet.write_table` (e.g. row_group_size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, **options)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def shard_files(shard_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete Parquet shards under `shard_dir` (or `shard_dir/clips`), in a stable order.

    Hidden and temporary files are partial writes and never count.
    """
    root = Path(shard_dir)
    if (root / "clips").is_dir():
        root = root / "clips"
    if root.is_file():
        return [root]
    return sorted(iter_shard_files(root))


def iter_shard_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """The complete Parquet shards under `folder` as they are found, for folders too large to
    list at once."""
    return (p for p in Path(folder).rglob("*.parquet") if not p.name.startswith("."))


def read_clip_table(
    shard_dir: str | os.PathLike[str], status: str | None = None, columns: list[str] | None = None
) -> pa.Table:
    """All rows of the shards in `shard_dir`, optionally only those with the given status."""
    files = shard_files(shard_dir)
    if not files:
        return CLIP_SCHEMA.empty_table()
    tables = [pq.read_table(f, columns=columns) for f in files]
    table = pa.concat_tables(tables, promote_options="default")
    if status is not None:
        table = table.filter(pc.equal(table["status"], status))
    return table
