"""Input shards, resumable result parts and final output shards for the captioner's batch jobs.

A job streams its results into `<out>/parts/part-*.parquet` (atomic writes), so a crashed or
stopped run resumes from what it has; `assemble` then joins all parts onto the input rows and
writes `<out>/clips/<input shard>.parquet`, never dropping a row.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from soraplan.core.inputs import read_video_dir
from soraplan.core.schema import (
    STATUS_KEPT,
    empty_clip_row,
    rows_to_table,
    shard_files,
    write_table_atomic,
)

@dataclass
class ActorPoolConfig:
    """Resources of a model stage (Ray Data actor pool)."""

    batch_size: int = 8
    concurrency: int = 1
    num_gpus: float = 0.0
    # Fractional on small CPU nodes: a whole-CPU actor per core starves the decode tasks.
    num_cpus: float = 1.0


PARTS_DIR = "parts"


def load_inputs(source: str | os.PathLike[str]) -> dict[str, pa.Table]:
    """Output shard name -> input rows, from clip shards or from a directory of video files."""
    root = Path(source)
    files = shard_files(root) if root.exists() else []
    if files:
        base = root / "clips" if (root / "clips").is_dir() else root
        return {
            (str(f.relative_to(base)).replace(os.sep, "__") if root.is_dir() else f.name): pq.read_table(f)
            for f in files
        }
    clips = list(read_video_dir(root)) if root.is_dir() else []
    if not clips:
        raise FileNotFoundError(f"no clip shards (*.parquet) or video files under {source} (--input)")
    # A whole video file is one clip; its id is the input id, as curation gives it.
    rows = [empty_clip_row(clip_id=c.source_id, source_id=c.source_id, path=c.path, start_s=0.0,
                           status=STATUS_KEPT) for c in clips]
    return {"clips-00000.parquet": rows_to_table(rows)}


def kept_rows(tables: Mapping[str, pa.Table], columns: list[str]) -> list[dict[str, Any]]:
    rows = []
    for table in tables.values():
        kept = table.filter(pc.equal(table["status"], STATUS_KEPT))
        rows.extend(kept.select([c for c in columns if c in kept.column_names]).to_pylist())
    return rows


def read_parts(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """clip_id -> result row from every finished part; later parts win (a retried error)."""
    parts = sorted((Path(out_dir) / PARTS_DIR).glob("part-*.parquet"))  # names sort by write time
    results: dict[str, dict[str, Any]] = {}
    for part in parts:
        for row in pq.read_table(part).to_pylist():
            results[row["clip_id"]] = row
    return results


def write_part(out_dir: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    table = pa.Table.from_pylist(rows)
    return write_table_atomic(table, Path(out_dir) / PARTS_DIR / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")


def assemble(
    out_dir: str | os.PathLike[str],
    inputs: Mapping[str, pa.Table],
    results: Mapping[str, Mapping[str, Any]],
    fields: Iterable[pa.Field],
) -> int:
    """Write every input row with the result columns `fields` appended; returns rows written.

    Result keys that are input columns fill that column where it is null (a probed clip's
    size and span); result columns already in the input are replaced.
    """
    fields = list(fields)
    names = {f.name for f in fields}
    written = 0
    for shard_name, table in inputs.items():
        ids = table["clip_id"].to_pylist()
        matched = [results.get(i, {}) for i in ids]
        for col in set(table.column_names) - names:
            if any(col in r for r in matched):
                values = table[col].to_pylist()
                filled = [v if v is not None else r.get(col) for v, r in zip(values, matched)]
                table = table.set_column(table.schema.get_field_index(col), table.schema.field(col), pa.array(filled, table[col].type))
        table = table.drop_columns([c for c in table.column_names if c in names])
        for f in fields:
            table = table.append_column(f, pa.array([r.get(f.name) for r in matched], f.type))
        write_table_atomic(table, Path(out_dir) / "clips" / shard_name)
        written += table.num_rows
    return written
