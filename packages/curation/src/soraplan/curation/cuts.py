"""Shot boundaries: PySceneDetect on every frame, plus jump cuts from the motion stage's
frame-skip distances. The cut stage splits the clip and rejects segments that are too short.

A jump-cut candidate (an outlier of the motion stage's cut distances) is confirmed before it
cuts: the frame where it lands must change the coarse picture and the colour histogram by an
absolute minimum and by `jump_spike_ratio` times the largest change between neighbouring frames
on either side (each side is self-consistent, the jump stands out), and it must not end a dark
leader or fade-in at the start of the clip. Fast motion, particles, noisy flow on defocused or
flat close-ups and local movement in a quiet shot change the frames around them as much, or
leave the histogram alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import cv2
import numpy as np
import pyarrow as pa

from soraplan.core.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, UnitFloat
from soraplan.core.schema import REASON_TOO_SHORT
from soraplan.curation.motion import CUT_DISTANCES
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, EveryFrame, Score, Segment, SplitStage, StageConfig, shrink

ContentValue = Annotated[float, Range(ge=0, le=255)]  # PySceneDetect's frame-change scale


@dataclass
class CutsConfig(StageConfig):
    detector: Literal["adaptive", "content"] = "adaptive"
    adaptive_threshold: PositiveFloat = 3.0  # AdaptiveDetector: score / rolling average
    min_content_val: ContentValue = 15.0  # AdaptiveDetector: minimum absolute change for a cut
    content_threshold: ContentValue = 27.0  # ContentDetector threshold
    min_scene_s: NonNegativeFloat = 0.3  # no two cuts closer than this (fades and flashes stay one cut)
    # Frames are downscaled to this width for the detector. PySceneDetect's own default is 256;
    # at 128 it costs a quarter, its frame scores on ../shared/devset move by a few percent and
    # it finds the same cuts there (docs/curation.md).
    detect_width: PositiveInt = 128
    jump_cuts: bool = True
    jump_z: PositiveFloat = 8.0  # robust z-score (median/MAD) above which a distance is a jump cut
    jump_min_ratio: NonNegativeFloat = 3.0  # ... and the distance must also exceed this multiple of the median
    merge_s: NonNegativeFloat = 0.25  # a jump cut this close to a detector cut is the same cut
    # Confirmation of a jump-cut candidate (see the module docstring); calibrated on
    # ../shared/devset, where real cuts change the 32x18 grey thumbnail by >= 17 (0-255) and the
    # HSV histogram by >= 0.057 (half L1), 2.7x and 2.5x more than any neighbouring frame pair.
    confirm_jumps: bool = True
    jump_context: NonNegativeInt = 4  # neighbouring frame pairs compared on each side
    jump_spike_ratio: PositiveFloat = 2.0  # the jump's change over the largest neighbouring one
    jump_min_change: ContentValue = 8.0  # mean abs change of the grey thumbnail across the jump
    jump_min_hist: UnitFloat = 0.04  # colour histogram distance across the jump
    dark_luma: UnitFloat = 0.08  # a clip opening at or below this mean luma (0-1) has a dark leader
    min_seconds: NonNegativeFloat = 2.0  # shorter segments are rejected as too_short

    def stage_class(self) -> type[SceneCutDetector]:
        return SceneCutDetector


class SceneCutDetector(SplitStage):
    """Feeds every frame to a PySceneDetect detector; after the pass, adds jump cuts and splits."""

    name = "cuts"
    reasons = (REASON_TOO_SHORT,)
    resources = Resources(cpus=1.0)  # pure Python and NumPy on small frames, one thread
    # Each detector's own cuts (seconds of the source), so reviews and benchmarks can tell them apart.
    extra_columns = (pa.field("scene_cut_times_s", pa.list_(pa.float64())),
                     pa.field("jump_cut_times_s", pa.list_(pa.float64())))

    def __init__(self, cfg: CutsConfig) -> None:
        self.cfg = cfg
        self.sampling = EveryFrame()

    def setup(self) -> None:
        import scenedetect  # noqa: F401 - fail at start-up, not on the first clip

    def start(self, clip: ClipContext) -> None:
        from scenedetect import AdaptiveDetector, ContentDetector

        cfg = self.cfg
        self.fps = clip.info.fps or 25.0
        min_len = max(1, round(cfg.min_scene_s * self.fps))
        if cfg.detector == "adaptive":
            self.detector = AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold,
                                             min_content_val=cfg.min_content_val, min_scene_len=min_len)
        else:
            self.detector = ContentDetector(threshold=cfg.content_threshold, min_scene_len=min_len)
        width, height = clip.analysis_size
        self.detect_size = (cfg.detect_width, max(2, round(cfg.detect_width * height / width)))
        self.positions: list[int] = []  # positions (0-based, within this clip) of new-shot frames
        # Mean abs change of tiny grey thumbnails vs the previous frame: where a jump cut lands.
        self.change: list[float] = []
        self.previous_thumb: np.ndarray | None = None
        self.hists: list[np.ndarray] = []  # per frame: HSV colour histogram, sums to 1
        self.luma: list[float] = []  # per frame: mean grey level, 0-1

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        from scenedetect import FrameTimecode

        small = shrink(frame, self.detect_size)
        found = self.detector.process_frame(FrameTimecode(len(self.change), self.fps), small[..., ::-1])
        self.positions.extend(tc.frame_num for tc in found)
        thumb = cv2.cvtColor(cv2.resize(small, (32, 18), interpolation=cv2.INTER_AREA),
                             cv2.COLOR_RGB2GRAY).astype(np.float32)
        self.change.append(0.0 if self.previous_thumb is None else float(np.abs(thumb - self.previous_thumb).mean()))
        self.previous_thumb = thumb
        self.hists.append(colour_histogram(small))
        self.luma.append(float(thumb.mean()) / 255)

    def finish(self, clip: ClipContext) -> None:
        from scenedetect import FrameTimecode

        count = len(self.change)
        if count:
            found = self.detector.post_process(FrameTimecode(count - 1, self.fps))
            self.positions.extend(tc.frame_num for tc in found)
        self.positions = sorted({p for p in self.positions if 0 < p < count})

    def split(self, clip: ClipContext) -> list[float]:
        """The clip's cut times: detector cuts, plus confirmed jump cuts placed on the frame that
        changes most."""
        cfg = self.cfg
        jump_positions = []
        if cfg.jump_cuts:
            for p in self.jump_candidates(clip):
                if not cfg.confirm_jumps or self.rejects_jump(p) is None:
                    jump_positions.append(p)
        self.scene_cuts = [clip.times[p] for p in self.positions]
        self.jump_cuts = [clip.times[p] for p in jump_positions]
        return merge_cuts(self.scene_cuts, self.jump_cuts, cfg.merge_s, cfg.min_scene_s)

    def jump_candidates(self, clip: ClipContext) -> list[int]:
        """Positions of the frames where the outliers of the motion stage's cut distances land."""
        cfg = self.cfg
        sampled, distances, floor = clip.signal(CUT_DISTANCES)
        positions = []
        for k in robust_outliers(distances, cfg.jump_z, cfg.jump_min_ratio, floor):
            lo, hi = sampled[k] + 1, sampled[k + 1]
            positions.append(lo + int(np.argmax(self.change[lo : hi + 1])))
        return positions

    def rejects_jump(self, p: int) -> str | None:
        """Why the jump-cut candidate landing on frame `p` is no cut, or None to confirm it."""
        cfg = self.cfg
        if p < 1:
            return "first frame"
        if opens_dark(self.luma[:p], cfg.dark_luma):
            return "end of a dark leader or fade-in"
        neighbours = [i for i in range(p - cfg.jump_context, p + cfg.jump_context + 1)
                      if i != p and 1 <= i < len(self.change)]
        change = self.change[p]
        if change < cfg.jump_min_change:
            return f"picture change {change:.1f} < jump_min_change"
        if change < cfg.jump_spike_ratio * max((self.change[i] for i in neighbours), default=0.0):
            return "picture change no spike among its neighbours"
        hist = histogram_distance(self.hists[p - 1], self.hists[p])
        if hist < cfg.jump_min_hist:
            return f"colour histogram change {hist:.3f} < jump_min_hist"
        around = max((histogram_distance(self.hists[i - 1], self.hists[i]) for i in neighbours), default=0.0)
        if hist < cfg.jump_spike_ratio * around:
            return "colour histogram change no spike among its neighbours"
        return None

    def score(self, segment: Segment) -> Score:
        columns = {"scene_cut_times_s": self.scene_cuts, "jump_cut_times_s": self.jump_cuts}
        return columns, [REASON_TOO_SHORT] if segment.duration_s < self.cfg.min_seconds else []


