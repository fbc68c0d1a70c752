"""Which frames of a clip the captioner looks at, decoded with the shared PyAV decoder, and how
they travel from the decode tasks to the model stage (raw bytes in a row)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from soraplan.core.config import ConfigError, PositiveFloat, PositiveInt, UnitFloat
from soraplan.core.video import fit_short_side, probe, sample_frames


@dataclass
class FrameSamplingConfig:
    # keyframes: at `positions` (fractions of the clip; Open-Sora used 10/50/90%);
    # uniform: `num_frames` centred in equal parts; fps: `fps` frames a second, at most `max_frames`.
    mode: Literal["keyframes", "uniform", "fps"] = "keyframes"
    positions: list[UnitFloat] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    num_frames: PositiveInt = 8
    fps: PositiveFloat = 1.0
    max_frames: PositiveInt = 32
    short_side: PositiveInt = 336  # frames are scaled so the short side of the (cropped) clip is this

    def validate(self) -> None:
        if self.mode == "keyframes" and not self.positions:
            raise ConfigError("mode=keyframes needs at least one of positions")

    def times(self, start_s: float, end_s: float) -> list[float]:
        duration = max(end_s - start_s, 0.0)
        if self.mode == "keyframes":
            fractions = list(self.positions)
        else:
            n = self.num_frames if self.mode == "uniform" else int(duration * self.fps)
            n = max(1, min(n, self.max_frames))
            fractions = [(i + 0.5) / n for i in range(n)]
        return [start_s + f * duration for f in fractions]

    def most_frames(self) -> int:
        """The most frames `times` gives for any clip."""
        if self.mode == "keyframes":
            return len(self.positions)
        return max(1, min(self.num_frames, self.max_frames)) if self.mode == "uniform" else self.max_frames


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


# Input columns a decode task fills in when the input lacks them (a plain directory of clips).
PROBED_COLUMNS = ["end_s", "width", "height", "fps"]


def decode_clip(row: dict[str, Any], frames_cfg: FrameSamplingConfig) -> dict[str, Any]:
    """Ray task: one clip row -> its sampled frames as raw bytes (or an error)."""
    # `decoded` flags success: all-null string columns do not survive Ray's batching as None.
    out: dict[str, Any] = {"clip_id": row["clip_id"], "frames": b"", "frames_shape": [0, 0, 0, 0], "decoded": False,
                           "decode_error": "", "camera_motion": row.get("camera_motion") or ""}
    try:
        clip = clip_frames(row, frames_cfg)
    except Exception as exc:  # undecodable clip -> error row, never a failed job
        out["decode_error"] = f"decode failed: {exc.__class__.__name__}: {exc}"
        out.update({c: None for c in PROBED_COLUMNS})
        return out
    out.update(frames=clip.frames.tobytes(), frames_shape=list(clip.frames.shape), decoded=True)
    out.update(end_s=clip.end_s, width=clip.width, height=clip.height, fps=clip.fps)
    return out


def unpack_frames(data: bytes, shape: Any) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape([int(s) for s in shape])
