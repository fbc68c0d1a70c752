"""How every batch job writes its output folder and resumes from it.

    <out>/run.yaml        the effective config of the last run
    <out>/<results>/      Parquet files, each written atomically (hidden temp file, fsync, rename)
    <out>/partial/        files a killed run left unreadable, moved aside on the next run
    <out>/summary.json    counts of the last run
    <out>/.lock           held (flock) by the job writing the folder; names it

Resume is keyed on ids: a rerun reads the id column of the complete result files and does only
the inputs whose ids are missing. Result files are only ever added.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from soraplan.core.config import ConfigError, dump_yaml
from soraplan.core.schema import shard_files, write_table_atomic

log = logging.getLogger(__name__)

PARTIAL_DIR = "partial"
LOCK_FILE = ".lock"


def prepare_output_dir(out: str | os.PathLike[str], cfg: Any = None) -> Path:
    """Create the job's output folder and write `run.yaml`; a file in its place is a ConfigError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(f"cannot create output folder {out}: {exc}") from None
    if cfg is not None:
        dump_yaml(cfg, out / "run.yaml")
    return out


@contextlib.contextmanager
def exclusive_output(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Create the output folder and hold `<out>/.lock` while a job writes it. A second job into
    the same folder stops at once with a ConfigError that names the holder. The lock is the
    kernel's (flock), so a killed job leaves none behind."""
    import fcntl

    out = prepare_output_dir(out)
    with open(out / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "a process"
            raise ConfigError(f"output {out} is being written by another job ({holder}); "
                              "wait for it to finish or choose another --out") from None
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield out


def move_partial_files(folder: str | os.PathLike[str], out: str | os.PathLike[str]) -> list[Path]:
    """Move Parquet files under `folder` that have no footer (cut off mid-write) to <out>/partial."""
    moved = []
    for path in shard_files(folder) if Path(folder).exists() else []:
        try:
            pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            aside = Path(out) / PARTIAL_DIR / path.name
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), aside)
            log.warning("moved unreadable result file %s aside (%s)", path.name, exc)
            moved.append(aside)
    return moved


def read_results(folder: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """All rows of the complete result files under `folder` (empty table when there are none)."""
    files = shard_files(folder) if Path(folder).exists() else []
    tables = [pq.read_table(f, columns=columns) for f in files]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns or []})
    return pa.concat_tables(tables, promote_options="default")


def done_ids(folder: str | os.PathLike[str], column: str) -> set[str]:
    """Ids already written under `folder`: what a resumed run skips."""
    return set(read_results(folder, [column])[column].to_pylist())


def write_part(folder: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]] | pa.Table,
               schema: pa.Schema | None = None) -> Path:
    """Write one result file atomically; names sort by write time."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    return write_table_atomic(table, Path(folder) / name)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


SAMPLE_INDEX = "samples.jsonl"  # a folder of sampled videos: one {"video", "prompt", "seed"} a line


def write_sample_index(folder: str | os.PathLike[str], entries: Iterable[Mapping[str, Any]]) -> Path:
    """Index the sampled videos in `folder` (`video` is a file name in it) with prompt and seed,
    plus any other fields an entry carries (e.g. a reconstruction's PSNR)."""
    path = Path(folder) / SAMPLE_INDEX
    lines = "".join(json.dumps({"video": e["video"], "prompt": e["prompt"], "seed": e["seed"], **e}) + "\n"
                    for e in entries)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(lines)
    os.replace(tmp, path)
    return path


def read_sample_index(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(folder) / SAMPLE_INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: expected a folder of sampled videos with {SAMPLE_INDEX}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
