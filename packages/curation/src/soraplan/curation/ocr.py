"""Burned-in text: PP-OCR text detection (RapidOCR, models inside its wheel).

Only the detector runs: where text is, not what it says, is what the filters need. Two kinds of
burned-in text reject a segment when they recur across its sampled frames: subtitle lines (in
the lower band) and caption overlays (wide lines that stay at the same place in the frame,
at any height), both centred horizontally. Watermarks and logos sit off-centre or in corners;
text in the scene moves with it; neither rejects a clip. The crop box cuts edge
text away, at most `max_crop` per side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np

from soraplan.core.config import PositiveFloat, PositiveInt, Range, UnitFloat
from soraplan.core.schema import REASON_SUBTITLES
from soraplan.curation.resources import Resources
from soraplan.curation.stages import ClipContext, PerSecond, Score, Segment, Stage, StageConfig


@dataclass
class OcrConfig(StageConfig):
    enabled: bool = True
    backend: Literal["rapidocr", "paddle"] = "rapidocr"  # paddle: PaddleOCR, an optional extra
    paddle_model: str = "PP-OCRv5_mobile_det"  # PaddleOCR detection model name
    paddle_model_dir: str | None = None  # local PaddleOCR model folder (PaddleOCR downloads otherwise)
    fps: PositiveFloat = 1.0  # frames sampled per second of each segment
    max_frames: PositiveInt = 5  # at most this many frames per segment, spread evenly
    det_limit_side_len: PositiveInt = 640  # detector input: longer side scaled down to this
    det_box_thresh: UnitFloat = 0.5
    subtitle_band: UnitFloat = 0.65  # a subtitle box's centre lies below this fraction of the height
    center_tolerance: UnitFloat = 0.12  # burned-in lines are centred within this fraction of the width
    max_box_height: UnitFloat = 0.15  # taller boxes are scene text or titles, not subtitle lines
    # ... but never below this many pixels: the detector's boxes are at least ~10 px tall however
    # small the frame, so at low resolution a relative limit alone would refuse every line.
    max_box_height_floor_px: PositiveInt = 16
    overlay_min_width: UnitFloat = 0.4  # a caption overlay line is at least this fraction of the width
    overlay_min_iou: UnitFloat = 0.5  # ... and overlaps itself this much from sample to sample
    min_fraction: UnitFloat = 0.34  # burned-in text must appear in this share of samples (and in 2)
    max_area_ratio: UnitFloat | None = None  # optionally also reject above this text-area ratio
    # Crop at most this fraction of each side, to cut edge text away (opposite sides must not meet).
    max_crop: Annotated[float, Range(ge=0, lt=0.5)] = 0.2
    num_threads: PositiveInt = 1

    def stage_class(self) -> type[TextDetector]:
        return PaddleTextDetector if self.backend == "paddle" else TextDetector


@dataclass(frozen=True)
class TextVerdict:
    area_ratio: float  # mean over samples of the text-box area / frame area
    subtitles: bool
    crop: tuple[int, int, int, int]  # x0, x1, y0, y1 in the frame's pixels
    num_frames: int


class TextDetector(Stage):
    """Keeps about `fps` frames a second during the pass; judges each segment's frames together."""

    name = "ocr"
    reasons = (REASON_SUBTITLES,)
    resources = Resources(cpus=1.0)  # onnxruntime (and the paddlepaddle CPU build) on the CPU

    def __init__(self, cfg: OcrConfig) -> None:
        self.cfg = cfg
        self.sampling = PerSecond(cfg.fps)

    def setup(self) -> None:
        from rapidocr import RapidOCR

        cfg = self.cfg
        self.engine = RapidOCR(
            params={
                "Global.use_cls": False,
                "Global.use_rec": False,
                "Global.log_level": "error",
                "Det.limit_type": "max",
                "Det.limit_side_len": cfg.det_limit_side_len,
                "Det.box_thresh": cfg.det_box_thresh,
                "EngineConfig.onnxruntime.intra_op_num_threads": cfg.num_threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )

    def start(self, clip: ClipContext) -> None:
        self.clip = clip
        self.times: list[float] = []
        self.images: list[np.ndarray] = []

    def observe(self, frame: np.ndarray, time_s: float) -> None:
        self.times.append(time_s)
        self.images.append(frame)

    def score(self, segment: Segment) -> Score:
        """Judge the segment's sampled frames, thinned evenly to `max_frames`."""
        inside = [i for i, t in enumerate(self.times) if segment.contains(t)]
        if not inside:
            return {}, []
        if len(inside) > self.cfg.max_frames:
            inside = [inside[round(p)] for p in np.linspace(0, len(inside) - 1, self.cfg.max_frames)]
        verdict = self.judge([self.images[i] for i in inside])
        # The crop is found on analysis-size frames and stored in display pixels.
        info, (width, height) = self.clip.info, self.clip.analysis_size
        sx, sy = info.width / width, info.height / height
        x0, x1, y0, y1 = verdict.crop
        too_much_text = self.cfg.max_area_ratio is not None and verdict.area_ratio > self.cfg.max_area_ratio
        columns = {"ocr_area_ratio": verdict.area_ratio, "subtitles": verdict.subtitles,
                   "crop": [round(x0 * sx), round(x1 * sx), round(y0 * sy), round(y1 * sy)]}
        return columns, [REASON_SUBTITLES] if verdict.subtitles or too_much_text else []

    def boxes(self, rgb: np.ndarray) -> np.ndarray:
        """Axis-aligned text boxes (x0, y0, x1, y1) in pixels, shape (K, 4)."""
        # RapidOCR expects OpenCV's BGR channel order.
        result = self.engine(np.ascontiguousarray(rgb[..., ::-1]))
        if result.boxes is None or len(result.boxes) == 0:
            return np.zeros((0, 4))
        quads = np.asarray(result.boxes, dtype=np.float64)
        return np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)

    def judge(self, frames: list[np.ndarray]) -> TextVerdict:
        """Run the detector on a segment's sampled frames and judge them together."""
        return judge_boxes([self.boxes(f) for f in frames], frames[0].shape[1], frames[0].shape[0], self.cfg)


