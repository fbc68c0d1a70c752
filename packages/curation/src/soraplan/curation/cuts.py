"""Shot boundaries: PySceneDetect on every frame, plus jump cuts from the motion distances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from soraplan.curation.resources import Resources


@dataclass
class CutsConfig:
    detector: Literal["adaptive", "content"] = "adaptive"
    adaptive_threshold: float = 3.0  # AdaptiveDetector: score / rolling average
    min_content_val: float = 15.0  # AdaptiveDetector: minimum absolute change for a cut
    content_threshold: float = 27.0  # ContentDetector threshold
    min_scene_s: float = 0.3  # no two cuts closer than this (fades and flashes stay one cut)
    detect_width: int = 256  # frames are downscaled to this width for the detector
    jump_cuts: bool = True
    jump_z: float = 8.0  # robust z-score (median/MAD) above which a distance is a jump cut
    jump_min_ratio: float = 3.0  # ... and the distance must also exceed this multiple of the median
    merge_s: float = 0.25  # a jump cut this close to a detector cut is the same cut
    min_seconds: float = 2.0  # shorter segments are rejected as too_short


class SceneCutDetector:
    """Feeds frames to a PySceneDetect detector one at a time; collects cut frame positions."""

    resources = Resources(cpus=1.0)  # pure Python and NumPy on small frames, one thread

    def __init__(self, cfg: CutsConfig, fps: float) -> None:
        from scenedetect import AdaptiveDetector, ContentDetector

        min_len = max(1, round(cfg.min_scene_s * fps))
        if cfg.detector == "adaptive":
            self.detector = AdaptiveDetector(
                adaptive_threshold=cfg.adaptive_threshold,
                min_content_val=cfg.min_content_val,
                min_scene_len=min_len,
            )
        else:
            self.detector = ContentDetector(threshold=cfg.content_threshold, min_scene_len=min_len)
        self.fps = fps
        self.positions: list[int] = []  # positions (0-based, within this clip) of new-shot frames
        self._count = 0

    def push(self, bgr_small: np.ndarray) -> None:
        from scenedetect import FrameTimecode

        found = self.detector.process_frame(FrameTimecode(self._count, self.fps), bgr_small)
        self.positions.extend(tc.frame_num for tc in found)
        self._count += 1

    def finish(self) -> list[int]:
        from scenedetect import FrameTimecode

        if self._count:
            found = self.detector.post_process(FrameTimecode(self._count - 1, self.fps))
            self.positions.extend(tc.frame_num for tc in found)
        return sorted({p for p in self.positions if 0 < p < self._count})


def robust_outliers(values: np.ndarray, z: float, min_ratio: float) -> np.ndarray:
    """Indices whose robust z-score (median / MAD) exceeds `z` and value exceeds min_ratio*median."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 3:
        return np.zeros(0, dtype=np.int64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    # A floor on the spread keeps near-constant sequences (static shots) from flagging noise.
    spread = max(mad, 0.05 * median, 1e-6)
    robust_z = (values - median) / spread
    return np.flatnonzero((robust_z > z) & (values > min_ratio * median))


def merge_cuts(detected: list[float], jump: list[float], merge_s: float, min_gap_s: float) -> list[float]:
    """Union of detector and jump cuts: a jump cut near a detector cut is dropped; then cuts
    closer than `min_gap_s` to the previous kept cut are dropped (gradual transitions)."""
    extra = [t for t in jump if all(abs(t - d) > merge_s for d in detected)]
    merged: list[float] = []
    for t in sorted(detected + extra):
        if not merged or t - merged[-1] >= min_gap_s:
            merged.append(t)
    return merged


def split_segments(start_s: float, end_s: float, cuts_s: list[float]) -> list[tuple[float, float]]:
    """[start, end) split at the cut times that fall strictly inside it."""
    bounds = [start_s] + [c for c in cuts_s if start_s < c < end_s] + [end_s]
    return list(zip(bounds[:-1], bounds[1:]))
