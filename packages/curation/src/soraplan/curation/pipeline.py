"""The curation job: input clips -> Ray Data actor pool -> Parquet shards + summary.

The output folder follows core's job-output convention (`soraplan.core.outputs`): run.yaml,
result files under `<out>/clips`, unreadable files of a killed run moved to `<out>/partial`,
summary.json. Resume is keyed on input clip ids: clips whose rows are already in `<out>/clips`
are skipped, so a rerun adds exactly the missing clips. Files are only ever added.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import pyarrow as pa
import pyarrow.parquet as pq

from soraplan.core.config import ConfigError, PositiveInt
from soraplan.core.inputs import InputClip, read_inputs
from soraplan.core.outputs import done_ids, move_partial_files, prepare_output_dir, write_json_atomic
from soraplan.core.ray_session import RayConfig
from soraplan.core.schema import shard_files, write_table_atomic
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.resources import Resources
from soraplan.curation.summary import summarize

log = logging.getLogger(__name__)

WRITE_TASK_CPUS = 0.1  # what each Parquet write task reserves


@dataclass
class CurateConfig:
    input: str | None = None  # Panda-70M CSV manifest or a directory of videos
    video_root: str | None = None  # where the manifest's videos live (default: its folder)
    # Videos must lie inside the video root / input folder once symlinks are resolved; true
    # admits links that point elsewhere (e.g. a folder of links into a shared store).
    allow_outside_root: bool = False
    out: str | None = None
    rows_per_file: PositiveInt = 256  # rows gathered before a shard file is written
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    # ray.num_cpus / ray.num_gpus: per analyzer actor; None derives them from the stages.
    ray: RayConfig = field(default_factory=functools.partial(RayConfig, concurrency=2))


def set_threads(num_cpus: float) -> None:
    """Keep each actor's math libraries within its CPU share, so actors don't oversubscribe."""
    threads = max(1, int(num_cpus))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    cv2.setNumThreads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


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
        raise ConfigError("set input and out (--input/--out or the config keys input/out)")
    started = time.time()
    # Set the stages up once in the driver first: a missing weight fails here, before any data.
    analyzer = ClipAnalyzer(cfg.analyze)
    try:
        clips = read_inputs(cfg.input, cfg.video_root, cfg.allow_outside_root)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read input {cfg.input}: {exc}") from None
    out = prepare_output_dir(cfg.out, cfg)
    clips_dir = out / "clips"
    unique: dict[str, InputClip] = {}
    for clip in clips:
        unique.setdefault(clip.source_id, clip)
    move_partial_files(clips_dir, out)
    done = done_ids(clips_dir, "source_id")
    todo = [c for c in unique.values() if c.source_id not in done]
    log.info("%d input clips (%d duplicates), %d already done, %d to process",
             len(clips), len(clips) - len(unique), len(unique) - len(todo), len(todo))
    if todo:
        _run_ray(cfg, todo, clips_dir, analyzer.schema)
    _drop_duplicate_rows(clips_dir)
    summary = summarize(out, cfg, inputs=len(clips), duplicates=len(clips) - len(unique),
                        wall_s=time.time() - started)
    write_json_atomic(out / "summary.json", summary)
    return summary


def _run_ray(cfg: CurateConfig, todo: list[InputClip], clips_dir: Path, schema: pa.Schema) -> None:
    ray = cfg.ray.init()
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
        schema=schema,
        min_rows_per_file=cfg.rows_per_file,
        ray_remote_args={"num_cpus": WRITE_TASK_CPUS},
    )
