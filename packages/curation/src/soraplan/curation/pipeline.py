"""The curation job: input clips -> Ray Data actor pool -> Parquet shards + summary.

Resume is keyed on clip ids: input clips whose rows are already in `<out>/clips` are skipped,
and files left unreadable by a killed run are moved aside, so a rerun adds exactly the
missing clips. Files are only ever added, never rewritten.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.core.config import dump_yaml
from soraplan.core.inputs import InputClip, read_inputs
from soraplan.curation.motion import set_threads
from soraplan.core.ray_session import init_ray
from soraplan.curation.resources import Resources
from soraplan.core.schema import CLIP_SCHEMA, read_clip_table, shard_files, write_table_atomic
from soraplan.curation.summary import summarize

log = logging.getLogger(__name__)

WRITE_TASK_CPUS = 0.1  # what each Parquet write task reserves


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray on the spot; "auto": join a cluster
    concurrency: int = 2  # analyzer actors
    num_cpus: float | None = None  # per actor; None: from the enabled stages' declared needs
    num_gpus: float | None = None  # per actor; None: the stages' GPU share, if the cluster has GPUs
    batch_size: int = 1  # input clips per actor call
    rows_per_file: int = 256  # rows gathered before a shard file is written
    local_num_cpus: int | None = None  # CPUs of the local instance (default: all)


@dataclass
class CurateConfig:
    input: str | None = None  # Panda-70M CSV manifest or a directory of videos
    video_root: str | None = None  # where the manifest's videos live (default: its folder)
    out: str | None = None
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def _prepare_out(out: Path) -> set[str]:
    """Move unreadable (partial) shard files aside; return source ids already done."""
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    for path in shard_files(clips_dir):
        try:
            pq.ParquetFile(path).metadata  # a file cut off mid-write has no footer
        except (pa.ArrowInvalid, OSError) as exc:
            aside = out / "partial" / path.name
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(path), aside)
            log.warning("moved partial shard %s aside (%s)", path.name, exc)
    done = read_clip_table(clips_dir, columns=["source_id"])
    return set(done["source_id"].to_pylist())


class _RayClipAnalyzer(ClipAnalyzer):
    """The analyzer as Ray constructs it in each actor: pinned to its CPU share."""

    def __init__(self, cfg: AnalyzeConfig, num_cpus: float) -> None:
        set_threads(num_cpus)
        super().__init__(cfg)


def actor_resources(cfg: CurateConfig, cluster_gpus: float) -> Resources:
    """What each analyzer actor reserves: `ray.num_cpus`/`ray.num_gpus` when the config sets
    them, else the declared need of the enabled stages (`AnalyzeConfig.resources`).

    A derived CPU request stays one write task's share under the need: with whole-CPU actors
    on every core of a node, the read and write tasks never get a CPU and the job hangs. GPU
    shares are requested only from a cluster that has GPUs; elsewhere the stages run on CPU.
    """
    need = cfg.analyze.resources()
    cpus = cfg.ray.num_cpus
    if cpus is None:
        cpus = max(need.cpus - WRITE_TASK_CPUS, WRITE_TASK_CPUS)
    gpus = cfg.ray.num_gpus
    if gpus is None:
        gpus = need.gpus if cluster_gpus > 0 else 0.0
    return Resources(cpus=cpus, gpus=gpus)


def _drop_duplicate_rows(clips_dir: Path) -> None:
    """Keep each clip id once. A write of a killed run can land after a rerun has scanned the
    folder; the older file keeps the row and the newer one is rewritten atomically without it."""
    seen: set[str] = set()
    for path in sorted(shard_files(clips_dir), key=lambda p: p.stat().st_mtime):
        ids = pq.read_table(path, columns=["clip_id"])["clip_id"].to_pylist()  # ids only: cheap
        keep = [clip_id not in seen for clip_id in ids]
        seen.update(ids)
        if not all(keep):
            write_table_atomic(pq.read_table(path).filter(pa.array(keep)), path)


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Curate `cfg.input` into `cfg.out`; returns the summary (also written to summary.json)."""
    if not cfg.input or not cfg.out:
        raise ValueError("set input and out (--input/--out or the config keys input/out)")
    started = time.time()
    # Build the scorers once in the driver first: a missing weight fails here, before any data.
    ClipAnalyzer(cfg.analyze)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, out / "run.yaml")
    try:
        clips = read_inputs(cfg.input, cfg.video_root)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read input {cfg.input}: {exc}")
    unique: dict[str, InputClip] = {}
    for clip in clips:
        unique.setdefault(clip.source_id, clip)
    done = _prepare_out(out)
    todo = [c for c in unique.values() if c.source_id not in done]
    log.info("%d input clips (%d duplicates), %d already done, %d to process",
             len(clips), len(clips) - len(unique), len(unique) - len(todo), len(todo))
    if todo:
        _run_ray(cfg, todo, out / "clips")
    _drop_duplicate_rows(out / "clips")
    summary = summarize(out, cfg, inputs=len(clips), duplicates=len(clips) - len(unique),
                        wall_s=time.time() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _run_ray(cfg: CurateConfig, todo: list[InputClip], clips_dir: Path) -> None:
    ray = init_ray(cfg.ray.address, cfg.ray.local_num_cpus)
    actor = actor_resources(cfg, ray.cluster_resources().get("GPU", 0.0))
    log.info("each of %d analyzer actors reserves %s CPU, %s GPU", cfg.ray.concurrency, actor.cpus, actor.gpus)
    items = [c.to_row() for c in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _RayClipAnalyzer,
        fn_constructor_kwargs={"cfg": cfg.analyze, "num_cpus": actor.cpus},
        batch_size=cfg.ray.batch_size,
        # Ray Data restarts a dead actor and retries its tasks, so a killed worker loses no rows.
        compute=ray.data.ActorPoolStrategy(size=cfg.ray.concurrency),
        num_cpus=actor.cpus,
        num_gpus=actor.gpus or None,
        batch_format="numpy",
    )
    ds.write_parquet(
        str(clips_dir),
        schema=CLIP_SCHEMA,
        min_rows_per_file=cfg.ray.rows_per_file,
        ray_remote_args={"num_cpus": WRITE_TASK_CPUS},
    )
