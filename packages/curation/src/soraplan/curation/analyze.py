"""Per-clip analysis: decode an input clip once and run every stage on the shared frames.

One pass over the decoded frames feeds the shot detector, keeps every `frame_skip`-th frame for
motion and about `ocr.fps` frames per second for text. After the pass the clip is split at its
cuts and each segment goes through the stages cheap to expensive; a rejected segment skips the
rest unless `score_all` is set. Any failure becomes an error row: nothing is dropped.
"""

from __future__ import annotations

import time
from pathlib import Path
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from soraplan.curation.aesthetic import AestheticConfig, AestheticScorer, pick_frames
from soraplan.curation.cuts import CutsConfig, SceneCutDetector, merge_cuts, robust_outliers, split_segments
from soraplan.core.inputs import InputClip
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig
from soraplan.curation.resources import Resources, sequential
from soraplan.core.schema import (
    REASON_CHAOTIC,
    REASON_LOW_AESTHETIC,
    REASON_STATIC,
    REASON_SUBTITLES,
    REASON_TOO_SHORT,
    STATUS_ERROR,
    STATUS_KEPT,
    STATUS_REJECTED,
    empty_clip_row,
    rows_to_table,
)
from soraplan.core.video import VideoDecodeError, VideoInfo, fit_short_side, iter_frames, probe


@dataclass
class AnalyzeConfig:
    analysis_short_side: int = 360  # frames are decoded at this short side for every scorer
    score_all: bool = False  # score every segment, even ones an earlier stage rejected
    cuts: CutsConfig = field(default_factory=CutsConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)

    def stage_classes(self) -> list[type]:
        """The classes of the enabled stages, in the order they run (none is built here)."""
        stages: list[type] = [SceneCutDetector, self.motion.stage_class()]
        if self.ocr.enabled:
            stages.append(self.ocr.stage_class())
        if self.aesthetic.enabled:
            stages.append(AestheticScorer)
        return stages

    def resources(self) -> Resources:
        """The declared need of one analyzer, which runs its stages one after another."""
        return sequential(stage.resources for stage in self.stage_classes())


class StageError(RuntimeError):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class DecodedClip:
    """What one decoding pass keeps: frame times, per-frame change, sampled frames."""

    info: VideoInfo
    times: list[float]
    frame_change: np.ndarray  # mean abs change of tiny grey thumbnails vs the previous frame
    scene_cut_positions: list[int]
    motion_positions: list[int]
    motion_frames: list[np.ndarray]
    ocr_times: list[float]
    ocr_frames: list[np.ndarray]
    analysis_size: tuple[int, int]
    # Frames at about `aesthetic.sample_fps`, small, to pick each segment's 10/50/90% frames from.
    aesthetic_times: list[float] = field(default_factory=list)
    aesthetic_frames: list[np.ndarray] = field(default_factory=list)