def opens_dark(luma: list[float], dark: float, rise: float = 0.002) -> bool:
    """Whether these first frames of a clip are a dark leader, perhaps followed by a fade-in:
    dark frames, then only frames that each brighten on the one before."""
    values = np.asarray(luma)
    if values.size == 0 or values[0] > dark:
        return False
    lit = np.flatnonzero(values > dark)
    return lit.size == 0 or bool((np.diff(values[lit[0] - 1 :]) > rise).all())


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """8 hue x 4 saturation x 4 value bins of an RGB frame, normalised to sum 1."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return hist / max(float(hist.sum()), 1.0)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two normalised histograms: 0 (same) to 1 (disjoint)."""
    return 0.5 * float(np.abs(a - b).sum())


def robust_outliers(values: np.ndarray, z: float, min_ratio: float, floor: float = 0.0) -> np.ndarray:
    """Indices whose robust z-score (median / MAD) exceeds `z` and whose value exceeds both
    min_ratio * median and the absolute `floor`."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 3:
        return np.zeros(0, dtype=np.int64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    # A floor on the spread keeps near-constant sequences (static shots) from flagging noise.
    spread = max(mad, 0.05 * median, 1e-6)
    robust_z = (values - median) / spread
    return np.flatnonzero((robust_z > z) & (values > min_ratio * median) & (values >= floor))


def merge_cuts(detected: list[float], jump: list[float], merge_s: float, min_gap_s: float) -> list[float]:
    """Union of detector and jump cuts: a jump cut near a detector cut is dropped; then cuts
    closer than `min_gap_s` to the previous kept cut are dropped (gradual transitions)."""
    extra = [t for t in jump if all(abs(t - d) > merge_s for d in detected)]
    merged: list[float] = []
    for t in sorted(detected + extra):
        if not merged or t - merged[-1] >= min_gap_s:
            merged.append(t)
    return merged