class PaddleTextDetector(TextDetector):
    """The same detector stage on PaddleOCR's own text-detection module (PP-OCR det only)."""

    def setup(self) -> None:
        try:
            from paddleocr import TextDetection
        except ImportError as exc:
            raise ImportError(
                "ocr.backend=paddle needs PaddleOCR, the optional `paddle` extra, in an environment of its "
                "own (it pins numpy and a second OpenCV): `uv sync --package soraplan-curation --extra "
                "paddle`, or use ocr.backend=rapidocr (same PP-OCR models, in its wheel)."
            ) from exc
        cfg = self.cfg
        self.engine = TextDetection(model_name=cfg.paddle_model, model_dir=cfg.paddle_model_dir,
                                    limit_side_len=cfg.det_limit_side_len, limit_type="max",
                                    box_thresh=cfg.det_box_thresh)

    def boxes(self, rgb: np.ndarray) -> np.ndarray:
        # PaddleOCR, like RapidOCR, expects OpenCV's BGR channel order.
        (result,) = self.engine.predict(np.ascontiguousarray(rgb[..., ::-1]), batch_size=1)
        quads = np.asarray(result["dt_polys"], dtype=np.float64).reshape(-1, 4, 2)
        return np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)


def judge_boxes(per_frame: list[np.ndarray], width: int, height: int, cfg: OcrConfig) -> TextVerdict:
    areas, subtitle_hits = [], 0
    for boxes in per_frame:
        mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
        areas.append(mask.mean())
        subtitle_hits += bool(_subtitle_lines(boxes, width, height, cfg).any())
    n = len(per_frame)
    needed = max(min(2, n), cfg.min_fraction * n)
    overlay_hits = _recurring_overlay_hits(per_frame, width, height, cfg)
    all_boxes = np.concatenate(per_frame) if per_frame else np.zeros((0, 4))
    return TextVerdict(
        area_ratio=float(np.mean(areas)) if areas else 0.0,
        subtitles=n > 0 and max(subtitle_hits, overlay_hits) >= needed,
        crop=crop_box(all_boxes, width, height, cfg),
        num_frames=n,
    )


def _recurring_overlay_hits(per_frame: list[np.ndarray], width: int, height: int, cfg: OcrConfig) -> int:
    """The most samples in which one wide text line appears at (about) the same place."""
    def overlay_lines(b: np.ndarray) -> np.ndarray:
        if len(b) == 0:
            return b
        wide = (b[:, 2] - b[:, 0]) >= cfg.overlay_min_width * width
        centred = np.abs((b[:, 0] + b[:, 2]) / 2 - width / 2) <= cfg.center_tolerance * width
        return b[wide & centred & ((b[:, 3] - b[:, 1]) <= line_height_limit(height, cfg))]

    lines = [overlay_lines(b) for b in per_frame]
    best = 0
    for candidate in (line for frame_lines in lines for line in frame_lines):
        hits = sum(any(_iou(candidate, other) >= cfg.overlay_min_iou for other in frame_lines) for frame_lines in lines)
        best = max(best, hits)
    return best


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _subtitle_lines(boxes: np.ndarray, width: int, height: int, cfg: OcrConfig) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    box_h = boxes[:, 3] - boxes[:, 1]
    return (
        (cy >= cfg.subtitle_band * height)
        & (np.abs(cx - width / 2) <= cfg.center_tolerance * width)
        & (box_h <= line_height_limit(height, cfg))
    )


def line_height_limit(height: int, cfg: OcrConfig) -> float:
    """The tallest box a burned-in text line may have, in pixels of a frame `height` tall."""
    return max(cfg.max_box_height * height, cfg.max_box_height_floor_px)


def crop_box(boxes: np.ndarray, width: int, height: int, cfg: OcrConfig) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) that leaves out text lying entirely within `max_crop` of an edge; text
    reaching deeper cannot be cropped away and is left in."""
    x0, x1, y0, y1 = 0.0, float(width), 0.0, float(height)
    bx, by = cfg.max_crop * width, cfg.max_crop * height
    for bx0, by0, bx1, by1 in boxes:
        if by1 <= by:  # top band
            y0 = max(y0, by1)
        elif by0 >= height - by:  # bottom band
            y1 = min(y1, by0)
        elif bx1 <= bx:  # left band
            x0 = max(x0, bx1)
        elif bx0 >= width - bx:  # right band
            x1 = min(x1, bx0)
    return int(np.floor(x0)), int(np.ceil(x1)), int(np.floor(y0)), int(np.ceil(y1))