class ClipAnalyzer:
    """Holds the scorers (built once per Ray actor) and turns input clips into shard rows."""

    def __init__(self, cfg: AnalyzeConfig) -> None:
        self.cfg = cfg
        self.motion = cfg.motion.build()
        self.text = cfg.ocr.build() if cfg.ocr.enabled else None
        self.aesthetic = cfg.aesthetic.build() if cfg.aesthetic.enabled else None

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Ray Data batch function: input clip columns in, shard rows out (fan-out)."""
        rows: list[dict[str, Any]] = []
        keys = list(batch)
        for i in range(len(batch[keys[0]])):
            clip = InputClip(**{k: _scalar(batch[k][i]) for k in keys})
            rows.extend(self.analyze(clip))
        return rows_to_table(rows)

    def analyze(self, clip: InputClip) -> list[dict[str, Any]]:
        timings: dict[str, float] = defaultdict(float)
        base = dict(source_id=clip.source_id, path=clip.path, caption=clip.caption,
                    matching_score=clip.matching_score, start_s=clip.start_s, end_s=clip.end_s)
        self.stage = "inputs"
        try:
            if clip.error:
                raise StageError("inputs", clip.error)
            decoded = self._decode(clip, timings)
            return self._segments(clip, decoded, base, timings)
        except StageError as exc:
            stage, message = exc.stage, str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure becomes an error row, never a crash
            where = traceback.extract_tb(exc.__traceback__)[-1]
            stage = self.stage
            message = f"{type(exc).__name__} in {stage}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        return [empty_clip_row(clip_id=clip.source_id, segment_index=0, status=STATUS_ERROR, error=message,
                               error_stage=stage, stage_seconds=dict(timings), **base)]

    def _decode(self, clip: InputClip, timings: dict[str, float]) -> DecodedClip:
        self.stage = "probe"
        t0 = time.perf_counter()
        try:
            info = probe(clip.path)
        except VideoDecodeError as exc:
            raise StageError("probe", str(exc)) from None
        timings["probe"] += time.perf_counter() - t0
        if clip.start_s >= info.duration_s:
            raise StageError("probe", f"span {clip.start_s:.3f}-{clip.end_s}s lies outside the video "
                                      f"(duration {info.duration_s:.3f}s): {clip.path}")
        cfg = self.cfg
        size = fit_short_side(info.width, info.height, cfg.analysis_short_side)
        detect_size = (cfg.cuts.detect_width, max(2, round(cfg.cuts.detect_width * size[1] / size[0])))
        detector = SceneCutDetector(cfg.cuts, info.fps or 25.0)
        times: list[float] = []
        change: list[float] = []
        motion_pos, motion_frames, ocr_times, ocr_frames = [], [], [], []
        aesthetic_times, aesthetic_frames = [], []
        next_ocr = next_aesthetic = clip.start_s
        previous_thumb = None
        t_detect = t_motion = 0.0
        self.stage = "decode"
        t0 = time.perf_counter()
        try:
            # Decoding runs to the span's end or the last frame, wherever the header says the
            # video ends: header durations of variable-frame-rate files can fall short of it.
            for pos, frame in enumerate(iter_frames(clip.path, clip.start_s, clip.end_s, size=size)):
                times.append(frame.time_s)
                t1 = time.perf_counter()
                small = cv2.resize(frame.image, detect_size, interpolation=cv2.INTER_AREA)
                detector.push(small[..., ::-1])
                thumb = cv2.cvtColor(cv2.resize(small, (32, 18), interpolation=cv2.INTER_AREA),
                                     cv2.COLOR_RGB2GRAY).astype(np.float32)
                change.append(0.0 if previous_thumb is None else float(np.abs(thumb - previous_thumb).mean()))
                previous_thumb = thumb
                t2 = time.perf_counter()
                t_detect += t2 - t1
                if pos % cfg.motion.frame_skip == 0:
                    motion_pos.append(pos)
                    motion_frames.append(self.motion.prepare(frame.image))
                t_motion += time.perf_counter() - t2
                if self.text is not None and frame.time_s >= next_ocr - 1e-6:
                    ocr_times.append(frame.time_s)
                    ocr_frames.append(frame.image)
                    next_ocr = frame.time_s + 1.0 / cfg.ocr.fps
                if self.aesthetic is not None and frame.time_s >= next_aesthetic - 1e-6:
                    aesthetic_times.append(frame.time_s)
                    aesthetic_frames.append(self.aesthetic.prepare(frame.image))
                    next_aesthetic = frame.time_s + 1.0 / cfg.aesthetic.sample_fps
        except VideoDecodeError as exc:
            raise StageError("decode", str(exc)) from None
        cut_positions = detector.finish()
        t_total = time.perf_counter() - t0
        timings["cuts"] += t_detect
        timings["motion"] += t_motion
        timings["decode"] += t_total - t_detect - t_motion
        if not times:
            raise StageError("decode", f"no frames decoded from {clip.start_s:.3f}s to {clip.end_s or 'the end'}: {clip.path}")
        return DecodedClip(info, times, np.asarray(change), cut_positions, motion_pos, motion_frames,
                           ocr_times, ocr_frames, size, aesthetic_times, aesthetic_frames)

    def _segments(self, clip: InputClip, d: DecodedClip, base: dict[str, Any],
                  timings: dict[str, float]) -> list[dict[str, Any]]:
        cfg = self.cfg
        self.stage = "motion"
        t0 = time.perf_counter()
        motion_d, cut_d = self.motion.distances(d.motion_frames)
        timings["motion"] += time.perf_counter() - t0

        self.stage = "cuts"
        t0 = time.perf_counter()
        jump_positions = []
        if cfg.cuts.jump_cuts:
            for k in robust_outliers(cut_d, cfg.cuts.jump_z, cfg.cuts.jump_min_ratio):
                lo, hi = d.motion_positions[k] + 1, d.motion_positions[k + 1]
                # The cut is the frame in the interval that changes most from its predecessor.
                jump_positions.append(lo + int(np.argmax(d.frame_change[lo : hi + 1])))
        cut_times = merge_cuts([d.times[p] for p in d.scene_cut_positions],
                               [d.times[p] for p in jump_positions], cfg.cuts.merge_s, cfg.cuts.min_scene_s)
        end = d.times[-1] + _frame_period(d)
        if clip.end_s is not None:
            end = min(end, clip.end_s)
        spans = split_segments(clip.start_s, end, cut_times)
        timings["cuts"] += time.perf_counter() - t0

        times = np.asarray(d.times)
        motion_times = times[d.motion_positions]
        scale_x = d.info.width / d.analysis_size[0]
        scale_y = d.info.height / d.analysis_size[1]
        lo_bound, hi_bound = cfg.motion.bounds()
        rows = []
        for index, (a, b) in enumerate(spans):
            reasons: list[str] = []
            in_segment = (times >= a - 1e-6) & (times < b - 1e-6)
            row = empty_clip_row(**{
                **base, "clip_id": f"{clip.source_id}/{a:.3f}-{b:.3f}", "segment_index": index,
                "start_s": round(a, 6), "end_s": round(b, 6), "num_frames": int(in_segment.sum()),
            })
            row.update(
                fps=d.info.fps, width=d.info.width, height=d.info.height, codec=d.info.codec,
                cut_times_s=[round(c, 6) for c in cut_times],
            )
            if b - a < cfg.cuts.min_seconds:
                reasons.append(REASON_TOO_SHORT)
            if not reasons or cfg.score_all:
                self.stage = "motion"
                # Only pairs with both frames inside the segment measure its motion.
                pairs = (motion_times[:-1] >= a - 1e-6) & (motion_times[1:] < b - 1e-6)
                if pairs.any():
                    row["motion_score"] = float(motion_d[pairs].mean())
                    row["motion_backend"] = self.motion.name
                    if row["motion_score"] < lo_bound:
                        reasons.append(REASON_STATIC)
                    elif row["motion_score"] > hi_bound:
                        reasons.append(REASON_CHAOTIC)
            if self.text is not None and (not reasons or cfg.score_all):
                self.stage = "ocr"
                t1 = time.perf_counter()
                frames = self._ocr_frames(d, a, b)
                if frames:
                    verdict = self.text.judge(frames)
                    row["ocr_area_ratio"] = verdict.area_ratio
                    row["subtitles"] = verdict.subtitles
                    x0, x1, y0, y1 = verdict.crop
                    row["crop"] = [round(x0 * scale_x), round(x1 * scale_x), round(y0 * scale_y), round(y1 * scale_y)]
                    too_much_text = cfg.ocr.max_area_ratio is not None and verdict.area_ratio > cfg.ocr.max_area_ratio
                    if verdict.subtitles or too_much_text:
                        reasons.append(REASON_SUBTITLES)
                timings["ocr"] += time.perf_counter() - t1
            row["reject_reasons"] = reasons
            rows.append(row)
        if self.aesthetic is not None:
            self._score_aesthetics(d, spans, rows, timings)
        for row in rows:
            row["status"] = STATUS_REJECTED if row["reject_reasons"] else STATUS_KEPT
        rows[0]["stage_seconds"] = dict(timings)
        return rows

    def _score_aesthetics(self, d: DecodedClip, spans: list[tuple[float, float]], rows: list[dict[str, Any]],
                          timings: dict[str, float]) -> None:
        """The last, most expensive stage: one batched pass over every surviving segment's frames."""
        self.stage = "aesthetic"
        t0 = time.perf_counter()
        cfg = self.cfg.aesthetic
        picks = {i: pick_frames(d.aesthetic_times, a, b, cfg.positions) for i, (a, b) in enumerate(spans)
                 if not rows[i]["reject_reasons"] or self.cfg.score_all}
        picks = {i: p for i, p in picks.items() if p}
        frames = [d.aesthetic_frames[k] for p in picks.values() for k in p]
        scores = self.aesthetic.process(frames)
        offset = 0
        for i, p in picks.items():
            score = float(scores[offset : offset + len(p)].mean())
            offset += len(p)
            rows[i]["aesthetic_score"] = score
            if score < cfg.min_score:
                rows[i]["reject_reasons"].append(REASON_LOW_AESTHETIC)
        timings["aesthetic"] += time.perf_counter() - t0

    def _ocr_frames(self, d: DecodedClip, a: float, b: float) -> list[np.ndarray]:
        """The frames sampled at `ocr.fps` inside [a, b), thinned evenly to `ocr.max_frames`."""
        inside = [i for i, t in enumerate(d.ocr_times) if a - 1e-6 <= t < b - 1e-6]
        if len(inside) > self.cfg.ocr.max_frames:
            inside = [inside[round(p)] for p in np.linspace(0, len(inside) - 1, self.cfg.ocr.max_frames)]
        return [d.ocr_frames[i] for i in inside]


def _frame_period(d: DecodedClip) -> float:
    if len(d.times) > 1:
        return float(np.median(np.diff(d.times)))
    return 1.0 / (d.info.fps or 25.0)


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value
