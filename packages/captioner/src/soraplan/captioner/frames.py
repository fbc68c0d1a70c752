"""Which frames of a clip the captioner looks at, decoded with the shared PyAV decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from soraplan.curation.video import fit_short_side, probe, sample_frames


@dataclass
class FrameSamplingConfig:
    # keyframes: at `positions` (fractions of the clip; Open-Sora used 10/50/90%);
    # uniform: `num_frames` centred in equal parts; fps: `fps` frames a second, at most `max_frames`.
    mode: Literal["keyframes", "uniform", "fps"] = "keyframes"
    positions: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    num_frames: int = 8
    fps: float = 1.0
    max_frames: int = 32
    short_side: int = 336  # frames are scaled so the short side of the (cropped) clip is this

    def times(self, start_s: float, end_s: float) -> list[float]:
        duration = max(end_s - start_s, 0.0)
        if self.mode == "keyframes":
            fractions = list(self.positions)
        else:
            n = self.num_frames if self.mode == "uniform" else int(duration * self.fps)
            n = max(1, min(n, self.max_frames))
            fractions = [(i + 0.5) / n for i in range(n)]
        return [start_s + f * duration for f in fractions]


@dataclass(frozen=True)
class ClipFrames:
    frames: np.ndarray  # N x H x W x 3 uint8 RGB
    times_s: list[float]
    start_s: float
    end_s: float
    width: int  # display size of the source video
    height: int
    fps: float


def _known(value: Any) -> bool:
    return value is not None and value == value  # NaN-safe: parquet nulls may arrive as NaN


def clip_frames(row: dict[str, Any], cfg: FrameSamplingConfig) -> ClipFrames:
    """Decode the frames `cfg` asks for from one clip row (path, span, size, crop).

    Missing span or size (a plain directory of clips) is filled in by probing the file.
    Raises VideoDecodeError for files that cannot be read.
    """
    start = float(row["start_s"]) if _known(row.get("start_s")) else 0.0
    end, width, height, fps = row.get("end_s"), row.get("width"), row.get("height"), row.get("fps")
    if not (_known(end) and _known(width) and _known(height)):
        info = probe(row["path"])
        end = end if _known(end) else info.duration_s
        width, height, fps = info.width, info.height, info.fps
    width, height, end = int(width), int(height), float(end)
    crop = row.get("crop")
    x0, x1, y0, y1 = (int(v) for v in crop) if crop is not None and len(crop) == 4 else (0, width, 0, height)
    # Decode at a size where the crop's short side is `short_side`, then cut the crop out.
    crop_w, _ = fit_short_side(x1 - x0, y1 - y0, cfg.short_side)
    scale = crop_w / (x1 - x0)
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    frames, times = sample_frames(row["path"], cfg.times(start, end), size=size)
    frames = frames[:, round(y0 * scale) : round(y1 * scale), round(x0 * scale) : round(x1 * scale)]
    return ClipFrames(np.ascontiguousarray(frames), times, start, end, width, height, float(fps or 0.0))
