"""Input planning inside Ray: which input clips a curation run has left to process.

The driver holds file names and counts only, never the clips or their ids, so its memory does
not grow with the manifests or the output. Two rounds of Ray tasks:

1. one task per input source (a manifest CSV, or the directory of videos) parses it and writes
   its clips, each tagged with its position in the input, split into `partitions` by a hash of
   the clip id; one task per group of result files does the same with the ids already written;
2. one task per partition then holds every copy of each of its ids: it keeps the first copy in
   input order (later copies are duplicates), drops the ids already written, counts, and writes
   what is left to `todo-<partition>.parquet`.

The analyzers read the todo files themselves, one work unit (a run of rows of a todo file) per
call, so the driver hands Ray Data a list of at most `MAX_WORK_UNITS` small units, not clips.

Round 1 hands its tables to round 2 through Arrow IPC files in a scratch folder on the output's
storage, not as task results: Ray keeps small task results in the caller's own memory, so
thousands of small tables returned to the driver would grow it after all.
"""

from __future__ import annotations

import math
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from soraplan.core.cli import one_line
from soraplan.core.config import ConfigError
from soraplan.core.inputs import InputClip, InputSource
from soraplan.core.schema import iter_shard_files, write_table_atomic

# The columns of `InputClip`, which the analyzer rebuilds it from, plus the position in the input.
CLIP_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("path", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("caption", pa.string()), ("matching_score", pa.float64()), ("error", pa.string()),
    ("error_kind", pa.string()),
])
ORDER = "order"  # source index << 32 | clip index within the source: the first copy has the lowest
_BUCKET_SCHEMA = CLIP_SCHEMA.append(pa.field(ORDER, pa.int64()))
_DONE_SCHEMA = pa.schema([("source_id", pa.string())])
# Manifest bytes per partition: ~300k clips, whose planning task peaks near 400 MB (bench/scale_inputs.py
# measured ~1.1 GB for a partition of 1M clips).
PARTITION_BYTES = 32 << 20
MAX_PARTITIONS = 1024
CLIPS_PER_CHUNK = 1 << 16  # clips a parsing task turns into Arrow at a time
RESULT_FILES_PER_TASK = 256
TODO_ROW_GROUP = 1024  # rows per row group of a todo file: a work unit reads only the groups it spans
MAX_WORK_UNITS = 100_000  # beyond this many units of `batch_size` clips, units grow instead
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


@dataclass
class InputPlan:
    """Counts of a plan; every input clip is a duplicate, already done, or to do."""

    sources: int = 0
    partitions: int = 0
    inputs: int = 0  # input clips read, duplicates included
    duplicates: int = 0  # later copies of a clip id (the first copy in input order is used)
    already_done: int = 0  # distinct clip ids whose rows are already in the output
    todo: int = 0
    input_errors: dict[str, int] = field(default_factory=dict)  # unusable inputs (distinct ids) by error_kind
    unreadable_result_files: int = 0  # cut off mid-write: a run moves them aside, a plan skips them
    seconds: float = 0.0
    todo_files: dict[Path, int] = field(default_factory=dict)  # todo file -> its rows

    def counts(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "todo_files"}

    def work_units(self, clips_per_unit: int) -> list[dict[str, Any]]:
        """The todo files cut into runs of `clips_per_unit` rows (more when there would be
        over MAX_WORK_UNITS of them), each {"file", "start", "rows"} for `read_work_unit`."""
        size = max(clips_per_unit, math.ceil(self.todo / MAX_WORK_UNITS))
        return [{"file": str(path), "start": start, "rows": min(size, rows - start)}
                for path, rows in self.todo_files.items() for start in range(0, rows, size)]


def read_work_unit(file: str, start: int, rows: int) -> pa.Table:
    """Rows [start, start + rows) of a todo file, reading only the row groups they lie in."""
    parquet = pq.ParquetFile(file)
    groups, first_row, row = [], 0, 0
    for g in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(g).num_rows
        if row + size > start and row < start + rows:
            first_row = first_row if groups else row
            groups.append(g)
        row += size
    return parquet.read_row_groups(groups).slice(start - first_row, rows)


def partition_count(sources: list[InputSource]) -> int:
    manifest_bytes = sum(s.path.stat().st_size for s in sources if s.path.is_file())
    return min(max(1, math.ceil(manifest_bytes / PARTITION_BYTES)), MAX_PARTITIONS)


def plan_inputs(ray: ModuleType, sources: list[InputSource], results_dir: Path, scratch: Path, *,
                video_root: str | None = None, allow_outside_root: bool = False, write_todo: bool = True,
                partitions: int | None = None) -> InputPlan:
    """Plan the clips of `sources` against the results under `results_dir`. With `write_todo`,
    the clips to process are left in `scratch` (`InputPlan.todo_files`) for the caller to remove."""
    started = time.perf_counter()
    partitions = partitions or partition_count(sources)
    scratch.mkdir(parents=True, exist_ok=True)
    split_source, split_done, plan_partition = (ray.remote(f) for f in (_split_source, _split_done, _plan_partition))
    try:
        parsed = [split_source.remote(s, i, video_root, allow_outside_root, partitions, scratch)
                  for i, s in enumerate(sources)]
        groups = batched(_result_files(results_dir), RESULT_FILES_PER_TASK)
        done = [split_done.remote(g, i, partitions, scratch) for i, g in enumerate(groups)]
        problem = next((p for p in ray.get(parsed) if p), None)
        unreadable = sum(ray.get(done))  # before raising: these tasks write into the scratch
        if problem:
            raise ConfigError(f"cannot read input {problem}")
        counts = ray.get([plan_partition.remote(p, partitions, scratch, write_todo) for p in range(partitions)])
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for bucket in [*scratch.glob("inputs-*.arrow"), *scratch.glob("done-*.arrow")]:
        bucket.unlink()
    errors = sum((Counter(c["input_errors"]) for c in counts), Counter())
    plan = InputPlan(sources=len(sources), partitions=partitions, unreadable_result_files=unreadable,
                     input_errors=dict(sorted(errors.items())),
                     todo_files={_todo_file(scratch, p): c["todo"] for p, c in enumerate(counts)
                                 if write_todo and c["todo"]})
    for key in ("inputs", "duplicates", "already_done", "todo"):
        setattr(plan, key, sum(c[key] for c in counts))
    plan.seconds = time.perf_counter() - started
    return plan


