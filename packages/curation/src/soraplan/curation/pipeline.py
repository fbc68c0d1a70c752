"""The curation job: input planning -> Ray Data actor pool -> Parquet shards + summary.

The output folder follows core's job-output convention (`soraplan.core.outputs`): run.yaml,
result files under `<out>/clips`, unreadable files of a killed run moved to `<out>/partial`,
summary.json, and the planning scratch under `<out>/plan` while the job runs. Resume is keyed on
input clip ids: clips whose rows are already in `<out>/clips` are skipped, so a rerun adds
exactly the missing clips. Files are only ever added, except that the end of a run drops later
copies of a clip id that a killed run's late write left. Planning (`plan.py`) and that end
(`finalize.py`, which also counts the summary) run inside Ray, so the driver's memory grows
with neither the manifests nor the output.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from soraplan.core.config import ConfigError, PositiveInt
from soraplan.core.inputs import InputSource, expand_inputs
from soraplan.core.outputs import exclusive_output, move_partial_files, prepare_output_dir, write_json_atomic
from soraplan.core.ray_session import RayConfig
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.finalize import finalize_output
from soraplan.curation.plan import InputPlan, plan_inputs, read_work_unit
from soraplan.curation.resources import Resources
from soraplan.curation.summary import summary_from_counts

log = logging.getLogger(__name__)

WRITE_TASK_CPUS = 0.1  # what each Parquet write task reserves
PLAN_DIR = "plan"  # <out>/plan/<run>: the scratch of input planning, removed when the run ends


@dataclass
class CurateConfig:
    # Panda-70M CSV manifests (a path, a glob such as manifests/*.csv, or a list of either), or
    # a directory of videos.
    input: str | list[str] | None = None
    video_root: str | None = None  # where the manifests' videos live (default: each one's folder)
    # Videos must lie inside the video root / input folder once symlinks are resolved; true
    # admits links that point elsewhere (e.g. a folder of links into a shared store).
    allow_outside_root: bool = False
    out: str | None = None
    rows_per_file: PositiveInt = 256  # rows gathered before a shard file is written
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    # ray.num_cpus / ray.num_gpus: per analyzer actor; None derives them from the stages.
    ray: RayConfig = field(default_factory=functools.partial(RayConfig, concurrency=2))

    def validate(self) -> None:
        if isinstance(self.input, list) and not self.input:
            raise ConfigError("input: the list of manifests is empty")


def set_threads(num_cpus: float) -> None:
    """Keep each actor's math libraries within its CPU share, so actors don't oversubscribe.

    Torch is pinned only once a stage has imported it: the offline profile never uses it, and
    importing it would cost each actor over a second and a few hundred MB."""
    threads = max(1, int(num_cpus))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


class _RayClipAnalyzer(ClipAnalyzer):
    """The analyzer as Ray constructs it in each actor: pinned to its CPU share, and reading its
    input clips from the plan's work units itself (see `plan.py`)."""

    def __init__(self, cfg: AnalyzeConfig, num_cpus: float) -> None:
        set_threads(num_cpus)  # before the stages load their libraries (OpenMP reads its variable once)
        super().__init__(cfg)
        set_threads(num_cpus)  # and after, for the libraries the stages imported in their setup

    def __call__(self, units: dict[str, np.ndarray]) -> pa.Table:
        clips = pa.concat_tables(read_work_unit(str(f), int(s), int(n))
                                 for f, s, n in zip(units["file"], units["start"], units["rows"]))
        return super().__call__(clips.to_pydict())


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


def _check_input_and_out(cfg: CurateConfig) -> None:
    if not cfg.input or not cfg.out:
        raise ConfigError("set input and out (--input/--out or the config keys input/out)")


def plan_only(cfg: CurateConfig) -> dict[str, Any]:
    """Plan `cfg.input` against `cfg.out` and return the counts; nothing is analyzed or written
    but the scratch of planning, removed before returning."""
    _check_input_and_out(cfg)
    sources = expand_inputs(cfg.input)
    ray = cfg.ray.init()
    scratch = Path(cfg.out) / PLAN_DIR / f"only-{uuid.uuid4().hex[:8]}"
    try:
        planned = _plan(cfg, ray, sources, scratch, write_todo=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch.parent.rmdir()  # unless a run's scratch is in there
    return planned.counts()


def _plan(cfg: CurateConfig, ray: Any, sources: list[InputSource], scratch: Path, write_todo: bool) -> InputPlan:
    planned = plan_inputs(ray, sources, Path(cfg.out) / "clips", scratch, video_root=cfg.video_root,
                          allow_outside_root=cfg.allow_outside_root, write_todo=write_todo)
    log.info("%d input clips from %d sources (%d duplicates), %d already done, %d to process; planned in %.1f s",
             planned.inputs, planned.sources, planned.duplicates, planned.already_done, planned.todo,
             planned.seconds)
    return planned


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Curate `cfg.input` into `cfg.out`; returns the summary (also written to summary.json)."""
    _check_input_and_out(cfg)
    started = time.time()
    # Set the stages up once in the driver first: a missing weight fails here, before any data.
    analyzer = ClipAnalyzer(cfg.analyze)
    sources = expand_inputs(cfg.input)
    with exclusive_output(cfg.out) as out:
        prepare_output_dir(out, cfg)
        clips_dir = out / "clips"
        # Exists from the start, so readers of <out> never take the planning scratch for results.
        clips_dir.mkdir(exist_ok=True)
        move_partial_files(clips_dir, out)
        ray = cfg.ray.init()
        shutil.rmtree(out / PLAN_DIR, ignore_errors=True)  # a killed run's scratch
        planned = _plan(cfg, ray, sources, out / PLAN_DIR / "run", write_todo=True)
        try:
            if planned.todo:
                _run_ray(cfg, ray, planned.work_units(cfg.ray.batch_size), clips_dir, analyzer.schema)
            counts = finalize_output(ray, clips_dir, out / PLAN_DIR / "finalize", cfg.analyze)
        finally:
            shutil.rmtree(out / PLAN_DIR, ignore_errors=True)
        if counts["later_copies"]:
            log.info("dropped %d later copies of clip ids (a killed run's late writes)", counts["later_copies"])
        summary = summary_from_counts(counts, cfg, inputs=planned.inputs, duplicates=planned.duplicates,
                                      wall_s=time.time() - started)
        write_json_atomic(out / "summary.json", summary)
    return summary


def _run_ray(cfg: CurateConfig, ray: Any, units: list[dict[str, Any]], clips_dir: Path, schema: pa.Schema) -> None:
    actor = actor_resources(cfg, ray.cluster_resources().get("GPU", 0.0))
    log.info("each of %d analyzer actors reserves %s CPU, %s GPU", cfg.ray.concurrency, actor.cpus, actor.gpus)
    # One block per work unit: blocks are what Ray Data hands out to actors and retries.
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(
        _RayClipAnalyzer,
        fn_constructor_kwargs={"cfg": cfg.analyze, "num_cpus": actor.cpus},
        batch_size=1,
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
