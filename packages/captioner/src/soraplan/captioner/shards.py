"""Input shards, resumable result parts and final output shards of the captioner's batch jobs.

The jobs follow the shared output convention (`soraplan.core.outputs`): `<out>/run.yaml`, results
streamed into `<out>/parts/part-*.parquet` as they arrive (so a crashed or stopped run resumes
from what it has; parts cut off mid-write go to `<out>/partial/`), then `assemble` joins all parts
onto the input rows and writes `<out>/clips/<input shard>.parquet`, never dropping a row, and
`<out>/summary.json`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from soraplan.core.inputs import InputClip, read_video_dir
from soraplan.core.outputs import move_partial_files, prepare_output_dir, read_results
from soraplan.core.ray_session import RayConfig
from soraplan.core.schema import (
    ERROR_STAGE_INPUTS,
    STATUS_ERROR,
    STATUS_KEPT,
    empty_clip_row,
    rows_to_table,
    shard_files,
    write_table_atomic,
)

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
    return {"clips-00000.parquet": rows_to_table(folder_row(c) for c in clips)}


def folder_row(clip: InputClip) -> dict[str, Any]:
    """The clip row of a path in a folder of videos: the whole file, kept, with the input id as
    its id, as curation names it. A path that is no readable file inside the folder (a FIFO, a
    folder named like a video, a broken link) is an error row, as curation makes it, so no
    decode task opens it and no later run retries it."""
    row = empty_clip_row(clip_id=clip.source_id, source_id=clip.source_id, path=clip.path,
                         start_s=0.0, status=STATUS_KEPT)
    if clip.error:
        row.update(status=STATUS_ERROR, error=clip.error, error_stage=ERROR_STAGE_INPUTS)
    return row


def kept_rows(tables: Mapping[str, pa.Table], columns: list[str]) -> list[dict[str, Any]]:
    rows = []
    for table in tables.values():
        kept = table.filter(pc.equal(table["status"], STATUS_KEPT))
        rows.extend(kept.select([c for c in columns if c in kept.column_names]).to_pylist())
    return rows


def count_status(tables: Mapping[str, pa.Table], status: str) -> int:
    return sum(pc.sum(pc.equal(t["status"], status)).as_py() or 0 for t in tables.values())


def open_output(out: str | os.PathLike[str], cfg: Any) -> Path:
    """The job's output folder with its `run.yaml`; parts a killed run cut off are moved aside."""
    folder = prepare_output_dir(out, cfg)
    move_partial_files(folder / PARTS_DIR, folder)
    return folder


def latest_results(out: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """clip_id -> result row of the complete parts; later parts win (a retried error)."""
    return {row["clip_id"]: row for row in read_results(Path(out) / PARTS_DIR).to_pylist()}


def model_stage(ray_cfg: RayConfig) -> dict[str, Any]:
    """`map_batches` arguments of a model stage: `ray.concurrency` actors, each loading the model
    once and taking `ray.batch_size` rows a call with the resources the `ray:` section reserves."""
    import ray

    return dict(batch_size=ray_cfg.batch_size, compute=ray.data.ActorPoolStrategy(size=ray_cfg.concurrency),
                num_cpus=ray_cfg.num_cpus, num_gpus=ray_cfg.num_gpus)


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
