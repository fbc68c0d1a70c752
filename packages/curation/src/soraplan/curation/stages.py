"""The one protocol every curation stage follows, and what the analyzer hands it per clip.

A stage's life in one Ray actor:

    setup()                            once: load weights (a missing one fails here, naming its key)
    per input clip:
      start(clip)                      reset per-clip state; `clip` is the ClipContext
      observe(frame, time_s)           during the single decoding pass, for the frames that the
                                       stage's `sampling` takes (every frame, every n-th, n per second)
      finish(clip)                     after the pass: per-clip work (flow distances, post-processing);
                                       may publish signals that later stages read
      score_segments(segments)         after the split: one (columns, reject_reasons) per segment
                                       no earlier stage rejected (every one with score_all or the
                                       stage's `scores_rejected`); the default loops over `score`

A stage declares its `name` (its funnel row, timing key and error stage), the `reasons` it can
give, its `resources`, and `extra_columns`: columns beyond core's clip schema that it writes,
which the analyzer adds to the output schema. Exactly one stage is a `SplitStage`: it turns the
finished clip into cut times, and the clip is split there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from soraplan.core.inputs import InputClip
from soraplan.core.video import VideoInfo
from soraplan.curation.resources import Resources

TIME_EPS = 1e-6  # frame times are compared with this slack (timestamps are rounded floats)


class FrameSampler:
    """Which decoded frames a stage observes; `start()` resets it for the next clip."""

    def start(self) -> None:
        pass

    def take(self, position: int, time_s: float) -> bool:
        raise NotImplementedError


class EveryFrame(FrameSampler):
    def take(self, position: int, time_s: float) -> bool:
        return True


@dataclass
class EveryNth(FrameSampler):
    """Frames 0, n, 2n, ... of the clip."""

    n: int

    def take(self, position: int, time_s: float) -> bool:
        return position % self.n == 0


@dataclass
class PerSecond(FrameSampler):
    """About `fps` frames per second: the first frame, then the first one at least 1/fps later."""

    fps: float
    next_s: float = -math.inf

    def start(self) -> None:
        self.next_s = -math.inf

    def take(self, position: int, time_s: float) -> bool:
        if time_s < self.next_s - TIME_EPS:
            return False
        self.next_s = time_s + 1.0 / self.fps
        return True


@dataclass
class ClipContext:
    """One input clip while it is analysed: what was probed and decoded, and what stages publish."""

    clip: InputClip
    info: VideoInfo
    analysis_size: tuple[int, int]  # (width, height) of the frames stages observe
    times: list[float] = field(default_factory=list)  # decoded frame times, seconds of the source
    # Published by a stage's finish() for later stages: read in finish() by stages listed after
    # the publisher, or anywhere in split() and score().
    signals: dict[str, Any] = field(default_factory=dict)

    @property
    def position(self) -> int:
        """Position in the clip of the frame being observed (during the decoding pass)."""
        return len(self.times) - 1

    def signal(self, name: str) -> Any:
        try:
            return self.signals[name]
        except KeyError:
            raise KeyError(f"no stage published signal {name!r} (published: {sorted(self.signals)})") from None

    def frame_period(self) -> float:
        if len(self.times) > 1:
            return float(np.median(np.diff(self.times)))
        return 1.0 / (self.info.fps or 25.0)

    def end_s(self) -> float:
        """Where the decoded span ends: after its last frame, or at the requested end."""
        end = self.times[-1] + self.frame_period()
        return end if self.clip.end_s is None else min(end, self.clip.end_s)

    def segments(self, cut_times: Sequence[float]) -> list[Segment]:
        """The clip's span split at the cut times that fall strictly inside it."""
        times = np.asarray(self.times)
        spans = split_segments(self.clip.start_s, self.end_s(), list(cut_times))
        return [Segment(i, a, b, int(((times >= a - TIME_EPS) & (times < b - TIME_EPS)).sum()))
                for i, (a, b) in enumerate(spans)]


@dataclass(frozen=True)
class Segment:
    index: int  # position within its input clip
    start_s: float
    end_s: float
    num_frames: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def contains(self, time_s: float) -> bool:
        return self.start_s - TIME_EPS <= time_s < self.end_s - TIME_EPS


def pairs_inside(sample_times: np.ndarray, segment: Segment) -> np.ndarray:
    """Mask over the pairs of neighbouring samples: both frames inside the segment."""
    t = sample_times
    return (t[:-1] >= segment.start_s - TIME_EPS) & (t[1:] < segment.end_s - TIME_EPS)


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` resized to `size` (width, height): area-averaged halvings while the image is at
    least twice the size, then bilinear for the factor below 2 (which aliases little) or for an
    enlargement. OpenCV's area resize is fast only for integer factors: from 640x360 to 256x144
    directly it costs 0.9 ms a frame, this way 0.16 ms (mean difference 1.5 grey levels)."""
    width, height = size
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def split_segments(start_s: float, end_s: float, cuts_s: list[float]) -> list[tuple[float, float]]:
    """[start, end) split at the cut times that fall strictly inside it."""
    bounds = [start_s] + [c for c in cuts_s if start_s < c < end_s] + [end_s]
    return list(zip(bounds[:-1], bounds[1:]))


Score = tuple[dict[str, Any], list[str]]  # (columns, reject reasons) of one segment


class Stage:
    name: ClassVar[str]
    reasons: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    extra_columns: ClassVar[tuple[pa.Field, ...]] = ()
    sampling: FrameSampler | None = None  # None: the stage observes no frames
    # Score segments an earlier stage rejected too (a cheap stage whose columns or reasons
    # tell the reviewer more, e.g. motion on a too-short stub), not only with `score_all`.
    scores_rejected: ClassVar[bool] = False

    def setup(self) -> None:
        pass

    def start(self, clip: ClipContext) -> None:
        pass

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        pass

    def finish(self, clip: ClipContext) -> None:
        pass

    def score(self, segment: Segment) -> Score:
        return {}, []

    def score_segments(self, segments: list[Segment]) -> list[Score]:
        return [self.score(s) for s in segments]


class SplitStage(Stage):
    """The stage that decides where the clip is cut into segments."""

    def split(self, clip: ClipContext) -> list[float]:
        raise NotImplementedError


class StageConfig:
    """Mixin of a stage's config section: which stage class it builds, and whether it is on."""

    enabled = True  # a section may make this a config key

    def stage_class(self) -> type[Stage]:
        raise NotImplementedError

    def build(self) -> Stage:
        stage = self.stage_class()(self)
        stage.setup()
        return stage