def _todo_file(scratch: Path, partition: int) -> Path:
    return scratch / f"todo-{partition:05d}.parquet"


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _result_files(results_dir: Path) -> Iterator[str]:
    return (str(p) for p in iter_shard_files(results_dir)) if results_dir.is_dir() else iter(())


def _partition_of(ids: pa.ChunkedArray | pa.Array, partitions: int) -> np.ndarray:
    """A stable hash of each id, modulo `partitions`: the same id lands in the same partition
    in every task, on every machine."""
    return np.fromiter((zlib.crc32(i.encode()) % partitions for i in ids.to_pylist()), np.int64, len(ids))


def write_partitioned(writer: pa.ipc.RecordBatchFileWriter, table: pa.Table, partitions: int) -> None:
    """Append one record batch per partition (empty ones too), so batch k of a file belongs to
    partition k % partitions."""
    parts = _partition_of(table["source_id"], partitions)
    by_partition = table.take(np.argsort(parts, kind="stable")).combine_chunks()
    batch = by_partition.to_batches()[0] if len(by_partition) else None
    offsets = np.concatenate([[0], np.cumsum(np.bincount(parts, minlength=partitions))])
    for p in range(partitions):
        if batch is None:
            writer.write_batch(pa.RecordBatch.from_pylist([], table.schema))
        else:
            writer.write_batch(batch.slice(offsets[p], offsets[p + 1] - offsets[p]))


def _clip_table(clips: list[InputClip], first: int) -> pa.Table:
    columns = {name: [getattr(c, name) for c in clips] for name in CLIP_SCHEMA.names}
    columns[ORDER] = list(range(first, first + len(clips)))
    return pa.table(columns, _BUCKET_SCHEMA)


def _split_source(source: InputSource, index: int, video_root: str | None, allow_outside_root: bool,
                  partitions: int, scratch: Path) -> str | None:
    """Round 1 for one source; returns why the source cannot be read at all, or None."""
    try:
        with pa.ipc.new_file(scratch / f"inputs-{index:06d}.arrow", _BUCKET_SCHEMA, options=IPC_OPTIONS) as writer:
            clips = source.clips(video_root, allow_outside_root)
            for n, chunk in enumerate(batched(clips, CLIPS_PER_CHUNK)):
                write_partitioned(writer, _clip_table(chunk, (index << 32) + n * CLIPS_PER_CHUNK), partitions)
    except (ConfigError, OSError) as exc:  # no manifest header, unreadable file
        return f"{source.path}: {one_line(exc)}"
    return None


def _split_done(result_files: list[str], index: int, partitions: int, scratch: Path) -> int:
    """Round 1 for a group of result files; returns how many could not be read."""
    ids, unreadable = [], 0
    for path in result_files:
        try:
            ids.append(pq.read_table(path, columns=["source_id"])["source_id"])
        except (pa.ArrowInvalid, OSError):
            unreadable += 1
    table = pa.table({"source_id": pc.unique(pa.chunked_array(ids, pa.string()))})
    with pa.ipc.new_file(scratch / f"done-{index:06d}.arrow", _DONE_SCHEMA, options=IPC_OPTIONS) as writer:
        write_partitioned(writer, table, partitions)
    return unreadable


def read_partition(files: Iterable[Path], p: int, partitions: int, schema: pa.Schema) -> pa.Table:
    batches = []
    for path in sorted(files):
        with pa.ipc.open_file(pa.memory_map(str(path))) as reader:
            batches += [reader.get_batch(i) for i in range(p, reader.num_record_batches, partitions)]
    return pa.Table.from_batches(batches, schema)


def _plan_partition(p: int, partitions: int, scratch: Path, write_todo: bool) -> dict[str, Any]:
    """Round 2 for partition `p`: first copies, minus the ids already written; counts."""
    clips = read_partition(scratch.glob("inputs-*.arrow"), p, partitions, _BUCKET_SCHEMA)
    done = read_partition(scratch.glob("done-*.arrow"), p, partitions, _DONE_SCHEMA)["source_id"]
    firsts = clips.group_by("source_id", use_threads=False).aggregate([(ORDER, "min")])[f"{ORDER}_min"]
    unique = clips.filter(pc.is_in(clips[ORDER], value_set=firsts.combine_chunks()))
    is_done = pc.is_in(unique["source_id"], value_set=done.combine_chunks())
    todo = unique.filter(pc.invert(is_done)).sort_by(ORDER).drop_columns([ORDER])
    if write_todo and len(todo):
        write_table_atomic(todo, _todo_file(scratch, p), row_group_size=TODO_ROW_GROUP)
    errors = {e["values"]: e["counts"] for e in unique["error_kind"].drop_null().value_counts().to_pylist()}
    return {"inputs": len(clips), "duplicates": len(clips) - len(unique),
            "already_done": pc.sum(is_done).as_py() or 0, "todo": len(todo), "input_errors": errors}
