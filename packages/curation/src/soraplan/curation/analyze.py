"""Per-clip analysis: decode an input clip once and run every enabled stage on it.

The stages are the stage sections of `AnalyzeConfig`, in the order they run (cheap to
expensive). Per clip: probe, one decoding pass in which each stage observes the frames it asks
for, each stage's finish, the split at the cut stage's cut times, then each stage scores the
segments no earlier stage rejected (all of them with `score_all`). Any failure becomes an error
row naming the stage: nothing is dropped.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from soraplan.core.config import ConfigError, PositiveInt
from soraplan.core.inputs import InputClip
from soraplan.core.schema import (
    ERROR_STAGE_INPUTS,
    STATUS_ERROR,
    STATUS_KEPT,
    STATUS_REJECTED,
    empty_clip_row,
    rows_to_table,
    schema_with,
)
from soraplan.core.video import VideoDecodeError, fit_short_side, iter_frames, probe
from soraplan.curation.aesthetic import AestheticConfig
from soraplan.curation.camera import CameraConfig
from soraplan.curation.clip_score import ClipScoreConfig
from soraplan.curation.cuts import CutsConfig
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig
from soraplan.curation.resources import Resources, sequential
from soraplan.curation.stages import ClipContext, SplitStage, Stage, StageConfig

# What the analyzer itself does before any stage scores, counted per input clip in the funnel.
CLIP_PHASES = (ERROR_STAGE_INPUTS, "probe", "decode")
# Columns the analyzer fills (the segment, its source, its verdict); stages write the others.
ANALYZER_COLUMNS = frozenset({
    "clip_id", "source_id", "segment_index", "path", "start_s", "end_s", "num_frames", "fps", "width", "height",
    "codec", "caption", "matching_score", "cut_times_s", "status", "reject_reasons", "error", "error_stage",
    "stage_seconds",
})


@dataclass
class AnalyzeConfig:
    analysis_short_side: PositiveInt = 360  # frames are decoded at this short side for every stage
    score_all: bool = False  # score every segment, even ones an earlier stage rejected
    # The stages, in the order they run: every section below that is a StageConfig is one stage.
    # A new stage is one file (its config section and stage class) and one line here.
    cuts: CutsConfig = field(default_factory=CutsConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    clip_score: ClipScoreConfig = field(default_factory=ClipScoreConfig)

    def validate(self) -> None:
        if self.clip_score.enabled and not self.aesthetic.enabled:
            raise ConfigError("clip_score.enabled needs aesthetic.enabled: it reuses the aesthetic stage's "
                              "CLIP image embeddings")
        classes = self.stage_classes()
        splitters = [c.__name__ for c in classes if issubclass(c, SplitStage)]
        if len(splitters) != 1:
            raise ConfigError(f"exactly one enabled stage must split clips into segments, found {splitters}")
        names = [c.name for c in self.stage_classes(enabled_only=False)]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique (they name funnel rows and timings): {names}")

    def stage_configs(self, enabled_only: bool = True) -> list[StageConfig]:
        sections = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return [s for s in sections if isinstance(s, StageConfig) and (s.enabled or not enabled_only)]

    def stage_classes(self, enabled_only: bool = True) -> list[type[Stage]]:
        """The classes of the stages, in the order they run (none is built here)."""
        return [s.stage_class() for s in self.stage_configs(enabled_only)]

    def resources(self) -> Resources:
        """The declared need of one analyzer, which runs its stages one after another."""
        return sequential(stage.resources for stage in self.stage_classes())

    def output_schema(self) -> pa.Schema:
        """Core's clip schema plus the extra columns of every stage, enabled or not, so that
        shards keep one schema when a rerun switches a stage on or off."""
        return schema_with(*(stage.extra_columns for stage in self.stage_classes(enabled_only=False)))


class StageError(RuntimeError):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class _Phase:
    """Adds the wall time of a block to `timings[name]`; a failure in it becomes StageError(name)."""

    __slots__ = ("name", "timings", "started")

    def __init__(self, name: str, timings: dict[str, float]) -> None:
        self.name, self.timings = name, timings

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        self.timings[self.name] += time.perf_counter() - self.started
        if exc is None or isinstance(exc, StageError) or not isinstance(exc, Exception):
            return
        if isinstance(exc, VideoDecodeError):
            raise StageError(self.name, str(exc)) from None
        where = traceback.extract_tb(tb)[-1]
        raise StageError(self.name, f"{type(exc).__name__} in {self.name}: {exc} "
                                    f"(at {Path(where.filename).name}:{where.lineno})") from exc


class ClipAnalyzer:
    """Holds the stages (set up once per Ray actor) and turns input clips into shard rows."""

    def __init__(self, cfg: AnalyzeConfig) -> None:
        self.cfg = cfg
        self.stages = [section.build() for section in cfg.stage_configs()]
        self.splitter = next(s for s in self.stages if isinstance(s, SplitStage))
        self.schema = cfg.output_schema()

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Ray Data batch function: input clip columns in, shard rows out (fan-out)."""
        rows: list[dict[str, Any]] = []
        keys = list(batch)
        for i in range(len(batch[keys[0]])):
            clip = InputClip(**{k: _scalar(batch[k][i]) for k in keys})
            rows.extend(self.analyze(clip))
        return rows_to_table(rows, self.schema)

    def analyze(self, clip: InputClip) -> list[dict[str, Any]]:
        timings: dict[str, float] = defaultdict(float)
        base = dict(source_id=clip.source_id, path=clip.path, caption=clip.caption,
                    matching_score=clip.matching_score, start_s=clip.start_s, end_s=clip.end_s)
        try:
            if clip.error:
                raise StageError(ERROR_STAGE_INPUTS, clip.error)
            return self._rows(self.decode(clip, timings), base, timings)
        except StageError as exc:
            return [empty_clip_row(clip_id=clip.source_id, segment_index=0, status=STATUS_ERROR, error=str(exc),
                                   error_stage=exc.stage, stage_seconds=dict(timings), **base)]

    def decode(self, clip: InputClip, timings: dict[str, float]) -> ClipContext:
        """Probe, then the one decoding pass, in which each stage observes the frames it takes;
        then every stage finishes the clip."""
        with _Phase("probe", timings):
            info = probe(clip.path)
            if clip.start_s >= info.duration_s:
                raise StageError("probe", f"span {clip.start_s:.3f}-{clip.end_s}s lies outside the video "
                                          f"(duration {info.duration_s:.3f}s): {clip.path}")
            ctx = ClipContext(clip, info, fit_short_side(info.width, info.height, self.cfg.analysis_short_side))
        observers = [s for s in self.stages if s.sampling is not None]
        for stage in self.stages:
            with _Phase(stage.name, timings):
                stage.start(ctx)
                if stage.sampling is not None:
                    stage.sampling.start()
        observing = sum(timings[s.name] for s in self.stages)
        with _Phase("decode", timings):
            # Decoding runs to the span's end or the last frame, wherever the header says the
            # video ends: header durations of variable-frame-rate files can fall short of it.
            for position, frame in enumerate(iter_frames(clip.path, clip.start_s, clip.end_s, size=ctx.analysis_size)):
                ctx.times.append(frame.time_s)
                for stage in observers:
                    if stage.sampling.take(position, frame.time_s):
                        with _Phase(stage.name, timings):
                            stage.observe(frame.image, frame.time_s)
            if not ctx.times:
                raise StageError("decode", f"no frames decoded from {clip.start_s:.3f}s to "
                                           f"{clip.end_s or 'the end'}: {clip.path}")
        # Decoding is the pass's time less what the stages spent observing.
        timings["decode"] -= sum(timings[s.name] for s in self.stages) - observing
        for stage in self.stages:
            with _Phase(stage.name, timings):
                stage.finish(ctx)
        return ctx

    def _rows(self, ctx: ClipContext, base: dict[str, Any], timings: dict[str, float]) -> list[dict[str, Any]]:
        clip, info = ctx.clip, ctx.info
        with _Phase(self.splitter.name, timings):
            cut_times = self.splitter.split(ctx)
            segments = ctx.segments(cut_times)
            rows = [empty_clip_row(**{
                **base, "clip_id": f"{clip.source_id}/{s.start_s:.3f}-{s.end_s:.3f}", "segment_index": s.index,
                "start_s": round(s.start_s, 6), "end_s": round(s.end_s, 6), "num_frames": s.num_frames,
                "fps": info.fps, "width": info.width, "height": info.height, "codec": info.codec,
                "cut_times_s": [round(c, 6) for c in cut_times],
            }) for s in segments]
        columns = set(self.schema.names) - ANALYZER_COLUMNS
        for stage in self.stages:
            everything = self.cfg.score_all or stage.scores_rejected
            todo = [s for s in segments if everything or not rows[s.index]["reject_reasons"]]
            if not todo:
                continue
            with _Phase(stage.name, timings):
                scores = stage.score_segments(todo)
                for segment, (values, reasons) in zip(todo, scores, strict=True):
                    _check(stage, values, reasons, columns)
                    rows[segment.index].update(values)
                    rows[segment.index]["reject_reasons"].extend(reasons)
        for row in rows:
            row["status"] = STATUS_REJECTED if row["reject_reasons"] else STATUS_KEPT
        rows[0]["stage_seconds"] = dict(timings)
        return rows


def _check(stage: Stage, values: dict[str, Any], reasons: list[str], columns: set[str]) -> None:
    """A stage writes only score columns of the schema and gives only the reasons it declares
    (the funnel maps each reason to its stage)."""
    unknown = set(values) - columns
    if unknown:
        raise ValueError(f"columns {sorted(unknown)} are analyzer columns, or neither clip-schema columns "
                         f"nor the stage's extra_columns")
    undeclared = set(reasons) - set(stage.reasons)
    if undeclared:
        raise ValueError(f"reject reasons {sorted(undeclared)} are not among the stage's reasons {stage.reasons}")


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
