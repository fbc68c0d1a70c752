"""Shot boundaries: PySceneDetect on every frame, plus jump cuts from the motion stage's
frame-skip distances. The cut stage splits the clip and rejects segments that are too short."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import cv2
import numpy as np

from soraplan.core.config import NonNegativeFloat, PositiveFloat, PositiveInt, Range
from soraplan.core.schema import REASON_TOO_SHORT
from soraplan.curation.motion import CUT_DISTANCES
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, EveryFrame, Score, Segment, SplitStage, StageConfig

ContentValue = Annotated[float, Range(ge=0, le=255)]  # PySceneDetect's frame-change scale


@dataclass
class CutsConfig(StageConfig):
    detector: Literal["adaptive", "content"] = "adaptive"
    adaptive_threshold: PositiveFloat = 3.0  # AdaptiveDetector: score / rolling average
    min_content_val: ContentValue = 15.0  # AdaptiveDetector: minimum absolute change for a cut
    content_threshold: ContentValue = 27.0  # ContentDetector threshold
    min_scene_s: NonNegativeFloat = 0.3  # no two cuts closer than this (fades and flashes stay one cut)
    detect_width: PositiveInt = 256  # frames are downscaled to this width for the detector
    jump_cuts: bool = True
    jump_z: PositiveFloat = 8.0  # robust z-score (median/MAD) above which a distance is a jump cut
    jump_min_ratio: NonNegativeFloat = 3.0  # ... and the distance must also exceed this multiple of the median
    merge_s: NonNegativeFloat = 0.25  # a jump cut this close to a detector cut is the same cut
    min_seconds: NonNegativeFloat = 2.0  # shorter segments are rejected as too_short

    def stage_class(self) -> type[SceneCutDetector]:
        return SceneCutDetector


class SceneCutDetector(SplitStage):
    """Feeds every frame to a PySceneDetect detector; after the pass, adds jump cuts and splits."""

    name = "cuts"
    reasons = (REASON_TOO_SHORT,)
    resources = Resources(cpus=1.0)  # pure Python and NumPy on small frames, one thread

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

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        from scenedetect import FrameTimecode

        small = cv2.resize(frame, self.detect_size, interpolation=cv2.INTER_AREA)
        found = self.detector.process_frame(FrameTimecode(len(self.change), self.fps), small[..., ::-1])
        self.positions.extend(tc.frame_num for tc in found)
        thumb = cv2.cvtColor(cv2.resize(small, (32, 18), interpolation=cv2.INTER_AREA),
                             cv2.COLOR_RGB2GRAY).astype(np.float32)
        self.change.append(0.0 if self.previous_thumb is None else float(np.abs(thumb - self.previous_thumb).mean()))
        self.previous_thumb = thumb

    def finish(self, clip: ClipContext) -> None:
        from scenedetect import FrameTimecode

        count = len(self.change)
        if count:
            found = self.detector.post_process(FrameTimecode(count - 1, self.fps))
            self.positions.extend(tc.frame_num for tc in found)
        self.positions = sorted({p for p in self.positions if 0 < p < count})

    def split(self, clip: ClipContext) -> list[float]:
        """The clip's cut times: detector cuts, plus jump cuts placed on the frame that changes most."""
        cfg = self.cfg
        jump_positions = []
        if cfg.jump_cuts:
            sampled, distances, floor = clip.signal(CUT_DISTANCES)
            for k in robust_outliers(distances, cfg.jump_z, cfg.jump_min_ratio, floor):
                lo, hi = sampled[k] + 1, sampled[k + 1]
                jump_positions.append(lo + int(np.argmax(self.change[lo : hi + 1])))
        return merge_cuts([clip.times[p] for p in self.positions], [clip.times[p] for p in jump_positions],
                          cfg.merge_s, cfg.min_scene_s)

    def score(self, segment: Segment) -> Score:
        return {}, [REASON_TOO_SHORT] if segment.duration_s < self.cfg.min_seconds else []


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
