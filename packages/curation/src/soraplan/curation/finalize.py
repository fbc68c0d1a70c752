"""The end of a curation job, inside Ray: each clip id kept once, and the counts of the summary.

The driver holds result file names and counts only, never the rows, so its memory does not grow
with the output (as planning, in `plan.py`). Three rounds of Ray tasks:

1. one task per group of result files reads the clip ids and the summary's columns, each row
   tagged with where it is (file ordinal << 32 | row), and splits them by a hash of the source id,
   so all rows of a source land in one partition;
2. one task per partition keeps the first copy of each clip id, files taken in order of
   modification time (a killed run's write can land after a rerun has planned, and repeat rows
   of the older file), counts the rows it keeps, and names the later copies;
3. one task per file holding later copies rewrites it without them.
"""

from __future__ import annotations

import math
import shutil
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from soraplan.core.schema import shard_files, write_table_atomic
from soraplan.curation.analyze import AnalyzeConfig
from soraplan.curation.plan import (
    IPC_OPTIONS,
    MAX_PARTITIONS,
    RESULT_FILES_PER_TASK,
    batched,
    read_partition,
    write_partitioned,
)
from soraplan.curation.summary import SUMMARY_COLUMNS, add_counts, count_rows

# Result rows per partition task: a task holds its rows' summary columns as Python objects, about
# 1.6 KB a row (bench/scale_inputs.py: 1.6 GB for one partition of 1M rows).
ROWS_PER_PARTITION = 250_000
AT = "at"  # file ordinal << 32 | row within the file: the first copy has the lowest


def finalize_output(ray: ModuleType, clips_dir: Path, scratch: Path, cfg: AnalyzeConfig) -> dict[str, Any]:
    """Drop later copies of clip ids from the result files in `clips_dir`, and return the counts
    (`summary.count_rows`) of what is left, with `later_copies`: the rows dropped."""
    files = sorted(shard_files(clips_dir), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        return {**count_rows([], cfg), "later_copies": 0}
    rows = sum(pq.read_metadata(p).num_rows for p in files)  # footers only
    partitions = min(max(1, math.ceil(rows / ROWS_PER_PARTITION)), MAX_PARTITIONS)
    schema = pq.read_schema(files[0])
    schema = pa.schema([schema.field(c) for c in ["clip_id", *SUMMARY_COLUMNS]] + [pa.field(AT, pa.int64())])
    scratch.mkdir(parents=True, exist_ok=True)
    split, partition_task, drop = (ray.remote(f) for f in (_split_results, _finalize_partition, _drop_rows))
    try:
        groups = batched([str(p) for p in files], RESULT_FILES_PER_TASK)
        ray.get([split.remote(g, i * RESULT_FILES_PER_TASK, partitions, schema, scratch)
                 for i, g in enumerate(groups)])
        results = ray.get([partition_task.remote(p, partitions, schema, scratch, cfg) for p in range(partitions)])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    later: dict[int, list[int]] = defaultdict(list)
    for result in results:
        for ordinal, rows in result["later_copies"].items():
            later[ordinal].extend(rows)
    ray.get([drop.remote(str(files[ordinal]), rows) for ordinal, rows in later.items()])
    counts = count_rows([], cfg)
    for result in results:
        counts = add_counts(counts, result["counts"])
    return {**counts, "later_copies": sum(len(rows) for rows in later.values())}


def _split_results(paths: list[str], first: int, partitions: int, schema: pa.Schema, scratch: Path) -> None:
    """Round 1 for result files `first`, `first + 1`, ... (their ordinals)."""
    with pa.ipc.new_file(scratch / f"results-{first:09d}.arrow", schema, options=IPC_OPTIONS) as writer:
        for ordinal, path in enumerate(paths, first):
            table = pq.read_table(path, columns=schema.names[:-1])
            at = (np.int64(ordinal) << 32) + np.arange(len(table), dtype=np.int64)
            write_partitioned(writer, table.append_column(AT, pa.array(at)).cast(schema), partitions)


def _finalize_partition(p: int, partitions: int, schema: pa.Schema, scratch: Path,
                        cfg: AnalyzeConfig) -> dict[str, Any]:
    """Round 2 for partition `p`: the counts of the first copies, and where the later ones are."""
    rows = read_partition(scratch.glob("results-*.arrow"), p, partitions, schema)
    firsts = rows.group_by("clip_id", use_threads=False).aggregate([(AT, "min")])[f"{AT}_min"]
    is_first = pc.is_in(rows[AT], value_set=firsts.combine_chunks())
    later_at = rows.filter(pc.invert(is_first))[AT].to_numpy()
    later: dict[int, list[int]] = defaultdict(list)
    for at in later_at.tolist():
        later[at >> 32].append(at & 0xFFFFFFFF)
    kept = rows.filter(is_first).select(SUMMARY_COLUMNS).to_pylist()
    return {"counts": count_rows(kept, cfg), "later_copies": dict(later)}


def _drop_rows(path: str, rows: list[int]) -> None:
    """Round 3: rewrite `path` without `rows`, atomically."""
    table = pq.read_table(path)
    keep = np.ones(len(table), dtype=bool)
    keep[rows] = False
    write_table_atomic(table.filter(pa.array(keep)), path)
